/* stream.c -- the byte-stream fast path of zokio.net (stream.h) and the
 * busy token.
 *
 * The busy token.  Each direction of a stream (and a listener's accept, a
 * UDP socket's send and receive) has one BusyToken: an op takes it before
 * it starts and gives it back when it ends, so of two tasks that read one
 * stream at the same instant, on two workers, exactly one gets it and the
 * other gets BusyResourceError before anything is read.  take() is one
 * compare-and-swap; the token is truthy while free, so the Python side
 * asks `bool(token)` for "no op in flight" (_FdOwner._idle).
 *
 * The fast path.  stream_install(SocketStream) puts four method descriptors
 * on the class: read(n), readinto(buffer), write(data), write_all(data).
 * Each takes the token, checks that nothing needs Python (no bytes buffered
 * by readuntil or a cancelled read_exact, not closed), and returns the RECV,
 * RECV_INTO or SEND Op with the stream attached.  The stream's fields are
 * __slots__: their offsets are read once from the class's member
 * descriptors, and the fields are loaded directly (acquire loads, as
 * CPython's own member_get does on 3.13t).  Which loads are safe without a
 * reference:
 *   _rtok, _wtok   set in __init__, never replaced
 *   _closed        True or False: immortal
 *   _rbuf          replaced only by the holder of the read token: us
 *   _fd            replaced (by -1) only by the close that found both
 *                  tokens free; we hold one and saw _closed False after
 *                  taking it, and close() stores _closed before it looks
 *                  at the tokens (the order _stream.py's docstring states)
 * When the awaiting task takes the Op's outcome (zk_stream_op_next), the
 * token goes back, and a close that happened meanwhile or an OSError goes
 * to SocketStream._op_end (which finishes the close, or adds the address
 * to the error).  A send that wrote part of write_all's data hands the
 * token and the rest to SocketStream._write_rest, a coroutine this Op then
 * drives as its own.
 */
#include "io/stream.h"
#include "core/class_glue.h"

#include <limits.h>

/* ---- BusyToken ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    _Atomic int held;
} zk_busy_token;

static PyTypeObject *token_type;

static inline int token_take(PyObject *t) {
    int expected = 0;
    return atomic_compare_exchange_strong_explicit(&((zk_busy_token *)t)->held, &expected, 1,
                                                   memory_order_seq_cst, memory_order_relaxed);
}

static inline void token_give(PyObject *t) {
    atomic_store_explicit(&((zk_busy_token *)t)->held, 0, memory_order_seq_cst);
}

static PyObject *token_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "BusyToken() takes no arguments");
        return NULL;
    }
    zk_busy_token *t = (zk_busy_token *)type->tp_alloc(type, 0);
    if (t != NULL)
        atomic_init(&t->held, 0);
    return (PyObject *)t;
}

static void token_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *token_take_method(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(token_take(self));
}

static PyObject *token_give_method(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!atomic_exchange_explicit(&((zk_busy_token *)self)->held, 0, memory_order_seq_cst)) {
        PyErr_SetString(PyExc_RuntimeError, "BusyToken.give(): the token is not taken");
        return NULL;
    }
    Py_RETURN_NONE;
}

static int token_bool(PyObject *self) {
    return !atomic_load_explicit(&((zk_busy_token *)self)->held, memory_order_seq_cst);
}

static PyObject *token_repr(PyObject *self) {
    return PyUnicode_FromFormat("<zokio.BusyToken %s>", token_bool(self) ? "free" : "taken");
}

static PyMethodDef token_methods[] = {
    {"take", token_take_method, METH_NOARGS,
     "take() -> bool: take the token if it is free (atomic); False if taken."},
    {"give", token_give_method, METH_NOARGS, "give(): give the taken token back."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot token_slots[] = {
    {Py_tp_doc, "A busy token: one holder at a time; truthy while free."},
    {Py_tp_new, token_new},
    {Py_tp_dealloc, token_dealloc},
    {Py_tp_methods, token_methods},
    {Py_nb_bool, token_bool},
    {Py_tp_repr, token_repr},
    {0, NULL},
};

static PyType_Spec token_spec = {
    .name = "zokio._native.BusyToken",
    .basicsize = sizeof(zk_busy_token),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = token_slots,
};

/* ---- the installed class ----------------------------------------------------- */

static struct {
    zk_state *st;
    PyObject *cls;                 /* SocketStream (strong) */
    Py_ssize_t off_rtok, off_wtok, off_rbuf, off_closed, off_fd;
    PyObject *str_op_end, *str_write_rest, *str_finish_close, *str_throw, *str_close;
    PyObject *str_read_slow, *str_readinto_slow, *str_write_slow, *str_write_all_slow;
    PyObject *default_chunk;       /* 65536 */
    PyObject *mode_int[4];
} S;

/* The Python method `slow` with the same arguments: what the fast path
 * leaves to Python (and argument errors, which it reports). */
static PyObject *call_slow(PyObject *self, PyObject *slow, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *small[4];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = 1 + nargs + nkw;
    PyObject **stack = total <= 4 ? small : PyMem_Malloc(total * sizeof(PyObject *));
    if (stack == NULL)
        return PyErr_NoMemory();
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        stack[1 + i] = args[i];
    PyObject *r = PyObject_VectorcallMethod(slow, stack, (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return r;
}

/* Take the token, check that the fast path applies, make the Op.  NULL
 * with *slow set: let the Python method do it. */
static PyObject *start(PyObject *self, int mode, zk_opcode opcode, PyObject *arg, int *slow) {
    PyObject *tok = zk_slot_load(self, mode == ZK_STREAM_READ ? S.off_rtok : S.off_wtok);
    *slow = 1;
    if (tok == NULL || !Py_IS_TYPE(tok, token_type) || !token_take(tok))
        return NULL;  /* Python raises the error (busy, not initialised) */
    if (mode == ZK_STREAM_READ) {
        PyObject *rbuf = zk_slot_load(self, S.off_rbuf);
        if (rbuf != Py_None)  /* bytes left by readuntil or read_exact */
            goto give;
    }
    if (zk_slot_load(self, S.off_closed) != Py_False)
        goto give;
    PyObject *fdo = zk_slot_load(self, S.off_fd);
    if (fdo == NULL || !PyLong_CheckExact(fdo))
        goto give;
    *slow = 0;
    long fdl = PyLong_AsLong(fdo);
    if (fdl < 0 || fdl > INT_MAX) {  /* -1 once closed: Python says so */
        PyErr_Clear();
        *slow = 1;
        goto give;
    }
    int fd = (int)fdl;
    zk_op_args a = {.arg = arg, .address = NULL, .offset = 0, .flags = 0};
    zk_io_op *op = (zk_io_op *)zk_io_op_new(S.st, opcode, fd, &a);
    if (op == NULL) {
        token_give(tok);
        return NULL;
    }
    op->stream = Py_NewRef(self);
    op->stream_token = Py_NewRef(tok);
    op->token_held = 1;
    op->stream_mode = (uint8_t)mode;
    if (mode == ZK_STREAM_WRITE_ALL) {
        op->stream_data = Py_NewRef(arg);
        op->stream_total = (Py_ssize_t)op->op.len;
    }
    return (PyObject *)op;
give:
    token_give(tok);
    return NULL;
}

/* One argument, positional or by `kwname`, or `dflt` when it may be left
 * out; 0, or -1 when the call is not of that form (the slow path reports). */
static int one_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   const char *kwname, PyObject *dflt, PyObject **out) {
    if (kwnames != NULL) {
        if (nargs != 0 || PyTuple_GET_SIZE(kwnames) != 1 ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), kwname) != 0)
            return -1;
        *out = args[0];
        return 0;
    }
    if (nargs == 1) {
        *out = args[0];
        return 0;
    }
    if (nargs == 0 && dflt != NULL) {
        *out = dflt;
        return 0;
    }
    return -1;
}

#define STREAM_METHOD(fname, mode, opcode, kwname, dflt, slowname)                         \
    static PyObject *fname(PyObject *self, PyObject *const *args, size_t nargsf,           \
                           PyObject *kwnames) {                                            \
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);                                     \
        PyObject *arg;                                                                     \
        int slow = 1;                                                                      \
        if (one_arg(args, nargs, kwnames, kwname, dflt, &arg) == 0) {                      \
            PyObject *op = start(self, mode, opcode, arg, &slow);                          \
            if (!slow)                                                                     \
                return op;                                                                 \
        }                                                                                  \
        return call_slow(self, S.slowname, args, nargs, kwnames);                          \
    }

STREAM_METHOD(stream_read, ZK_STREAM_READ, ZK_OP_RECV, "n", S.default_chunk, str_read_slow)
STREAM_METHOD(stream_readinto, ZK_STREAM_READ, ZK_OP_RECV_INTO, "buffer", NULL,
              str_readinto_slow)
STREAM_METHOD(stream_write, ZK_STREAM_WRITE, ZK_OP_SEND, "data", NULL, str_write_slow)
STREAM_METHOD(stream_write_all, ZK_STREAM_WRITE_ALL, ZK_OP_SEND, "data", NULL,
              str_write_all_slow)

static PyMethodDef stream_defs[] = {
    {"read", (PyCFunction)(void (*)(void))stream_read, METH_FASTCALL | METH_KEYWORDS,
     "read($self, n=65536, /)\n--\n\n"
     "Await up to ``n`` bytes (at least 1), as soon as any are available;\n"
     "``b\"\"`` at end of stream.  Cancel-safe."},
    {"readinto", (PyCFunction)(void (*)(void))stream_readinto, METH_FASTCALL | METH_KEYWORDS,
     "readinto($self, buffer, /)\n--\n\n"
     "Await bytes read into a writable buffer (no copy); the count, 0 at end\n"
     "of stream.  Cancel-safe."},
    {"write", (PyCFunction)(void (*)(void))stream_write, METH_FASTCALL | METH_KEYWORDS,
     "write($self, data, /)\n--\n\n"
     "Await sending some of ``data`` (any bytes-like object, not copied); the\n"
     "count sent.  Waits until at least one byte can go."},
    {"write_all", (PyCFunction)(void (*)(void))stream_write_all, METH_FASTCALL | METH_KEYWORDS,
     "write_all($self, data, /)\n--\n\n"
     "Await sending all of ``data``.  Not cancel-safe: a cancelled call has\n"
     "sent an unknown prefix of ``data``, and nothing after it."},
    {NULL, NULL, 0, NULL},
};

/* stream_install(cls): the fast path's methods onto SocketStream. */
static PyObject *mod_stream_install(PyObject *module, PyObject *cls) {
    ZK_UNUSED(module);
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "stream_install needs a class");
        return NULL;
    }
    if (S.cls != NULL) {
        if (S.cls == cls)
            Py_RETURN_NONE;
        PyErr_SetString(PyExc_RuntimeError, "stream_install: another class is installed");
        return NULL;
    }
    const char *who = "stream_install";
    if (zk_slot_offset(cls, "_rtok", who, &S.off_rtok) < 0 ||
        zk_slot_offset(cls, "_wtok", who, &S.off_wtok) < 0 ||
        zk_slot_offset(cls, "_rbuf", who, &S.off_rbuf) < 0 ||
        zk_slot_offset(cls, "_closed", who, &S.off_closed) < 0 ||
        zk_slot_offset(cls, "_fd", who, &S.off_fd) < 0)
        return NULL;
    if (zk_install_methods(cls, stream_defs) < 0)
        return NULL;
    S.cls = Py_NewRef(cls);
    zk_immortalize(cls);
    Py_RETURN_NONE;
}

static PyMethodDef module_defs[] = {
    {"stream_install", mod_stream_install, METH_O,
     "stream_install(cls): give SocketStream its native read, readinto, write and write_all."},
    {NULL, NULL, 0, NULL},
};

/* ---- the Op's side ------------------------------------------------------------- */

static void give_back(zk_io_op *self) {
    if (self->token_held) {
        self->token_held = 0;
        token_give(self->stream_token);
    }
}

/* Run write_all's continuation as this Op's own: what it yields goes up
 * to the task, what it returns is ours. */
static PyObject *forward(zk_io_op *self) {
    PyObject *res;
    PySendResult r = PyIter_Send(self->stream_delegate, Py_None, &res);
    if (r == PYGEN_NEXT)
        return res;
    Py_CLEAR(self->stream_delegate);
    if (r == PYGEN_RETURN)
        return zk_return_value(res);
    return NULL;
}

PyObject *zk_stream_op_next(zk_io_op *self) {
    if (self->stream_delegate != NULL)
        return forward(self);
    if (zk_current_task == NULL || !zk_leaf_is_done(&self->leaf) || zk_coop_budget <= 0)
        return zk_leaf_iternext(&self->leaf);  /* suspend, or refuse */
    zk_coop_budget--;
    if (self->stream_delivered) {
        PyErr_Format(PyExc_RuntimeError, "%R was already awaited", (PyObject *)self);
        return NULL;
    }
    self->stream_delivered = 1;
    zk_leaf *l = &self->leaf;
    PyObject *value = l->value, *exc = l->exc;
    if (self->stream_mode == ZK_STREAM_WRITE_ALL && exc == NULL) {
        Py_ssize_t k = PyLong_AsSsize_t(value);
        if (k == -1 && PyErr_Occurred()) {
            give_back(self);
            return NULL;
        }
        if (k < self->stream_total) {
            /* The rest goes on in Python, which now owns the token. */
            PyObject *sent = PyLong_FromSsize_t(k);
            PyObject *coro = sent == NULL ? NULL
                : PyObject_CallMethodObjArgs(self->stream, S.str_write_rest, self->stream_data,
                                             sent, NULL);
            Py_XDECREF(sent);
            if (coro == NULL) {
                give_back(self);
                return NULL;
            }
            self->token_held = 0;
            self->stream_delegate = coro;
            return forward(self);
        }
    }
    give_back(self);
    if (zk_slot_load(self->stream, S.off_closed) == Py_False) {
        if (exc == NULL) {
            if (self->stream_mode == ZK_STREAM_WRITE_ALL)
                return NULL;  /* None */
            return zk_return_value(Py_NewRef(value));
        }
        if (!PyErr_GivenExceptionMatches(exc, PyExc_OSError))
            return zk_leaf_outcome(l);  /* Cancelled and the like, as they are */
    }
    /* Closed meanwhile, or an OSError: Python finishes the close and says
     * what the caller gets. */
    PyObject *r = PyObject_CallMethodObjArgs(
        self->stream, S.str_op_end, value ? value : Py_None, exc ? exc : Py_None,
        S.mode_int[self->stream_mode], NULL);
    if (r == NULL)
        return NULL;
    return zk_return_value(r);
}

/* The op's awaiting coroutine is being thrown into (its task cancelled or
 * interrupted while parked on the op) or closed: the outcome will never be
 * taken, so do here what taking it does -- give the token back, finish a
 * close that happened meanwhile -- or let write_all's rest do it. */
static int end_unawaited(zk_io_op *self) {
    if (self->stream_delivered || self->stream == NULL)
        return 0;
    self->stream_delivered = 1;
    give_back(self);
    if (zk_slot_load(self->stream, S.off_closed) != Py_False) {
        PyObject *r = PyObject_CallMethodNoArgs(self->stream, S.str_finish_close);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Op.throw(exc): re-raise exc (after the stream's end, above), or pass it
 * to write_all's rest, which decides. */
PyObject *zk_stream_op_throw(zk_io_op *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    if (self->stream_delegate != NULL) {
        PyObject *meth = PyObject_GetAttr(self->stream_delegate, S.str_throw);
        PyObject *r = meth ? PyObject_Vectorcall(meth, args, nargs, NULL) : NULL;
        Py_XDECREF(meth);
        if (r == NULL) {
            Py_CLEAR(self->stream_delegate);
            if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
                /* the rest returned after all: its value is ours */
                PyObject *exc = zk_fetch_exception();
                PyObject *v = PyObject_GetAttrString(exc, "value");
                Py_DECREF(exc);
                return v ? zk_return_value(v) : NULL;
            }
        }
        return r;
    }
    if (self->stream_mode != ZK_STREAM_NONE && end_unawaited(self) < 0)
        return NULL;
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        zk_raise_instance(typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    } else {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving "
                     "from BaseException, not %.100s", Py_TYPE(typ)->tp_name);
    }
    return NULL;
}

/* Op.close(): the awaiting coroutine is being closed. */
PyObject *zk_stream_op_close(zk_io_op *self) {
    if (self->stream_delegate != NULL) {
        PyObject *d = self->stream_delegate;
        self->stream_delegate = NULL;
        PyObject *r = PyObject_CallMethodNoArgs(d, S.str_close);
        Py_DECREF(d);
        return r;
    }
    if (self->stream_mode != ZK_STREAM_NONE && end_unawaited(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

void zk_stream_op_clear(zk_io_op *self) {
    /* Dropped unawaited: a close that waited for this op finishes now. */
    if (self->stream_delegate == NULL && end_unawaited(self) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    give_back(self);
    self->stream_mode = ZK_STREAM_NONE;
    Py_CLEAR(self->stream);
    Py_CLEAR(self->stream_token);
    Py_CLEAR(self->stream_data);
    Py_CLEAR(self->stream_delegate);
}

int zk_stream_op_traverse(zk_io_op *self, visitproc visit, void *arg) {
    Py_VISIT(self->stream);
    Py_VISIT(self->stream_data);
    Py_VISIT(self->stream_delegate);
    return 0;
}

int zk_stream_types_init(PyObject *module, zk_state *st) {
    S.st = st;
    token_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &token_spec, NULL);
    if (token_type == NULL || PyModule_AddObjectRef(module, "BusyToken", (PyObject *)token_type) < 0)
        return -1;
    zk_immortalize((PyObject *)token_type);
    if (PyModule_AddFunctions(module, module_defs) < 0)
        return -1;
    if (S.str_op_end == NULL) {
        S.str_op_end = PyUnicode_InternFromString("_op_end");
        S.str_write_rest = PyUnicode_InternFromString("_write_rest");
        S.str_finish_close = PyUnicode_InternFromString("_finish_close");
        S.str_throw = PyUnicode_InternFromString("throw");
        S.str_close = PyUnicode_InternFromString("close");
        S.str_read_slow = PyUnicode_InternFromString("_read_slow");
        S.str_readinto_slow = PyUnicode_InternFromString("_readinto_slow");
        S.str_write_slow = PyUnicode_InternFromString("_write_slow");
        S.str_write_all_slow = PyUnicode_InternFromString("_write_all_slow");
        S.default_chunk = PyLong_FromLong(65536);
        for (int i = 0; i < 4; i++)
            S.mode_int[i] = PyLong_FromLong(i);
        if (S.str_op_end == NULL || S.str_write_rest == NULL || S.str_finish_close == NULL ||
            S.str_throw == NULL || S.str_close == NULL || S.str_read_slow == NULL ||
            S.str_readinto_slow == NULL || S.str_write_slow == NULL ||
            S.str_write_all_slow == NULL || S.default_chunk == NULL)
            return -1;
    }
    return 0;
}
