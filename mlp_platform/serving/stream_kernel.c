/* The compiled stream kernel: the features of one streaming view from a packed Redis history.
 *
 * Does in one C call what ``parse_packed`` + ``compute_stream`` (mlp_platform/serving/online_store.py,
 * the reference) do in Python, with the same values and the same Python types: ints for counts,
 * distinct counts and first-time flags, floats for sums, means, maxima and seconds, None where the
 * reference gives None. Sums add in the reference's order (history oldest first, then the
 * transaction) into a double starting at 0.0, as CPython's sum() of floats does up to 3.11; numbers
 * are parsed by PyOS_string_to_double, the conversion float() uses.
 *
 * Anything outside the canonical form the store writes -- a field count that is not a whole number
 * of events, a time that is not plain decimal digits, a number with characters other than digits,
 * '.', 'e', 'E', '+', '-' (float() would accept more: whitespace, underscores, "nan", "inf"), an
 * output index outside the list -- returns NotImplemented, and the caller computes the features
 * with the Python reference instead. A Python error (out of memory, a transaction value or ratio
 * numerator float() refuses) is raised as the reference would raise it.
 *
 * Module functions:
 *   prepare(ncols, numeric, windows, ops) -> capsule
 *       ops: tuple of (out_index, op, window_index, column_index, extra) with op one of the OP_*
 *       codes below; for OP_RATIO, column_index indexes the ``cur`` tuple (the numerator) and extra
 *       is the out index of the denominator.
 *   compute(capsule, packed, t, tid, cur, out) -> None (done) or NotImplemented (use the reference)
 *       cur: the transaction's raw value per payload column, converted here as the reference
 *       converts it (float(v) for a numeric column, str(v) otherwise, None stays None; a str for a
 *       numeric column goes to the reference), then the ratio numerators (raw).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { OP_COUNT = 0, OP_SUM = 1, OP_MEAN = 2, OP_MAX = 3, OP_DISTINCT = 4, OP_SINCE_PREV = 5, OP_FIRST = 6,
       OP_RATIO = 7 };

#define SEP '\x1f'
#define MAX_COLS 16
#define MAX_WINDOWS 32
#define STACK_EVENTS 256

typedef struct {
    Py_ssize_t out, op, w, col, extra;
} Op;

typedef struct {
    int ncols;
    int numeric[MAX_COLS];
    int nwindows;
    int64_t windows[MAX_WINDOWS];
    Py_ssize_t nops;
    Op *ops;
    Py_ssize_t max_out, max_cur;
} Plan;

typedef struct {
    const char *p;
    Py_ssize_t len; /* -1: null */
} Str;

typedef struct {
    int64_t t;
    Str tid;
} Event;

static void plan_free(PyObject *capsule) {
    Plan *plan = (Plan *)PyCapsule_GetPointer(capsule, "mlp.stream_plan");
    if (plan != NULL) {
        free(plan->ops);
        free(plan);
    }
}

static PyObject *prepare(PyObject *self, PyObject *args) {
    int ncols;
    PyObject *numeric, *windows, *ops;
    if (!PyArg_ParseTuple(args, "iO!O!O!", &ncols, &PyTuple_Type, &numeric, &PyTuple_Type, &windows,
                          &PyTuple_Type, &ops))
        return NULL;
    if (ncols < 0 || ncols > MAX_COLS || PyTuple_GET_SIZE(numeric) != ncols ||
        PyTuple_GET_SIZE(windows) > MAX_WINDOWS) {
        PyErr_SetString(PyExc_ValueError, "stream kernel: too many columns or windows");
        return NULL;
    }
    Plan *plan = (Plan *)calloc(1, sizeof(Plan));
    if (plan == NULL)
        return PyErr_NoMemory();
    plan->ncols = ncols;
    for (int c = 0; c < ncols; c++)
        plan->numeric[c] = PyObject_IsTrue(PyTuple_GET_ITEM(numeric, c));
    plan->nwindows = (int)PyTuple_GET_SIZE(windows);
    for (int w = 0; w < plan->nwindows; w++)
        plan->windows[w] = PyLong_AsLongLong(PyTuple_GET_ITEM(windows, w));
    plan->nops = PyTuple_GET_SIZE(ops);
    plan->max_cur = ncols;
    plan->ops = (Op *)calloc(plan->nops ? plan->nops : 1, sizeof(Op));
    if (plan->ops == NULL) {
        free(plan);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < plan->nops; i++) {
        Op *op = &plan->ops[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(ops, i), "nnnnn", &op->out, &op->op, &op->w, &op->col, &op->extra))
            goto fail;
        int bad = op->out < 0 || op->op < OP_COUNT || op->op > OP_RATIO || op->col < -1 || op->extra < -1;
        if (op->op <= OP_MAX || op->op == OP_DISTINCT)
            bad |= op->w < 0 || op->w >= plan->nwindows;
        if (op->op >= OP_SUM && op->op <= OP_MAX)
            bad |= op->col < 0 || op->col >= ncols || !plan->numeric[op->col];
        if (op->op == OP_DISTINCT || op->op == OP_FIRST)
            bad |= op->col < 0 || op->col >= ncols || plan->numeric[op->col];
        if (op->op == OP_RATIO)
            bad |= op->col < 0 || op->extra < 0;
        if (bad) {
            PyErr_Format(PyExc_ValueError, "stream kernel: operation %zd not supported", i);
            goto fail;
        }
        if (op->out > plan->max_out)
            plan->max_out = op->out;
        if (op->op == OP_RATIO && op->extra > plan->max_out)
            plan->max_out = op->extra;
        if (op->col + 1 > plan->max_cur)
            plan->max_cur = op->col + 1;
    }
    if (PyErr_Occurred())
        goto fail;
    PyObject *capsule = PyCapsule_New(plan, "mlp.stream_plan", plan_free);
    if (capsule == NULL)
        goto fail;
    return capsule;
fail:
    free(plan->ops);
    free(plan);
    return NULL;
}

/* Strict decimal integer: optional '-', 1 to 18 digits. */
static int parse_int(const char *p, Py_ssize_t len, int64_t *out) {
    int neg = 0;
    if (len > 0 && p[0] == '-') {
        neg = 1;
        p++;
        len--;
    }
    if (len < 1 || len > 18)
        return 0;
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

/* A number as float() reads it, for the characters repr() writes; 0 when not that form. */
static int parse_double(const char *p, Py_ssize_t len, double *out) {
    char buf[64];
    if (len < 1 || len >= (Py_ssize_t)sizeof(buf))
        return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
            return 0;
        buf[i] = c;
    }
    buf[len] = '\0';
    char *end = NULL;
    double v = PyOS_string_to_double(buf, &end, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (end != buf + len)
        return 0;
    *out = v;
    return 1;
}

static int str_cmp(Str a, Str b) {
    Py_ssize_t n = a.len < b.len ? a.len : b.len;
    int c = memcmp(a.p, b.p, (size_t)n);
    if (c != 0)
        return c;
    return (a.len > b.len) - (a.len < b.len);
}

static int str_sort_cmp(const void *x, const void *y) {
    return str_cmp(*(const Str *)x, *(const Str *)y);
}

static int str_eq(Str a, Str b) {
    return a.len == b.len && memcmp(a.p, b.p, (size_t)a.len) == 0;
}

/* bisect.bisect_right(times[:n], x) */
static Py_ssize_t bisect_right(const Event *ev, Py_ssize_t n, int64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (x < ev[mid].t)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static PyObject *compute(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "compute(plan, packed, t, tid, cur, out)");
        return NULL;
    }
    Plan *plan = (Plan *)PyCapsule_GetPointer(args[0], "mlp.stream_plan");
    if (plan == NULL)
        return NULL;
    PyObject *packed = args[1], *tid_obj = args[3], *cur = args[4], *out = args[5];
    if (!PyUnicode_Check(packed) || !PyUnicode_Check(tid_obj) || !PyTuple_Check(cur) || !PyList_Check(out))
        Py_RETURN_NOTIMPLEMENTED;
    int overflow = 0;
    long long t = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (overflow || (t == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (PyList_GET_SIZE(out) <= plan->max_out || PyTuple_GET_SIZE(cur) < plan->max_cur)
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t plen, tlen;
    const char *p = PyUnicode_AsUTF8AndSize(packed, &plen);
    Str tid;
    tid.p = p == NULL ? NULL : PyUnicode_AsUTF8AndSize(tid_obj, &tlen);
    if (tid.p == NULL) { /* not encodable (a lone surrogate): the reference compares code points */
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    tid.len = tlen;
    /* the transaction's values as the history stores them (float(v) / str(v), None stays None),
       converted before anything is written: a fallback must leave out as it was */
    Str curs[MAX_COLS];
    double curv[MAX_COLS];
    PyObject *owned[MAX_COLS];
    int nowned = 0;
    PyObject *result = NULL;
    for (int c = 0; c < plan->ncols; c++) {
        PyObject *cv = PyTuple_GET_ITEM(cur, c);
        curs[c].p = NULL;
        curs[c].len = -1;
        if (cv == Py_None)
            continue;
        if (plan->numeric[c]) {
            if (PyFloat_CheckExact(cv)) {
                curv[c] = PyFloat_AS_DOUBLE(cv);
            } else {
                PyObject *f = PyNumber_Float(cv); /* float(v) */
                if (f == NULL)
                    goto release;
                curv[c] = PyFloat_AS_DOUBLE(f);
                Py_DECREF(f);
            }
            curs[c].len = 0; /* not null */
        } else {
            PyObject *str = PyObject_Str(cv);
            if (str == NULL)
                goto release;
            owned[nowned++] = str;
            Py_ssize_t cl;
            curs[c].p = PyUnicode_AsUTF8AndSize(str, &cl);
            if (curs[c].p == NULL) { /* not encodable (a lone surrogate) */
                PyErr_Clear();
                result = Py_NewRef(Py_NotImplemented);
                goto release;
            }
            curs[c].len = cl;
        }
    }
    const int k = 2 + plan->ncols;
    /* count the fields: a whole number of events, or the reference decides */
    Py_ssize_t nfields = 0;
    if (plen > 0) {
        nfields = 1;
        const char *q = p, *end = p + plen;
        while ((q = memchr(q, SEP, (size_t)(end - q))) != NULL) {
            nfields++;
            q++;
        }
        if (nfields % k != 0) {
            result = Py_NewRef(Py_NotImplemented);
            goto release;
        }
    }
    Py_ssize_t n = nfields / k;

    Event ev_stack[STACK_EVENTS];
    Str col_stack[STACK_EVENTS * 4];
    double num_stack[STACK_EVENTS * 4];
    Event *ev = ev_stack;
    Str *cols = col_stack;     /* cols[c * n + i] */
    double *nums = num_stack;  /* nums[c * n + i], numeric columns */
    void *heap = NULL;
    if (n > STACK_EVENTS || (Py_ssize_t)plan->ncols * n > STACK_EVENTS * 4) {
        size_t need = (size_t)n * (sizeof(Event) + (size_t)plan->ncols * (sizeof(Str) + sizeof(double)));
        heap = malloc(need ? need : 1);
        if (heap == NULL) {
            PyErr_NoMemory();
            goto release;
        }
        ev = (Event *)heap;
        cols = (Str *)(ev + n);
        nums = (double *)(cols + (size_t)plan->ncols * n);
    }
    Str *distinct = NULL;

    /* parse: tid, time, payload columns per event */
    {
        const char *q = p, *end = p + plen;
        for (Py_ssize_t i = 0; i < n; i++) {
            for (int f = 0; f < k; f++) {
                const char *s = memchr(q, SEP, (size_t)(end - q));
                if (s == NULL)
                    s = end;
                Py_ssize_t len = s - q;
                if (f == 0) {
                    ev[i].tid.p = q;
                    ev[i].tid.len = len;
                } else if (f == 1) {
                    int64_t v;
                    if (!parse_int(q, len, &v))
                        goto fallback;
                    ev[i].t = v;
                } else {
                    int c = f - 2;
                    Str *cell = &cols[(Py_ssize_t)c * n + i];
                    if (len == 1 && q[0] == '\0') {
                        cell->p = q;
                        cell->len = -1;
                    } else {
                        cell->p = q;
                        cell->len = len;
                        if (plan->numeric[c] && !parse_double(q, len, &nums[(Py_ssize_t)c * n + i]))
                            goto fallback;
                    }
                }
                q = s + 1;
            }
        }
    }
    /* the transaction itself and later ties (they sort last) */
    while (n > 0 && ev[n - 1].t == t && str_cmp(ev[n - 1].tid, tid) >= 0)
        n--;
    /* note: cols/nums keep their stride (the parsed count); only the first n rows are read */
    Py_ssize_t stride = nfields / k;

    Py_ssize_t lo[MAX_WINDOWS];
    for (int w = 0; w < plan->nwindows; w++)
        lo[w] = bisect_right(ev, n, (int64_t)t - plan->windows[w]);

    for (Py_ssize_t o = 0; o < plan->nops; o++) {
        const Op *op = &plan->ops[o];
        const Str *cells = op->col >= 0 && op->col < plan->ncols ? &cols[op->col * stride] : NULL;
        PyObject *value = NULL;
        switch (op->op) {
        case OP_COUNT:
            value = PyLong_FromSsize_t(n - lo[op->w] + 1);
            break;
        case OP_SUM:
        case OP_MEAN:
        case OP_MAX: {
            const double *vals = &nums[op->col * stride];
            Py_ssize_t count = 0;
            double sum = 0.0, mx = 0.0;
            for (Py_ssize_t i = lo[op->w]; i <= n; i++) { /* the window's events, then the transaction */
                double v;
                if (i < n) {
                    if (cells[i].len < 0)
                        continue;
                    v = vals[i];
                } else if (curs[op->col].len >= 0) {
                    v = curv[op->col];
                } else {
                    break;
                }
                if (count == 0 || v > mx)
                    mx = v;
                sum += v;
                count++;
            }
            if (count == 0)
                value = Py_NewRef(Py_None);
            else
                value = PyFloat_FromDouble(op->op == OP_SUM ? sum : op->op == OP_MEAN ? sum / (double)count : mx);
            break;
        }
        case OP_DISTINCT: {
            Py_ssize_t m = 0, unique = 0;
            if (distinct == NULL && (distinct = (Str *)malloc(sizeof(Str) * (size_t)(n + 1))) == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            for (Py_ssize_t i = lo[op->w]; i < n; i++)
                if (cells[i].len >= 0)
                    distinct[m++] = cells[i];
            if (curs[op->col].len >= 0)
                distinct[m++] = curs[op->col];
            if (m > 0) {
                qsort(distinct, (size_t)m, sizeof(Str), str_sort_cmp);
                unique = 1;
                for (Py_ssize_t i = 1; i < m; i++)
                    if (!str_eq(distinct[i], distinct[i - 1]))
                        unique++;
            }
            value = PyLong_FromSsize_t(unique);
            break;
        }
        case OP_SINCE_PREV:
            value = n > 0 ? PyFloat_FromDouble((double)((int64_t)t - ev[n - 1].t) / 1000000.0) : Py_NewRef(Py_None);
            break;
        case OP_FIRST: {
            long first = curs[op->col].len >= 0;
            for (Py_ssize_t i = 0; first && i < n; i++)
                if (cells[i].len >= 0 && str_eq(cells[i], curs[op->col]))
                    first = 0;
            value = PyLong_FromLong(first);
            break;
        }
        default: { /* OP_RATIO: None if numerator is None or not denominator else float(numerator) / denominator */
            PyObject *numerator = PyTuple_GET_ITEM(cur, op->col);
            PyObject *denominator = PyList_GET_ITEM(out, op->extra);
            int truth = numerator == Py_None ? 0 : PyObject_IsTrue(denominator);
            if (truth < 0)
                goto done;
            if (!truth) {
                value = Py_NewRef(Py_None);
            } else {
                PyObject *num = PyNumber_Float(numerator);
                if (num == NULL)
                    goto done;
                value = PyNumber_TrueDivide(num, denominator);
                Py_DECREF(num);
            }
            break;
        }
        }
        if (value == NULL || PyList_SetItem(out, op->out, value) < 0) /* SetItem steals the reference */
            goto done;
    }
    result = Py_NewRef(Py_None);
    goto done;
fallback:
    result = Py_NewRef(Py_NotImplemented);
done:
    free(distinct);
    free(heap);
release:
    for (int i = 0; i < nowned; i++)
        Py_DECREF(owned[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS, "prepare(ncols, numeric, windows, ops) -> plan capsule"},
    {"compute", (PyCFunction)(void (*)(void))compute, METH_FASTCALL,
     "compute(plan, packed, t, tid, cur, out) -> None, or NotImplemented (use the Python reference)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mlp_stream_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mlp_stream_kernel(void) { return PyModule_Create(&module); }
