/* spangraph._speedups: the span copies of the hot path, in C (and, in
 * _speedups_text.c, the CYPHER parameter literals of the FalkorDB store; in
 * _speedups_live.c, the text of live messages).
 *
 * start_record(span, known) and end_record(span, known) return exactly what
 * spangraph.processors._records.start_record / end_record return (the pure-Python
 * versions, used where this module was not built): a tuple of plain values, ready for
 * marshal, read from an OpenTelemetry SDK span's own fields. ``known`` maps id(resource)
 * to the span's Resource; a resource not in it yet is added (up to MAX_RESOURCES).
 * Anything unexpected (a span that is not the SDK's) raises, and the caller falls back
 * to the Python version, which reads the public API.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_RESOURCES 4096

static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start_time, *s_resource,
    *s_attributes, *s_dict, *s_value, *s_end_time, *s_status, *s_status_code,
    *s_description, *s_events, *s_links, *s_pub_name, *s_timestamp, *s_pub_attributes,
    *s_pub_context, *s_dq;

/* A record, and the lists and tuples in it, are made here and referenced only by what
 * holds the record: they cannot be part of a reference cycle. Left tracked, the records
 * a processor holds for a few milliseconds would survive the program's young
 * garbage collections and be scanned again by its older ones. */
static void
untrack(PyObject *obj)
{
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
}

/* A new dict holding ``attributes`` (a BoundedAttributes or any mapping), or None when
 * empty. ``as_none`` false: an empty dict instead of None. */
static PyObject *
copy_attributes_tracked(PyObject *attributes, int as_none)
{
    if (attributes == Py_None) {
        if (as_none)
            Py_RETURN_NONE;
        return PyDict_New();
    }
    PyObject *inner = PyObject_GetAttr(attributes, s_dict);
    if (inner != NULL && PyDict_CheckExact(inner)) {
        PyObject *result;
        if (PyDict_GET_SIZE(inner) == 0 && as_none) {
            result = Py_NewRef(Py_None);
        }
        else {
            result = PyDict_Copy(inner);
        }
        Py_DECREF(inner);
        return result;
    }
    Py_XDECREF(inner);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
        return NULL; /* KeyboardInterrupt and the like go on */
    PyErr_Clear();
    if (PyDict_CheckExact(attributes)) {
        if (PyDict_GET_SIZE(attributes) == 0 && as_none)
            Py_RETURN_NONE;
        return PyDict_Copy(attributes);
    }
    PyObject *result = PyDict_New();
    if (result == NULL)
        return NULL;
    if (PyDict_Merge(result, attributes, 1) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    if (PyDict_GET_SIZE(result) == 0 && as_none) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    return result;
}

static PyObject *
copy_attributes(PyObject *attributes, int as_none)
{
    PyObject *copy = copy_attributes_tracked(attributes, as_none);
    if (copy != NULL)
        untrack(copy);
    return copy;
}

/* item ``i`` of a SpanContext (a tuple: trace_id, span_id, is_remote, ...) */
static PyObject *
context_item(PyObject *ctx, Py_ssize_t i)
{
    if (!PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) <= i) {
        PyErr_SetString(PyExc_TypeError, "not an OpenTelemetry SpanContext");
        return NULL;
    }
    return Py_NewRef(PyTuple_GET_ITEM(ctx, i));
}

static PyObject *
enum_value(PyObject *obj, PyObject *attr)
{
    PyObject *member = PyObject_GetAttr(obj, attr);
    if (member == NULL)
        return NULL;
    PyObject *value = PyObject_GetAttr(member, s_value);
    Py_DECREF(member);
    return value;
}

/* Fill items 1..7 of ``record`` (trace id, span id, parent id, parent remote, name, kind,
 * start) and return the resource key, or NULL on error. */
static PyObject *
fill_head(PyObject *record, PyObject *span, PyObject *known)
{
    PyObject *ctx = PyObject_GetAttr(span, s_context);
    if (ctx == NULL)
        return NULL;
    PyObject *trace_id = context_item(ctx, 0);
    PyObject *span_id = trace_id ? context_item(ctx, 1) : NULL;
    Py_DECREF(ctx);
    if (span_id == NULL) {
        Py_XDECREF(trace_id);
        return NULL;
    }
    PyTuple_SET_ITEM(record, 1, trace_id);
    PyTuple_SET_ITEM(record, 2, span_id);

    PyObject *parent = PyObject_GetAttr(span, s_parent);
    if (parent == NULL)
        return NULL;
    if (parent == Py_None) {
        PyTuple_SET_ITEM(record, 3, PyLong_FromLong(0));
        PyTuple_SET_ITEM(record, 4, Py_NewRef(Py_False));
        Py_DECREF(parent);
    }
    else {
        PyObject *parent_id = context_item(parent, 1);
        PyObject *remote = parent_id ? context_item(parent, 2) : NULL;
        Py_DECREF(parent);
        if (remote == NULL) {
            Py_XDECREF(parent_id);
            return NULL;
        }
        int truth = PyObject_IsTrue(remote);
        Py_DECREF(remote);
        if (truth < 0) {
            Py_DECREF(parent_id);
            return NULL;
        }
        PyTuple_SET_ITEM(record, 3, parent_id);
        PyTuple_SET_ITEM(record, 4, PyBool_FromLong(truth));
    }
    PyObject *name = PyObject_GetAttr(span, s_name);
    if (name == NULL)
        return NULL;
    PyTuple_SET_ITEM(record, 5, name);
    PyObject *kind = enum_value(span, s_kind);
    if (kind == NULL)
        return NULL;
    PyTuple_SET_ITEM(record, 6, kind);
    PyObject *start = PyObject_GetAttr(span, s_start_time);
    if (start == NULL)
        return NULL;
    PyTuple_SET_ITEM(record, 7, start);

    PyObject *resource = PyObject_GetAttr(span, s_resource);
    if (resource == NULL)
        return NULL;
    PyObject *key = PyLong_FromVoidPtr(resource);
    if (key == NULL) {
        Py_DECREF(resource);
        return NULL;
    }
    int has = PyDict_Contains(known, key);
    if (has == 0 && PyDict_GET_SIZE(known) < MAX_RESOURCES)
        has = PyDict_SetItem(known, key, resource);
    Py_DECREF(resource);
    if (has < 0) {
        Py_DECREF(key);
        return NULL;
    }
    return key;
}

static int
check_args(Py_ssize_t nargs, PyObject *const *args, const char *fname)
{
    if (nargs != 2 || !PyDict_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "%s(span, known: dict)", fname);
        return -1;
    }
    return 0;
}

/* record[i] = copy(span.<name>) (or the value itself without ``copy``); -1 on error */
static int
set_item(PyObject *record, Py_ssize_t i, PyObject *span, PyObject *name,
         PyObject *(*copy)(PyObject *))
{
    PyObject *value = PyObject_GetAttr(span, name);
    if (value == NULL || copy == NULL) {
        if (value != NULL)
            PyTuple_SET_ITEM(record, i, value);
        return value == NULL ? -1 : 0;
    }
    PyObject *copied = copy(value);
    Py_DECREF(value);
    if (copied == NULL)
        return -1;
    PyTuple_SET_ITEM(record, i, copied);
    return 0;
}

static PyObject *
copy_span_attributes(PyObject *attributes)
{
    return copy_attributes(attributes, 1);
}

/* A record of ``size`` items for ``args`` (span, known): what (0 start, 1 end), the head,
 * the span's attributes at ``attributes_at`` and the resource key last. */
static PyObject *
new_record(PyObject *const *args, Py_ssize_t nargs, const char *fname, int what,
           Py_ssize_t size, Py_ssize_t attributes_at)
{
    if (check_args(nargs, args, fname) < 0)
        return NULL;
    PyObject *record = PyTuple_New(size);
    if (record == NULL)
        return NULL;
    /* out of the collector's sight at once: while its items are still NULL, Python code
     * run by the reads below (a property) could find it there (gc.get_objects()) */
    untrack(record);
    PyTuple_SET_ITEM(record, 0, PyLong_FromLong(what));
    PyObject *key = fill_head(record, args[0], args[1]);
    if (key == NULL)
        goto error;
    PyTuple_SET_ITEM(record, size - 1, key);
    if (set_item(record, attributes_at, args[0], s_attributes, copy_span_attributes) < 0)
        goto error;
    return record;
error:
    Py_DECREF(record);  /* unset items are NULL: tuple dealloc skips them */
    return NULL;
}

static PyObject *s_sg_kind; /* "spangraph.kind" (set at init, below) */

/* A START record. A span that does not name its spangraph kind when it starts (any
 * span but spangraph's own) also gets a weak reference to itself (out of the collector's
 * sight, as what holds it: it has no callback), so that the worker can read the
 * attributes it has by then: instrumentations that set them just after the start
 * (Traceloop's decorators, OpenLLMetry's LangChain handler) name the span's kind so
 * (_records.attributes_of_start). Item 8 is then ``(copy, ref)``, or ``ref`` alone
 * where there was nothing to copy. A span that cannot be referred to weakly keeps its
 * copy alone. */
static PyObject *
start_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *record = new_record(args, nargs, "start_record", 0, 10, 8);
    if (record == NULL)
        return NULL;
    untrack(record);
    PyObject *copy = PyTuple_GET_ITEM(record, 8);
    if (copy != Py_None) {
        PyObject *kind = PyDict_GetItemWithError(copy, s_sg_kind); /* borrowed */
        if (kind != NULL)
            return record; /* spangraph's own span: its kind is given */
        if (PyErr_Occurred())
            goto no_reference;
    }
    PyObject *ref = PyWeakref_NewRef(args[0], NULL);
    if (ref == NULL)
        goto no_reference;
    untrack(ref);
    if (copy == Py_None) {
        PyTuple_SET_ITEM(record, 8, ref);
        Py_DECREF(copy);
        return record;
    }
    PyObject *pair = PyTuple_Pack(2, copy, ref);
    Py_DECREF(ref);
    if (pair == NULL)
        goto no_reference;
    untrack(pair);
    PyTuple_SET_ITEM(record, 8, pair);
    Py_DECREF(copy);
    return record;
no_reference:
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        Py_DECREF(record);
        return NULL; /* KeyboardInterrupt and the like go on */
    }
    PyErr_Clear();
    return record;
}

/* The span ``ref`` refers to (a new reference), or NULL when it is gone. */
static PyObject *
referent(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *span = NULL;
    if (PyWeakref_GetRef(ref, &span) < 0)
        PyErr_Clear();
    return span;
#else
    PyObject *span = PyWeakref_GetObject(ref); /* borrowed */
    return span == Py_None ? NULL : Py_NewRef(span);
#endif
}

/* read_starts(records, read) -> _records.read_starts(records): each START record whose
 * item 8 holds a weak reference as the record with its attributes read: the copy
 * where the span is gone or has ended, else read(item 8) (_records.attributes_of_start,
 * which reads an open span's attributes). */
static PyObject *
read_starts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_starts(records: list, read)");
        return NULL;
    }
    /* the records as they are now: ``read`` runs Python code, which could change the
     * list (and let go of a record read from it) */
    PyObject *records = PyList_AsTuple(args[0]), *read = args[1];
    if (records == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(records);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    /* out of the collector's sight while items are still NULL: Python code run below
     * (``read``, a property) could find it there (gc.get_objects()) */
    untrack(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyTuple_GET_ITEM(records, i);
        PyObject *value = NULL, *copy = NULL, *ref = NULL;
        if (PyTuple_CheckExact(record) && PyTuple_GET_SIZE(record) == 10) {
            PyObject *what = PyTuple_GET_ITEM(record, 0);
            long kind = PyLong_CheckExact(what) ? PyLong_AsLong(what) : -1;
            if (kind == -1 && PyErr_Occurred())
                PyErr_Clear(); /* (no record of spangraph's) */
            if (kind == 0) {
                value = PyTuple_GET_ITEM(record, 8);
                if (PyTuple_CheckExact(value) && PyTuple_GET_SIZE(value) == 2) {
                    copy = PyTuple_GET_ITEM(value, 0);
                    ref = PyTuple_GET_ITEM(value, 1);
                }
                else {
                    copy = Py_None;
                    ref = value;
                }
            }
        }
        if (ref == NULL || !PyWeakref_CheckRefExact(ref)) {
            PyList_SET_ITEM(out, i, Py_NewRef(record));
            continue;
        }
        PyObject *span = referent(ref), *attributes;
        int ended = 1; /* gone, or its end on its way: the copy */
        if (span != NULL) {
            PyObject *end = PyObject_GetAttr(span, s_end_time); /* an SDK span's */
            Py_DECREF(span);
            if (end == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_Exception))
                    goto error;
                PyErr_Clear();
            }
            ended = end != NULL && end != Py_None;
            Py_XDECREF(end);
        }
        if (ended) {
            attributes = Py_NewRef(copy);
        }
        else {
            attributes = PyObject_CallOneArg(read, value);
            if (attributes == NULL)
                goto error;
        }
        PyObject *item = PyTuple_New(10);
        if (item == NULL) {
            Py_DECREF(attributes);
            goto error;
        }
        for (Py_ssize_t j = 0; j < 10; j++)
            PyTuple_SET_ITEM(item, j, j == 8 ? attributes : Py_NewRef(PyTuple_GET_ITEM(record, j)));
        PyList_SET_ITEM(out, i, item);
    }
    Py_DECREF(records);
    PyObject_GC_Track(out);
    return out;
error:
    Py_DECREF(records);
    Py_DECREF(out); /* items not yet set are NULL: list dealloc skips them */
    return NULL;
}

/* items 0 and 1 of an event's triple: name, timestamp */
static int
fill_event(PyObject *item, PyObject *event)
{
    PyObject *name = PyObject_GetAttr(event, s_pub_name);
    if (name == NULL)
        return -1;
    PyTuple_SET_ITEM(item, 0, name);
    PyObject *timestamp = PyObject_GetAttr(event, s_timestamp);
    if (timestamp == NULL)
        return -1;
    PyTuple_SET_ITEM(item, 1, timestamp);
    return 0;
}

/* items 0 and 1 of a link's triple: trace id, span id */
static int
fill_link(PyObject *item, PyObject *link)
{
    PyObject *ctx = PyObject_GetAttr(link, s_pub_context);
    if (ctx == NULL)
        return -1;
    PyObject *trace_id = context_item(ctx, 0);
    PyObject *span_id = trace_id ? context_item(ctx, 1) : NULL;
    Py_DECREF(ctx);
    if (span_id == NULL) {
        Py_XDECREF(trace_id);
        return -1;
    }
    PyTuple_SET_ITEM(item, 0, trace_id);
    PyTuple_SET_ITEM(item, 1, span_id);
    return 0;
}

/* Events or links as [(a, b, attributes dict), ...] (``fill`` gives a and b), or None
 * when there are none. */
static PyObject *
copy_items(PyObject *items, int (*fill)(PyObject *, PyObject *))
{
    /* The SDK's BoundedList keeps its items in a deque (``_dq``): its length and items
     * are read in C there, without the list's Python-level __len__ and __iter__. */
    PyObject *inner = NULL;
    if (!PyList_Check(items) && !PyTuple_Check(items)) {
        inner = PyObject_GetAttr(items, s_dq);
        if (inner == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return NULL; /* (anything else goes on: the caller copies in Python) */
            PyErr_Clear();
        }
        else
            items = inner;
    }
    Py_ssize_t n = PyObject_Length(items);
    if (n <= 0) {
        Py_XDECREF(inner);
        if (n < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *seq = PySequence_List(items);
    Py_XDECREF(inner);
    if (seq == NULL)
        return NULL;
    n = PyList_GET_SIZE(seq);
    PyObject *result = PyList_New(n);  /* unset items are NULL: list dealloc skips them */
    if (result == NULL)
        goto error;
    untrack(result);  /* at once, as new_record() does */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *source = PyList_GET_ITEM(seq, i);
        PyObject *item = PyTuple_New(3);
        if (item == NULL)
            goto error;
        untrack(item);
        PyList_SET_ITEM(result, i, item);
        if (fill(item, source) < 0)
            goto error;
        PyObject *attributes = PyObject_GetAttr(source, s_pub_attributes);
        if (attributes == NULL)
            goto error;
        PyObject *copy = copy_attributes(attributes, 0);
        Py_DECREF(attributes);
        if (copy == NULL)
            goto error;
        PyTuple_SET_ITEM(item, 2, copy);
        untrack(item);
    }
    Py_DECREF(seq);
    untrack(result);
    return result;
error:
    Py_DECREF(seq);
    Py_XDECREF(result);
    return NULL;
}

static PyObject *
copy_events(PyObject *events)
{
    return copy_items(events, fill_event);
}

static PyObject *
copy_links(PyObject *links)
{
    return copy_items(links, fill_link);
}

static PyObject *
end_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *record = new_record(args, nargs, "end_record", 1, 15, 11);
    if (record == NULL)
        return NULL;
    PyObject *span = args[0];
    if (set_item(record, 8, span, s_end_time, NULL) < 0)
        goto error;
    PyObject *status = PyObject_GetAttr(span, s_status);
    if (status == NULL)
        goto error;
    PyObject *code = enum_value(status, s_status_code);
    PyObject *description = code ? PyObject_GetAttr(status, s_description) : NULL;
    Py_DECREF(status);
    if (description == NULL) {
        Py_XDECREF(code);
        goto error;
    }
    PyTuple_SET_ITEM(record, 9, code);
    PyTuple_SET_ITEM(record, 10, description);
    if (set_item(record, 12, span, s_events, copy_events) < 0 ||
        set_item(record, 13, span, s_links, copy_links) < 0)
        goto error;
    untrack(record);
    return record;
error:
    Py_DECREF(record);
    return NULL;
}

/* ---- RecordBuffer: the records of an offloading processor, gathered in one list ------
 *
 * start(span, ...) / end(span) are the processor's on_start / on_end: they copy the span
 * into its record and append it, under the GIL, in one C call; they never raise (a span
 * that cannot be copied goes to ``fallback(what, span)``, and is dropped, counted, if
 * that fails too). take() hands the records gathered so far to the worker. Bounded by
 * max_records: what does not fit is dropped, counted.
 */

typedef struct {
    PyObject_HEAD
    PyObject *known;
    PyObject *fallback;
    PyObject *wake;
    PyObject *records;
    Py_ssize_t max_records;
    Py_ssize_t dropped;
    Py_ssize_t unreadable;
    int idle;
    int closed;
} RecordBuffer;

/* Records past max_records a full buffer still takes: ends of runs (_records.RESERVE). */
#define RESERVE 1024

/* Whether ``record`` is the END record of a root span or of a workflow span (the end of
 * a run: _records.ends_a_run). Never raises. */
static int
ends_a_run(PyObject *record)
{
    if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) < 12)
        return 0;
    PyObject *what = PyTuple_GET_ITEM(record, 0);
    if (!PyLong_CheckExact(what) || PyLong_AsLong(what) != 1) {
        PyErr_Clear();
        return 0;
    }
    int has_parent = PyObject_IsTrue(PyTuple_GET_ITEM(record, 3));
    if (has_parent <= 0) {
        PyErr_Clear();
        return has_parent == 0;
    }
    PyObject *attributes = PyTuple_GET_ITEM(record, 11);
    if (!PyDict_CheckExact(attributes))
        return 0;
    PyObject *kind = PyDict_GetItemWithError(attributes, s_sg_kind);  /* borrowed */
    if (kind == NULL) {
        PyErr_Clear();
        return 0;
    }
    return PyUnicode_CheckExact(kind) && PyUnicode_CompareWithASCIIString(kind, "workflow") == 0;
}

/* 1 appended, 0 dropped (full, closed, or never initialized), -1 error, -2 appended
 * but waking the worker raised something that is not an Exception (set) */
static int
rb_append(RecordBuffer *self, PyObject *record)
{
    if (self->records == NULL || self->closed) {
        self->dropped++;
        return 0;
    }
    Py_ssize_t queued = PyList_GET_SIZE(self->records);
    if (queued >= self->max_records
        && !(queued < self->max_records + RESERVE && ends_a_run(record))) {
        self->dropped++;
        return 0;
    }
    if (PyList_Append(self->records, record) < 0)
        return -1;
    if (self->idle && self->wake != Py_None) {
        self->idle = 0;
        PyObject *wake = Py_NewRef(self->wake);  /* held: the call could re-init self */
        PyObject *result = PyObject_CallNoArgs(wake);
        Py_DECREF(wake);
        if (result == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return -2; /* appended; KeyboardInterrupt and the like go on */
            PyErr_Clear();
        }
        Py_XDECREF(result);
    }
    return 1;
}

static PyObject *
rb_add_span(RecordBuffer *self, PyObject *span, int what)
{
    if (self->known == NULL || self->fallback == NULL || self->records == NULL) {
        self->dropped++;  /* __init__ was never called */
        Py_RETURN_NONE;
    }
    /* held for the copy: Python code it runs (a property) could call __init__ again,
     * which lets go of the old table and fallback */
    PyObject *known = Py_NewRef(self->known);
    PyObject *args[2] = {span, known};
    PyObject *record = what == 0 ? start_record(NULL, args, 2) : end_record(NULL, args, 2);
    Py_DECREF(known);
    int rc = record != NULL ? rb_append(self, record) : -1;
    if (rc != -1) {
        Py_DECREF(record);
        if (rc == -2)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_XDECREF(record);
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL; /* KeyboardInterrupt and the like go on, as in the Python version */
    PyErr_Clear();
    if (self->fallback == NULL) {  /* cleared meanwhile (the object is being collected) */
        self->dropped++;
        Py_RETURN_NONE;
    }
    /* not the SDK's span: the Python version */
    PyObject *fallback = Py_NewRef(self->fallback);
    PyObject *kind = PyLong_FromLong(what);
    record = kind ? PyObject_CallFunctionObjArgs(fallback, kind, span, NULL) : NULL;
    Py_XDECREF(kind);
    Py_DECREF(fallback);
    rc = record != NULL ? rb_append(self, record) : -1;
    Py_XDECREF(record);
    if (rc == -2)
        return NULL;
    if (rc == -1) {
        self->dropped++;
        self->unreadable++;
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* The span of start(span, ...) / end(span), given by position or as ``span=``; NULL when
 * it is not given. */
static PyObject *
span_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargs);
    if (n >= 1)
        return args[0];
    Py_ssize_t k = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "span") == 0)
            return args[n + i];
    }
    return NULL;
}

static PyObject *
rb_start(RecordBuffer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *span = span_arg(args, nargs, kwnames);
    if (span == NULL) {
        PyErr_SetString(PyExc_TypeError, "start(span, parent_context=None)");
        return NULL;
    }
    return rb_add_span(self, span, 0);
}

static PyObject *
rb_end(RecordBuffer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *span = span_arg(args, nargs, kwnames);
    if (span == NULL) {
        PyErr_SetString(PyExc_TypeError, "end(span)");
        return NULL;
    }
    return rb_add_span(self, span, 1);
}

static PyObject *
rb_add(RecordBuffer *self, PyObject *record)
{
    int appended = rb_append(self, record);
    if (appended < 0)
        return NULL;
    return PyBool_FromLong(appended);
}

static PyObject *
rb_take(RecordBuffer *self, PyObject *unused)
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *taken = self->records;
    self->records = fresh;
    if (taken == NULL)  /* __init__ was never called */
        taken = PyList_New(0);
    return taken;
}

static PyObject *
rb_reset(RecordBuffer *self, PyObject *unused)
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    Py_SETREF(self->records, fresh);
    self->dropped = 0;
    self->unreadable = 0;
    self->closed = 0;
    self->idle = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t
rb_len(RecordBuffer *self)
{
    return self->records == NULL ? 0 : PyList_GET_SIZE(self->records);
}

static int
rb_init(RecordBuffer *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"known", "fallback", "wake", "max_records", NULL};
    PyObject *known, *fallback, *wake = Py_None;
    Py_ssize_t max_records = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O|On", keywords, &PyDict_Type, &known,
                                     &fallback, &wake, &max_records))
        return -1;
    if (max_records < 1) {
        PyErr_SetString(PyExc_ValueError, "max_records must be at least 1");
        return -1;
    }
    PyObject *records = PyList_New(0);
    if (records == NULL)
        return -1;
    Py_XSETREF(self->records, records);
    Py_XSETREF(self->known, Py_NewRef(known));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->wake, Py_NewRef(wake));
    self->max_records = max_records;
    return 0;
}

static int
rb_traverse(RecordBuffer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->known);
    Py_VISIT(self->fallback);
    Py_VISIT(self->wake);
    Py_VISIT(self->records);
    return 0;
}

static int
rb_clear(RecordBuffer *self)
{
    Py_CLEAR(self->known);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->wake);
    Py_CLEAR(self->records);
    return 0;
}

static void
rb_dealloc(RecordBuffer *self)
{
    PyObject_GC_UnTrack(self);
    rb_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef rb_methods[] = {
    {"start", (PyCFunction)(void (*)(void))rb_start, METH_FASTCALL | METH_KEYWORDS,
     "start(span, parent_context=None): append the START record of span; never raises."},
    {"end", (PyCFunction)(void (*)(void))rb_end, METH_FASTCALL | METH_KEYWORDS,
     "end(span): append the END record of span; never raises."},
    {"add", (PyCFunction)rb_add, METH_O,
     "add(record) -> whether it was appended (False: full or closed)."},
    {"take", (PyCFunction)rb_take, METH_NOARGS,
     "take() -> the list of the records gathered so far; the buffer starts a new one."},
    {"reset", (PyCFunction)rb_reset, METH_NOARGS, "Forget everything (a forked child)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rb_members[] = {
    {"known", T_OBJECT, offsetof(RecordBuffer, known), READONLY, NULL},
    {"dropped", T_PYSSIZET, offsetof(RecordBuffer, dropped), READONLY, "records dropped"},
    {"unreadable", T_PYSSIZET, offsetof(RecordBuffer, unreadable), READONLY,
     "of which: spans that could not be copied"},
    {"max_records", T_PYSSIZET, offsetof(RecordBuffer, max_records), READONLY, NULL},
    {"idle", T_INT, offsetof(RecordBuffer, idle), 0,
     "set by the worker before it waits: the next record calls wake()"},
    {"closed", T_INT, offsetof(RecordBuffer, closed), 0, "drop (and count) new records"},
    {NULL},
};

static PySequenceMethods rb_as_sequence = {.sq_length = (lenfunc)rb_len};

static PyTypeObject RecordBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "spangraph._speedups.RecordBuffer",
    .tp_basicsize = sizeof(RecordBuffer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Span records gathered in one bounded list (see _records.PyRecordBuffer).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rb_init,
    .tp_dealloc = (destructor)rb_dealloc,
    .tp_traverse = (traverseproc)rb_traverse,
    .tp_clear = (inquiry)rb_clear,
    .tp_methods = rb_methods,
    .tp_members = rb_members,
    .tp_as_sequence = &rb_as_sequence,
};

/* -- RecordQueue: the hot path of the in-process processors -------------------------- */

/* The record last copied, for the span, kind and Resource table it was copied for: both
 * in-process processors queue the same span, and the second gets the first's copy (as
 * _records.copy_record does). Holds its span, so that its address cannot be reused. */
static PyObject *last_span, *last_known, *last_record;
static int last_what = -1;

/* A new reference to the record of ``span`` (``what`` 0 start, 1 end); NULL, with an
 * error set, when the C copy cannot read it. */
static PyObject *
shared_copy(PyObject *span, int what, PyObject *known)
{
    if (span == last_span && what == last_what && known == last_known)
        return Py_NewRef(last_record);
    PyObject *args[2] = {span, known};
    PyObject *record = what == 0 ? start_record(NULL, args, 2) : end_record(NULL, args, 2);
    if (record == NULL)
        return NULL;
    /* every field set before any old value is let go of: letting go can run Python code
     * (a finalizer) that switches threads, and another thread's span must never find a
     * cache that is half this one's */
    PyObject *old_span = last_span, *old_known = last_known, *old_record = last_record;
    last_span = Py_NewRef(span);
    last_known = Py_NewRef(known);
    last_record = Py_NewRef(record);
    last_what = what;
    Py_XDECREF(old_span);
    Py_XDECREF(old_known);
    Py_XDECREF(old_record);
    return record;
}

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the processor: its _put and _known, read at each call, and its
                        _queue_span */
    int with_time;   /* items (what, record, time) instead of (what, record) */
} RecordQueue;

static PyObject *s_put, *s_known, *s_queue_span, *START_OBJ, *END_OBJ;

/* on_start / on_end of a QueueingSpanProcessor: the C copy (shared by the processors),
 * the queue item, owner._put(item). Anything else -- a span the C copy cannot read, a
 * Resource past the table's bound, no start time -- goes to owner._queue_span(what,
 * span), the Python version. Never raises an Exception into the caller. */
/* An Exception set, or none: cleared, 0 (go on with the Python version). A
 * KeyboardInterrupt or the like: left set, -1 (it goes on into the program). */
static int
only_exceptions(void)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    return 0;
}

static PyObject *
rq_add(RecordQueue *self, PyObject *span, int what)
{
    PyObject *kind = what == 0 ? START_OBJ : END_OBJ;
    PyObject *item = NULL, *result = NULL, *record = NULL;
    if (self->owner == NULL)
        Py_RETURN_NONE; /* __init__ was never called */
    /* held for the call: Python code the copy runs could call __init__ again */
    PyObject *owner = Py_NewRef(self->owner);
    PyObject *known = PyObject_GetAttr(owner, s_known);
    if (known == NULL || !PyDict_CheckExact(known)) {
        Py_XDECREF(known);
        if (only_exceptions() < 0)
            goto interrupted;
        goto python;
    }
    record = shared_copy(span, what, known);
    if (record == NULL) {
        Py_DECREF(known);
        if (only_exceptions() < 0)
            goto interrupted;
        goto python;
    }
    PyObject *key = PyTuple_GET_ITEM(record, PyTuple_GET_SIZE(record) - 1);
    int is_known = PyDict_Contains(known, key);
    Py_DECREF(known); /* the record's Resource is held by the table, or not used */
    if (is_known <= 0) {
        if (only_exceptions() < 0)
            goto interrupted;
        goto python;
    }
    if (self->with_time) {
        PyObject *time = PyTuple_GET_ITEM(record, what == 0 ? 7 : 8);
        if (what == 0 && !(PyLong_Check(time) && PyObject_IsTrue(time) == 1)) {
            if (only_exceptions() < 0)
                goto interrupted; /* (a KeyboardInterrupt from an int subclass goes on) */
            goto python;
        }
        item = PyTuple_Pack(3, kind, record, time);
    }
    else {
        item = PyTuple_Pack(2, kind, record);
    }
    Py_CLEAR(record);
    if (item == NULL)
        goto done;
    PyObject *put = PyObject_GetAttr(owner, s_put);
    if (put != NULL) {
        result = PyObject_CallOneArg(put, item);
        Py_DECREF(put);
    }
    Py_DECREF(item);
    goto done;
python:
    Py_XDECREF(record);
    result = PyObject_CallMethodObjArgs(owner, s_queue_span, kind, span, NULL);
done:
    Py_DECREF(owner);
    Py_XDECREF(result);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_Exception))
        PyErr_Clear(); /* never into user code */
    if (PyErr_Occurred())
        return NULL; /* KeyboardInterrupt and the like go on */
    Py_RETURN_NONE;
interrupted:
    Py_XDECREF(record);
    Py_DECREF(owner);
    return NULL;
}

static PyObject *
rq_start(RecordQueue *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *span = span_arg(args, nargs, kwnames);
    if (span == NULL) {
        PyErr_SetString(PyExc_TypeError, "start(span, parent_context=None)");
        return NULL;
    }
    return rq_add(self, span, 0);
}

static PyObject *
rq_end(RecordQueue *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *span = span_arg(args, nargs, kwnames);
    if (span == NULL) {
        PyErr_SetString(PyExc_TypeError, "end(span)");
        return NULL;
    }
    return rq_add(self, span, 1);
}

static int
rq_init(RecordQueue *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"owner", "with_time", NULL};
    PyObject *owner;
    int with_time = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", keywords, &owner, &with_time))
        return -1;
    Py_XSETREF(self->owner, Py_NewRef(owner));
    self->with_time = with_time;
    return 0;
}

static int
rq_traverse(RecordQueue *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    return 0;
}

static int
rq_clear(RecordQueue *self)
{
    Py_CLEAR(self->owner);
    return 0;
}

static void
rq_dealloc(RecordQueue *self)
{
    PyObject_GC_UnTrack(self);
    rq_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef rq_methods[] = {
    {"start", (PyCFunction)(void (*)(void))rq_start, METH_FASTCALL | METH_KEYWORDS,
     "start(span, parent_context=None): queue the START record of span; never raises."},
    {"end", (PyCFunction)(void (*)(void))rq_end, METH_FASTCALL | METH_KEYWORDS,
     "end(span): queue the END record of span; never raises."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RecordQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "spangraph._speedups.RecordQueue",
    .tp_basicsize = sizeof(RecordQueue),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "on_start/on_end of an in-process processor (see _worker.QueueingSpanProcessor).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rq_init,
    .tp_dealloc = (destructor)rq_dealloc,
    .tp_traverse = (traverseproc)rq_traverse,
    .tp_clear = (inquiry)rq_clear,
    .tp_methods = rq_methods,
};

/* in _speedups_text.c */
PyObject *cypher_literal(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *json_text(PyObject *module, PyObject *value);
/* in _speedups_live.c */
PyObject *live_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *live_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames);
PyObject *iso_time(PyObject *module, PyObject *time_ns);

static PyMethodDef methods[] = {
    {"start_record", (PyCFunction)(void (*)(void))start_record, METH_FASTCALL,
     "start_record(span, known) -> the START record of an SDK span."},
    {"end_record", (PyCFunction)(void (*)(void))end_record, METH_FASTCALL,
     "end_record(span, known) -> the END record of an ended SDK span."},
    {"read_starts", (PyCFunction)(void (*)(void))read_starts, METH_FASTCALL,
     "read_starts(records, read) -> the records, START ones with their attributes read."},
    {"cypher_literal", (PyCFunction)(void (*)(void))cypher_literal, METH_FASTCALL,
     "cypher_literal(value, fallback) -> value as a CYPHER parameter literal, UTF-8."},
    {"json_text", (PyCFunction)json_text, METH_O,
     "json_text(value) -> the JSON spangraph writes for value, or None (Python's)."},
    {"live_setup", (PyCFunction)(void (*)(void))live_setup, METH_FASTCALL,
     "live_setup(python_live_message, to_json, heads): what live_message needs."},
    {"live_message", (PyCFunction)(void (*)(void))live_message, METH_FASTCALL | METH_KEYWORDS,
     "live_message(message_type, common, time_ns, attributes, parts) -> (head, tail)."},
    {"iso_time", (PyCFunction)iso_time, METH_O,
     "iso_time(time_ns) -> mapping.iso_time's text, or None (the datetime path)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "spangraph._speedups",
    "The span copies of the hot path, CYPHER parameter literals and live messages, in C.", -1, methods,
};

#define INTERN(var, text)                             \
    do {                                              \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                              \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(s_context, "_context");
    INTERN(s_parent, "_parent");
    INTERN(s_name, "_name");
    INTERN(s_kind, "_kind");
    INTERN(s_start_time, "_start_time");
    INTERN(s_resource, "_resource");
    INTERN(s_attributes, "_attributes");
    INTERN(s_dict, "_dict");
    INTERN(s_value, "_value_");
    INTERN(s_end_time, "_end_time");
    INTERN(s_status, "_status");
    INTERN(s_status_code, "_status_code");
    INTERN(s_description, "_description");
    INTERN(s_events, "_events");
    INTERN(s_links, "_links");
    INTERN(s_pub_name, "name");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_pub_attributes, "attributes");
    INTERN(s_pub_context, "context");
    INTERN(s_dq, "_dq");
    INTERN(s_put, "_put");
    INTERN(s_known, "_known");
    INTERN(s_queue_span, "_queue_span");
    INTERN(s_sg_kind, "spangraph.kind");
    if ((START_OBJ = PyLong_FromLong(0)) == NULL || (END_OBJ = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&RecordBufferType) < 0 || PyType_Ready(&RecordQueueType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "RecordQueue", (PyObject *)&RecordQueueType) < 0
        || PyModule_AddObjectRef(module, "RecordBuffer", (PyObject *)&RecordBufferType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
