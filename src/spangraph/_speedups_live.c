/* spangraph._speedups.live_message: the wire text of a live message, in C.
 *
 * live_message(message_type, common, time_ns, attributes, parts) returns exactly what
 * spangraph.mapping's Python live_message returns (used where this module was not built,
 * and here for anything but the usual case): a (head, tail) pair of JSON fragments around
 * the message's seq. The usual case is written here: a str message type whose head is
 * cached, an int time in range, a dict of attributes (encoded by mapping.to_json) and the
 * span's parts. live_setup(python_version, to_json, heads) hands over what it needs.
 * iso_time(time_ns) is mapping.iso_time's text, or None where that needs the datetime path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_SECONDS 253402300800LL /* 10000-01-01T00:00:00Z */

static PyObject *py_live_message, *to_json, *heads;

PyObject *
live_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])
        || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "live_setup(python_live_message, to_json, heads: dict) expected");
        return NULL;
    }
    Py_XSETREF(py_live_message, Py_NewRef(args[0]));
    Py_XSETREF(to_json, Py_NewRef(args[1]));
    Py_XSETREF(heads, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

/* ``value`` as ``width`` decimal digits at ``out``. */
static inline void
digits(char *out, long long value, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

#define ISO_LEN 27 /* 2026-11-21T23:16:48.006123Z */

/* The ISO-8601 text of ``time_ns`` (mapping.iso_time) into ``out`` (ISO_LEN chars): 1
 * when written, 0 when the Python version must say (out of range), -1 on error. The same
 * float arithmetic as the Python version: time_ns / 1e9, microseconds rounded half to
 * even. */
static int
iso_text(PyObject *time_ns, char *out)
{
    double ns = PyLong_AsDouble(time_ns);
    if (ns == -1.0 && PyErr_Occurred())
        return -1;
    double t = ns / 1e9;
    if (!(0.0 <= t && t < (double)MAX_SECONDS))
        return 0;
    long long seconds = (long long)t;
    long long micros = (long long)nearbyint((t - (double)seconds) * 1e6);
    if (micros == 1000000) {
        micros = 0;
        seconds += 1;
    }
    if (seconds >= MAX_SECONDS)
        return 0;
    long long days = seconds / 86400, rest = seconds % 86400;
    /* days since 1970-01-01 to a civil date (H. Hinnant's algorithm, days >= 0) */
    long long z = days + 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long year = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long day = doy - (153 * mp + 2) / 5 + 1;
    long long month = mp < 10 ? mp + 3 : mp - 9;
    year += month <= 2;
    memcpy(out, "0000-00-00T00:00:00.000000Z", ISO_LEN);
    digits(out, year, 4);
    digits(out + 5, month, 2);
    digits(out + 8, day, 2);
    digits(out + 11, rest / 3600, 2);
    digits(out + 14, rest / 60 % 60, 2);
    digits(out + 17, rest % 60, 2);
    digits(out + 20, micros, 6);
    return 1;
}

PyObject *
iso_time(PyObject *module, PyObject *time_ns)
{
    if (!PyLong_CheckExact(time_ns))
        Py_RETURN_NONE;
    char text[ISO_LEN];
    int rc = iso_text(time_ns, text);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize(text, ISO_LEN);
}

/* Write the ASCII ``text`` at ``*pos`` of ``out``. */
static void
put_ascii(PyObject *out, Py_ssize_t *pos, const char *text, Py_ssize_t n)
{
    int kind = PyUnicode_KIND(out);
    void *data = PyUnicode_DATA(out);
    if (kind == PyUnicode_1BYTE_KIND) {
        memcpy((Py_UCS1 *)data + *pos, text, (size_t)n);
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++)
            PyUnicode_WRITE(kind, data, *pos + i, (Py_UCS1)text[i]);
    }
    *pos += n;
}

static int
put_str(PyObject *out, Py_ssize_t *pos, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_CopyCharacters(out, *pos, text, 0, n) < 0)
        return -1;
    *pos += n;
    return 0;
}

#define PUT(text) put_ascii(tail, &pos, text, (Py_ssize_t)(sizeof(text) - 1))

/* ``,{before},"timestamp":"{iso}","time_unix_nano":{number},"attributes":{json},{after}`` */
static PyObject *
tail_text(PyObject *before, const char *iso, const char *number, int number_len,
          PyObject *json, PyObject *after)
{
    Py_UCS4 maxchar = PyUnicode_MAX_CHAR_VALUE(before);
    if (PyUnicode_MAX_CHAR_VALUE(json) > maxchar)
        maxchar = PyUnicode_MAX_CHAR_VALUE(json);
    if (PyUnicode_MAX_CHAR_VALUE(after) > maxchar)
        maxchar = PyUnicode_MAX_CHAR_VALUE(after);
    Py_ssize_t length = PyUnicode_GET_LENGTH(before) + PyUnicode_GET_LENGTH(json)
                        + PyUnicode_GET_LENGTH(after) + ISO_LEN + number_len
                        + (Py_ssize_t)(sizeof(",") - 1 + sizeof(",\"timestamp\":\"") - 1
                                       + sizeof("\",\"time_unix_nano\":") - 1
                                       + sizeof(",\"attributes\":") - 1 + sizeof(",") - 1);
    PyObject *tail = PyUnicode_New(length, maxchar);
    if (tail == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PUT(",");
    if (put_str(tail, &pos, before) < 0)
        goto error;
    PUT(",\"timestamp\":\"");
    put_ascii(tail, &pos, iso, ISO_LEN);
    PUT("\",\"time_unix_nano\":");
    put_ascii(tail, &pos, number, number_len);
    PUT(",\"attributes\":");
    if (put_str(tail, &pos, json) < 0)
        goto error;
    PUT(",");
    if (put_str(tail, &pos, after) < 0)
        goto error;
    assert(pos == length);
    return tail;
error:
    Py_DECREF(tail);
    return NULL;
}

PyObject *
live_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (py_live_message == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "live_setup() was not called");
        return NULL;
    }
    if (nargs != 5 || kwnames != NULL)
        goto python; /* keywords as well: the Python version takes them */
    PyObject *message_type = args[0], *time_ns = args[2], *attributes = args[3];
    PyObject *parts = args[4];
    if (!PyUnicode_CheckExact(message_type) || !PyLong_CheckExact(time_ns)
        || !PyDict_CheckExact(attributes) || !PyTuple_CheckExact(parts)
        || PyTuple_GET_SIZE(parts) != 2)
        goto python;
    PyObject *before = PyTuple_GET_ITEM(parts, 0), *after = PyTuple_GET_ITEM(parts, 1);
    if (!PyUnicode_CheckExact(before) || !PyUnicode_CheckExact(after))
        goto python;
    PyObject *head = PyDict_GetItemWithError(heads, message_type);
    if (head == NULL) {
        if (PyErr_Occurred())
            return NULL;
        goto python; /* which builds the head and caches it */
    }
    Py_INCREF(head); /* to_json below runs Python code: hold it */
    int overflow;
    long long ns = PyLong_AsLongLongAndOverflow(time_ns, &overflow);
    if (overflow || (ns == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_DECREF(head);
        goto python;
    }
    char iso[ISO_LEN];
    int rc = iso_text(time_ns, iso);
    if (rc <= 0) {
        Py_DECREF(head);
        if (rc < 0)
            return NULL;
        goto python;
    }
    PyObject *json = PyObject_CallOneArg(to_json, attributes);
    if (json == NULL || !PyUnicode_CheckExact(json)) {
        if (json != NULL)
            PyErr_SetString(PyExc_TypeError, "to_json() did not return str");
        Py_XDECREF(json);
        Py_DECREF(head);
        return NULL;
    }
    char number[24];
    int number_len = snprintf(number, sizeof number, "%lld", ns);
    PyObject *tail = tail_text(before, iso, number, number_len, json, after);
    Py_DECREF(json);
    PyObject *result = tail == NULL ? NULL : PyTuple_Pack(2, head, tail);
    Py_XDECREF(tail);
    Py_DECREF(head);
    return result;

python:
    return PyObject_Vectorcall(py_live_message, args, (size_t)nargs, kwnames);
}
