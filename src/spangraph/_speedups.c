/* spangraph._speedups: the span copies of the offload hot path, in C.
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

#define MAX_RESOURCES 4096

static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start_time, *s_resource,
    *s_attributes, *s_dict, *s_value, *s_end_time, *s_status, *s_status_code,
    *s_description, *s_events, *s_links, *s_pub_name, *s_timestamp, *s_pub_attributes,
    *s_pub_context;

/* A new dict holding ``attributes`` (a BoundedAttributes or any mapping), or None when
 * empty. ``as_none`` false: an empty dict instead of None. */
static PyObject *
copy_attributes(PyObject *attributes, int as_none)
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

static PyObject *
start_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(nargs, args, "start_record") < 0)
        return NULL;
    PyObject *span = args[0];
    PyObject *record = PyTuple_New(10);
    if (record == NULL)
        return NULL;
    PyTuple_SET_ITEM(record, 0, PyLong_FromLong(0));
    PyObject *key = fill_head(record, span, args[1]);
    if (key == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 9, key);
    PyObject *attributes = PyObject_GetAttr(span, s_attributes);
    if (attributes == NULL)
        goto error;
    PyObject *copy = copy_attributes(attributes, 1);
    Py_DECREF(attributes);
    if (copy == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 8, copy);
    return record;
error:
    Py_DECREF(record);  /* unset items are NULL: tuple dealloc skips them */
    return NULL;
}

/* [(name, timestamp, attributes dict), ...] or None */
static PyObject *
copy_events(PyObject *events)
{
    Py_ssize_t n = PyObject_Length(events);
    if (n < 0)
        return NULL;
    if (n == 0)
        Py_RETURN_NONE;
    PyObject *seq = PySequence_List(events);
    if (seq == NULL)
        return NULL;
    n = PyList_GET_SIZE(seq);
    PyObject *result = PyList_New(n);
    if (result == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *event = PyList_GET_ITEM(seq, i);
        PyObject *item = PyTuple_New(3);
        if (item == NULL)
            goto error;
        PyList_SET_ITEM(result, i, item);
        PyObject *name = PyObject_GetAttr(event, s_pub_name);
        if (name == NULL)
            goto error;
        PyTuple_SET_ITEM(item, 0, name);
        PyObject *timestamp = PyObject_GetAttr(event, s_timestamp);
        if (timestamp == NULL)
            goto error;
        PyTuple_SET_ITEM(item, 1, timestamp);
        PyObject *attributes = PyObject_GetAttr(event, s_pub_attributes);
        if (attributes == NULL)
            goto error;
        PyObject *copy = copy_attributes(attributes, 0);
        Py_DECREF(attributes);
        if (copy == NULL)
            goto error;
        PyTuple_SET_ITEM(item, 2, copy);
    }
    Py_DECREF(seq);
    return result;
error:
    Py_DECREF(seq);
    Py_XDECREF(result);
    return NULL;
}

/* [(trace_id, span_id, attributes dict), ...] or None */
static PyObject *
copy_links(PyObject *links)
{
    Py_ssize_t n = PyObject_Length(links);
    if (n < 0)
        return NULL;
    if (n == 0)
        Py_RETURN_NONE;
    PyObject *seq = PySequence_List(links);
    if (seq == NULL)
        return NULL;
    n = PyList_GET_SIZE(seq);
    PyObject *result = PyList_New(n);
    if (result == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *link = PyList_GET_ITEM(seq, i);
        PyObject *item = PyTuple_New(3);
        if (item == NULL)
            goto error;
        PyList_SET_ITEM(result, i, item);
        PyObject *ctx = PyObject_GetAttr(link, s_pub_context);
        if (ctx == NULL)
            goto error;
        PyObject *trace_id = context_item(ctx, 0);
        PyObject *span_id = trace_id ? context_item(ctx, 1) : NULL;
        Py_DECREF(ctx);
        if (span_id == NULL) {
            Py_XDECREF(trace_id);
            goto error;
        }
        PyTuple_SET_ITEM(item, 0, trace_id);
        PyTuple_SET_ITEM(item, 1, span_id);
        PyObject *attributes = PyObject_GetAttr(link, s_pub_attributes);
        if (attributes == NULL)
            goto error;
        PyObject *copy = copy_attributes(attributes, 0);
        Py_DECREF(attributes);
        if (copy == NULL)
            goto error;
        PyTuple_SET_ITEM(item, 2, copy);
    }
    Py_DECREF(seq);
    return result;
error:
    Py_DECREF(seq);
    Py_XDECREF(result);
    return NULL;
}

static PyObject *
end_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(nargs, args, "end_record") < 0)
        return NULL;
    PyObject *span = args[0];
    PyObject *record = PyTuple_New(15);
    if (record == NULL)
        return NULL;
    PyTuple_SET_ITEM(record, 0, PyLong_FromLong(1));
    PyObject *key = fill_head(record, span, args[1]);
    if (key == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 14, key);
    PyObject *end = PyObject_GetAttr(span, s_end_time);
    if (end == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 8, end);
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
    PyObject *attributes = PyObject_GetAttr(span, s_attributes);
    if (attributes == NULL)
        goto error;
    PyObject *copy = copy_attributes(attributes, 1);
    Py_DECREF(attributes);
    if (copy == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 11, copy);
    PyObject *events = PyObject_GetAttr(span, s_events);
    if (events == NULL)
        goto error;
    PyObject *events_copy = copy_events(events);
    Py_DECREF(events);
    if (events_copy == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 12, events_copy);
    PyObject *links = PyObject_GetAttr(span, s_links);
    if (links == NULL)
        goto error;
    PyObject *links_copy = copy_links(links);
    Py_DECREF(links);
    if (links_copy == NULL)
        goto error;
    PyTuple_SET_ITEM(record, 13, links_copy);
    return record;
error:
    Py_DECREF(record);
    return NULL;
}

static PyMethodDef methods[] = {
    {"start_record", (PyCFunction)(void (*)(void))start_record, METH_FASTCALL,
     "start_record(span, known) -> the START record of an SDK span."},
    {"end_record", (PyCFunction)(void (*)(void))end_record, METH_FASTCALL,
     "end_record(span, known) -> the END record of an ended SDK span."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "spangraph._speedups",
    "The span copies of the offload hot path, in C.", -1, methods,
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
    return PyModule_Create(&module_def);
}
