/* spangraph._speedups: text written in C, for the FalkorDB store and the JSON of spans.
 *
 * cypher_literal(value, fallback) returns, UTF-8 encoded, exactly the text
 * spangraph.stores.falkordb._literal returns (the pure-Python version, used where this
 * module was not built), which is the text of the falkordb client's
 * stringify_param_value: str, int, float, bool, None, list, tuple and dict (of the exact
 * types) are written here; anything else, and a dict with a key the client would not
 * write plainly (not a str, empty, or holding a backquote), is handed to ``fallback``
 * (the client's function), whose str result is written in its place. A lone surrogate
 * in a str (which UTF-8 cannot encode) is written as U+FFFD.
 *
 * json_text(value) returns exactly what spangraph.mapping's JSON encoder writes (compact,
 * ensure_ascii off, strict) for values made of the exact types str, int, float, bool,
 * None, list, tuple and dict with str keys, or None for anything else (another type, a
 * non-str key, NaN or an infinity, a lone surrogate), which the caller then encodes in
 * Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Out;

static int
out_reserve(Out *out, Py_ssize_t more)
{
    if (out->len + more <= out->cap)
        return 0;
    Py_ssize_t cap = out->cap ? out->cap : 256;
    while (cap < out->len + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *data = PyMem_Realloc(out->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = data;
    out->cap = cap;
    return 0;
}

static int
out_write(Out *out, const char *text, Py_ssize_t n)
{
    if (out_reserve(out, n) < 0)
        return -1;
    memcpy(out->data + out->len, text, (size_t)n);
    out->len += n;
    return 0;
}

static inline int
out_char(Out *out, char c)
{
    if (out->len >= out->cap && out_reserve(out, 1) < 0)
        return -1;
    out->data[out->len++] = c;
    return 0;
}

/* ``text`` as UTF-8, leaving nothing behind in it: an ASCII str's own bytes (*owned
 * NULL), else a new bytes object (*owned). (PyUnicode_AsUTF8AndSize would keep a UTF-8
 * copy inside the str for the rest of its life: the program's own strings, a prompt or
 * a document held in an attribute, would grow by their UTF-8 size.) NULL with
 * UnicodeEncodeError set for a str holding lone surrogates. */
static const char *
utf8_copy(PyObject *text, Py_ssize_t *n, PyObject **owned)
{
    *owned = NULL;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "expected str, not %.200s", Py_TYPE(text)->tp_name);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    if (PyUnicode_IS_ASCII(text)) {
        *n = PyUnicode_GET_LENGTH(text);
        return (const char *)PyUnicode_DATA(text);
    }
    PyObject *raw = PyUnicode_AsUTF8String(text);
    if (raw == NULL)
        return NULL;
    *owned = raw;
    *n = PyBytes_GET_SIZE(raw);
    return PyBytes_AS_STRING(raw);
}

/* ``text`` as UTF-8 (see utf8_copy), or, for a str holding lone surrogates (which UTF-8
 * cannot encode), a new bytes object (*owned) in which each of them is U+FFFD, as the
 * Python version does (see falkordb._utf8). */
static const char *
utf8_of(PyObject *text, Py_ssize_t *n, PyObject **owned)
{
    const char *utf8 = utf8_copy(text, n, owned);
    if (utf8 != NULL || !PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return utf8;
    PyErr_Clear();
    PyObject *raw = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (raw == NULL)
        return NULL;
    /* a surrogate, passed: ED A0..BF 80..BF; U+FFFD: EF BF BD, as long */
    char *data = PyBytes_AS_STRING(raw);
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    for (Py_ssize_t i = 0; i + 2 < size; i++) {
        if ((unsigned char)data[i] == 0xED && ((unsigned char)data[i + 1] & 0xE0) == 0xA0) {
            data[i] = (char)0xEF;
            data[i + 1] = (char)0xBF;
            data[i + 2] = (char)0xBD;
            i += 2;
        }
    }
    *owned = raw;
    *n = size;
    return data;
}

/* The str ``text`` (any str) as UTF-8, unquoted. */
static int
out_str_raw(Out *out, PyObject *text)
{
    Py_ssize_t n;
    PyObject *owned;
    const char *utf8 = utf8_of(text, &n, &owned);
    if (utf8 == NULL)
        return -1;
    int rc = out_write(out, utf8, n);
    Py_XDECREF(owned);
    return rc;
}

/* A str value: quoted, with backslashes and double quotes escaped by a backslash. */
static int
out_quoted(Out *out, PyObject *text)
{
    Py_ssize_t n;
    PyObject *owned;
    const char *utf8 = utf8_of(text, &n, &owned);
    if (utf8 == NULL)
        return -1;
    /* the bytes and the two quotes; room for each backslash is made when one is needed
       (a bound of twice the text asked for gigabytes at once for a long value) */
    if (out_reserve(out, n + 2) < 0) {
        Py_XDECREF(owned);
        return -1;
    }
    char *dst = out->data + out->len;
    *dst++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = utf8[i];
        if (c == '\\' || c == '"') {
            /* the backslash, this byte and the rest, and the closing quote */
            out->len = dst - out->data;
            if (out_reserve(out, 1 + (n - i) + 1) < 0) {
                Py_XDECREF(owned);
                return -1;
            }
            dst = out->data + out->len;
            *dst++ = '\\';
        }
        *dst++ = c;
    }
    *dst++ = '"';
    out->len = dst - out->data;
    Py_XDECREF(owned);
    return 0;
}

/* str(value) of an exact int, float or bool. */
static int
out_number(Out *out, PyObject *value)
{
    if (value == Py_True)
        return out_write(out, "True", 4);
    if (value == Py_False)
        return out_write(out, "False", 5);
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%lld", v);
            return out_write(out, buf, n);
        }
        PyErr_Clear();
    }
    else {
        /* float.__repr__ (= __str__) */
        char *text = PyOS_double_to_string(PyFloat_AS_DOUBLE(value), 'r', 0,
                                           Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL)
            return -1;
        int rc = out_write(out, text, (Py_ssize_t)strlen(text));
        PyMem_Free(text);
        return rc;
    }
    PyObject *text = PyObject_Str(value);
    if (text == NULL)
        return -1;
    int rc = out_str_raw(out, text);
    Py_DECREF(text);
    return rc;
}

static int
out_fallback(Out *out, PyObject *value, PyObject *fallback)
{
    PyObject *text = PyObject_CallOneArg(fallback, value);
    if (text == NULL)
        return -1;
    int rc;
    if (PyUnicode_Check(text)) {
        rc = out_str_raw(out, text);
    }
    else {
        PyErr_Format(PyExc_TypeError, "the fallback returned %.100s, not str",
                     Py_TYPE(text)->tp_name);
        rc = -1;
    }
    Py_DECREF(text);
    return rc;
}

/* 1 when every key of ``dict`` is written plainly: a non-empty str without a backquote. */
static int
plain_keys(PyObject *dict)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 0;
        if (PyUnicode_GET_LENGTH(key) == 0
            || PyUnicode_FindChar(key, '`', 0, PY_SSIZE_T_MAX, 1) != -1)
            return 0;
    }
    return 1;
}

static int out_value(Out *out, PyObject *value, PyObject *fallback);

static int
out_dict(Out *out, PyObject *dict, PyObject *fallback)
{
    if (!plain_keys(dict))
        return out_fallback(out, dict, fallback);
    if (out_char(out, '{') < 0)
        return -1;
    Py_ssize_t pos = 0, i = 0, size = PyDict_GET_SIZE(dict);
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        /* a value's fallback may have changed the dict: each key is checked again as it
         * is written (a key the client refuses must never be written raw) */
        if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) == 0
            || PyUnicode_FindChar(key, '`', 0, PY_SSIZE_T_MAX, 1) != -1) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "dictionary keys changed during iteration");
            return -1;
        }
        if (i++ && out_char(out, ',') < 0)
            return -1;
        if (out_char(out, '`') < 0 || out_str_raw(out, key) < 0 || out_write(out, "`:", 2) < 0)
            return -1;
        /* a value may run code (the fallback) that changes the dict: hold it */
        Py_INCREF(value);
        int rc = out_value(out, value, fallback);
        Py_DECREF(value);
        if (rc < 0)
            return -1;
        if (PyDict_GET_SIZE(dict) != size) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            return -1;
        }
    }
    return out_char(out, '}');
}

static int
out_sequence(Out *out, PyObject *seq, PyObject *fallback)
{
    if (out_char(out, '[') < 0)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (i && out_char(out, ',') < 0)
            return -1;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(item);
        int rc = out_value(out, item, fallback);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
    }
    return out_char(out, ']');
}

static int
out_value(Out *out, PyObject *value, PyObject *fallback)
{
    if (PyUnicode_CheckExact(value))
        return out_quoted(out, value);
    if (PyLong_CheckExact(value) || PyFloat_CheckExact(value) || PyBool_Check(value))
        return out_number(out, value);
    if (value == Py_None)
        return out_write(out, "null", 4);
    int rc;
    if (PyDict_CheckExact(value) || PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        if (Py_EnterRecursiveCall(" in cypher_literal"))
            return -1;
        rc = PyDict_CheckExact(value) ? out_dict(out, value, fallback)
                                      : out_sequence(out, value, fallback);
        Py_LeaveRecursiveCall();
        return rc;
    }
    return out_fallback(out, value, fallback);
}

PyObject *
cypher_literal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "cypher_literal(value, fallback) takes 2 arguments");
        return NULL;
    }
    Out out = {NULL, 0, 0};
    PyObject *result = NULL;
    if (out_value(&out, args[0], args[1]) == 0)
        result = PyBytes_FromStringAndSize(out.data ? out.data : "", out.len);
    PyMem_Free(out.data);
    return result;
}


/* -- JSON ------------------------------------------------------------------------------ */

/* 1: written; 0: not a value this writer takes (the caller encodes it in Python);
 * -1: error. */
static int json_value(Out *out, PyObject *value);

static const char HEX[] = "0123456789abcdef";

/* A str as a JSON string, as json's encode_basestring writes it (non-ASCII as is). */
static int
json_str(Out *out, PyObject *text)
{
    Py_ssize_t n;
    PyObject *owned;
    const char *utf8 = utf8_copy(text, &n, &owned);
    if (utf8 == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear(); /* a lone surrogate: JSON text in Python keeps it, UTF-8 cannot */
        return 0;
    }
    /* the bytes and the two quotes; room for an escape is made when one is needed (a
       bound of six bytes for every byte asked for gigabytes at once for a long value,
       which a memory limit refused) */
    if (out_reserve(out, n + 2) < 0) {
        Py_XDECREF(owned);
        return -1;
    }
    char *dst = out->data + out->len;
    *dst++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)utf8[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *dst++ = (char)c;
            continue;
        }
        /* at most \u00XX for this byte, then the rest and the closing quote */
        out->len = dst - out->data;
        if (out_reserve(out, 6 + (n - i - 1) + 1) < 0) {
            Py_XDECREF(owned);
            return -1;
        }
        dst = out->data + out->len;
        *dst++ = '\\';
        switch (c) {
        case '"': *dst++ = '"'; break;
        case '\\': *dst++ = '\\'; break;
        case '\n': *dst++ = 'n'; break;
        case '\r': *dst++ = 'r'; break;
        case '\t': *dst++ = 't'; break;
        case '\b': *dst++ = 'b'; break;
        case '\f': *dst++ = 'f'; break;
        default:
            *dst++ = 'u';
            *dst++ = '0';
            *dst++ = '0';
            *dst++ = HEX[c >> 4];
            *dst++ = HEX[c & 15];
        }
    }
    *dst++ = '"';
    out->len = dst - out->data;
    Py_XDECREF(owned);
    return 1;
}

static int
json_items(Out *out, PyObject *seq)
{
    if (out_char(out, '[') < 0)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (i && out_char(out, ',') < 0)
            return -1;
        int rc = json_value(out, PySequence_Fast_GET_ITEM(seq, i));
        if (rc <= 0)
            return rc;
    }
    return out_char(out, ']') < 0 ? -1 : 1;
}

static int
json_dict(Out *out, PyObject *dict)
{
    if (out_char(out, '{') < 0)
        return -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 0;
        if (i++ && out_char(out, ',') < 0)
            return -1;
        int rc = json_str(out, key);
        if (rc <= 0)
            return rc;
        if (out_char(out, ':') < 0)
            return -1;
        rc = json_value(out, value); /* no code of the caller's runs here: value stays */
        if (rc <= 0)
            return rc;
    }
    return out_char(out, '}') < 0 ? -1 : 1;
}

static int
json_value(Out *out, PyObject *value)
{
    if (PyUnicode_CheckExact(value))
        return json_str(out, value);
    if (value == Py_None)
        return out_write(out, "null", 4) < 0 ? -1 : 1;
    if (value == Py_True)
        return out_write(out, "true", 4) < 0 ? -1 : 1;
    if (value == Py_False)
        return out_write(out, "false", 5) < 0 ? -1 : 1;
    if (PyLong_CheckExact(value) || PyFloat_CheckExact(value)) {
        if (PyFloat_CheckExact(value) && !isfinite(PyFloat_AS_DOUBLE(value)))
            return 0; /* the Python encoder writes it as a string */
        return out_number(out, value) < 0 ? -1 : 1;
    }
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value) || PyDict_CheckExact(value)) {
        if (Py_EnterRecursiveCall(" in json_text"))
            return -1;
        int rc = PyDict_CheckExact(value) ? json_dict(out, value) : json_items(out, value);
        Py_LeaveRecursiveCall();
        return rc;
    }
    return 0;
}

PyObject *
json_text(PyObject *module, PyObject *value)
{
    Out out = {NULL, 0, 0};
    PyObject *result = NULL;
    int rc = json_value(&out, value);
    if (rc > 0)
        result = PyUnicode_DecodeUTF8(out.data ? out.data : "", out.len, NULL);
    else if (rc == 0)
        result = Py_NewRef(Py_None);
    PyMem_Free(out.data);
    return result;
}
