/* port_testing.c -- _native_testing.TestPort: the completion port, driven
 * from pytest.
 *
 * Test-only.  A TestPort owns one zk_port, opened on the calling thread;
 * every method except wake() must be called on that thread (io_uring's
 * SINGLE_ISSUER makes the kernel enforce it).  Each submitted op is a
 * heap-allocated test_op: a zk_op plus its buffer (malloc'd for reads, the
 * caller's bytes pinned through the buffer protocol for writes).  Its
 * `complete` callback records (op_id, result, data) and frees the op; the
 * records are handed out by process() and close().
 */
#include "core/compat.h"
#include "io/port.h"
#include "testing/testing.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct TestPortObject TestPortObject;

typedef struct test_op {
    zk_op op; /* must be first: complete() casts back */
    TestPortObject *owner; /* borrowed: the port outlives its ops */
    long long id;
    int is_read;
    int has_view;
    Py_buffer view; /* write: the pinned bytes */
    char *rbuf;     /* read: malloc'd, freed in complete */
    struct test_op *next, *prev; /* owner's live list */
} test_op;

struct TestPortObject {
    PyObject_HEAD
    zk_port *port; /* NULL once closed; read atomically by wake() */
    PyObject *results; /* list of (op_id, result, data) */
    test_op *live;     /* submitted, `complete` not yet run */
    long long next_id;
};

static void live_unlink(TestPortObject *self, test_op *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        self->live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

static void test_op_free(test_op *t)
{
    if (t->has_view)
        PyBuffer_Release(&t->view);
    free(t->rbuf);
    PyMem_Free(t);
}

/* zk_op_complete_fn: runs attached, from process() or close(). */
static void test_op_complete(zk_op *zop, int64_t result)
{
    test_op *t = (test_op *)zop;
    TestPortObject *self = t->owner;
    PyObject *data;
    if (t->is_read && result >= 0)
        data = PyBytes_FromStringAndSize(t->rbuf, (Py_ssize_t)result);
    else
        data = Py_NewRef(Py_None);
    PyObject *rec = NULL;
    if (data) /* "N" steals data */
        rec = Py_BuildValue("(LLN)", t->id, (long long)result, data);
    if (!rec || PyList_Append(self->results, rec) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(rec);
    live_unlink(self, t);
    test_op_free(t);
}

/* OSError(err, strerror(err), what): Python picks the subclass from err
 * (PermissionError, BlockingIOError, ...) and shows `what` as the filename. */
static int raise_errno(int err, const char *what)
{
    PyObject *args = Py_BuildValue("(iss)", err, strerror(err), what);
    if (args) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return -1;
}

static zk_port *get_port(TestPortObject *self)
{
    zk_port *p = __atomic_load_n(&self->port, __ATOMIC_ACQUIRE);
    if (!p)
        PyErr_SetString(PyExc_ValueError, "TestPort is closed");
    return p;
}

/* ------------------------------------------------------------------------ */

static PyObject *TestPort_new(PyTypeObject *type, PyObject *args,
                              PyObject *kwds)
{
    static char *kwlist[] = {"backend", NULL};
    const char *name = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|s:TestPort", kwlist, &name))
        return NULL;
    zk_backend b;
    if (!strcmp(name, "auto"))
        b = ZK_BACKEND_AUTO;
    else if (!strcmp(name, "io_uring") || !strcmp(name, "uring"))
        b = ZK_BACKEND_URING;
    else if (!strcmp(name, "epoll"))
        b = ZK_BACKEND_EPOLL;
    else {
        PyErr_Format(PyExc_ValueError,
                     "unknown backend %s (auto, io_uring, epoll)", name);
        return NULL;
    }
    TestPortObject *self = (TestPortObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->results = PyList_New(0);
    if (!self->results) {
        Py_DECREF(self);
        return NULL;
    }
    int err = 0;
    zk_port *p = zk_port_open(b, &err);
    if (!p) {
        Py_DECREF(self);
        raise_errno(err, b == ZK_BACKEND_URING ? "cannot open io_uring port"
                                               : "cannot open port");
        return NULL;
    }
    __atomic_store_n(&self->port, p, __ATOMIC_RELEASE);
    return (PyObject *)self;
}

static PyObject *take_results(TestPortObject *self)
{
    PyObject *fresh = PyList_New(0);
    if (!fresh)
        return NULL;
    PyObject *out = self->results;
    self->results = fresh;
    return out;
}

static void close_port(TestPortObject *self)
{
    zk_port *p = self->port;
    if (!p)
        return;
    __atomic_store_n(&self->port, NULL, __ATOMIC_RELEASE);
    zk_port_close(p); /* runs test_op_complete for every live op */
}

static void TestPort_dealloc(TestPortObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    close_port(self);
    Py_CLEAR(self->results);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *submit_op(TestPortObject *self, test_op *t)
{
    zk_port *p = get_port(self);
    if (!p) {
        test_op_free(t);
        return NULL;
    }
    t->owner = self;
    t->id = ++self->next_id;
    t->op.complete = test_op_complete;
    int err = zk_port_submit(p, &t->op);
    if (err) {
        test_op_free(t);
        raise_errno(err, "zk_port_submit");
        return NULL;
    }
    t->next = self->live;
    if (self->live)
        self->live->prev = t;
    self->live = t;
    return PyLong_FromLongLong(t->id);
}

static PyObject *TestPort_submit_read(TestPortObject *self, PyObject *args,
                                      PyObject *kwds)
{
    static char *kwlist[] = {"fd", "nbytes", "offset", NULL};
    int fd;
    Py_ssize_t nbytes;
    long long offset = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in|L:submit_read", kwlist,
                                     &fd, &nbytes, &offset))
        return NULL;
    if (nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be >= 0");
        return NULL;
    }
    test_op *t = PyMem_Calloc(1, sizeof *t);
    if (!t)
        return PyErr_NoMemory();
    t->rbuf = malloc(nbytes ? (size_t)nbytes : 1);
    if (!t->rbuf) {
        PyMem_Free(t);
        return PyErr_NoMemory();
    }
    t->is_read = 1;
    t->op.opcode = ZK_OP_READ;
    t->op.fd = fd;
    t->op.buf = t->rbuf;
    t->op.len = (size_t)nbytes;
    t->op.offset = offset < 0 ? -1 : offset;
    return submit_op(self, t);
}

static PyObject *TestPort_submit_write(TestPortObject *self, PyObject *args,
                                       PyObject *kwds)
{
    static char *kwlist[] = {"fd", "data", "offset", NULL};
    int fd;
    long long offset = -1;
    test_op *t = PyMem_Calloc(1, sizeof *t);
    if (!t)
        return PyErr_NoMemory();
    /* y*: any bytes-like object, pinned until test_op_free. */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*|L:submit_write", kwlist,
                                     &fd, &t->view, &offset)) {
        PyMem_Free(t);
        return NULL;
    }
    t->has_view = 1;
    t->op.opcode = ZK_OP_WRITE;
    t->op.fd = fd;
    t->op.buf = t->view.buf;
    t->op.len = (size_t)t->view.len;
    t->op.offset = offset < 0 ? -1 : offset;
    return submit_op(self, t);
}

static PyObject *TestPort_cancel(TestPortObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    zk_port *p = get_port(self);
    if (!p)
        return NULL;
    for (test_op *t = self->live; t; t = t->next) {
        if (t->id == id) {
            zk_port_cancel(p, &t->op);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_KeyError, "no op %lld in flight", id);
    return NULL;
}

static PyObject *TestPort_wait(TestPortObject *self, PyObject *args)
{
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O:wait", &timeout))
        return NULL;
    int64_t ns = -1;
    if (timeout != Py_None) {
        double s = PyFloat_AsDouble(timeout);
        if (s == -1.0 && PyErr_Occurred())
            return NULL;
        if (s < 0)
            ns = -1;
        else if (s > 1e9)
            ns = (int64_t)1e18;
        else
            ns = (int64_t)(s * 1e9);
    }
    zk_port *p = get_port(self);
    if (!p)
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = zk_port_wait(p, ns);
    Py_END_ALLOW_THREADS
    if (err)
        return raise_errno(err, "zk_port_wait"), NULL;
    Py_RETURN_NONE;
}

static PyObject *TestPort_process(TestPortObject *self, PyObject *Py_UNUSED(ig))
{
    zk_port *p = get_port(self);
    if (!p)
        return NULL;
    zk_port_process(p);
    return take_results(self);
}

static PyObject *TestPort_wake(TestPortObject *self, PyObject *Py_UNUSED(ig))
{
    /* Any thread.  Must not race with close() (the contract's "between open
     * and close"). */
    zk_port *p = __atomic_load_n(&self->port, __ATOMIC_ACQUIRE);
    if (p)
        zk_port_wake(p);
    Py_RETURN_NONE;
}

static PyObject *TestPort_inflight(TestPortObject *self,
                                   PyObject *Py_UNUSED(ig))
{
    zk_port *p = get_port(self);
    if (!p)
        return NULL;
    return PyLong_FromSize_t(zk_port_inflight(p));
}

static PyObject *TestPort_close(TestPortObject *self, PyObject *Py_UNUSED(ig))
{
    close_port(self);
    return take_results(self);
}

static PyObject *TestPort_uring_available(PyObject *Py_UNUSED(cls),
                                          PyObject *Py_UNUSED(ig))
{
    return PyBool_FromLong(zk_port_uring_available());
}

static PyObject *TestPort_get_backend(TestPortObject *self,
                                      void *Py_UNUSED(closure))
{
    zk_port *p = get_port(self);
    if (!p)
        return NULL;
    return PyUnicode_FromString(zk_port_backend_name(zk_port_backend(p)));
}

static PyObject *TestPort_get_closed(TestPortObject *self,
                                     void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->port == NULL);
}

static PyMethodDef TestPort_methods[] = {
    {"submit_read", (PyCFunction)(void (*)(void))TestPort_submit_read,
     METH_VARARGS | METH_KEYWORDS,
     "submit_read(fd, nbytes, offset=-1) -> op id"},
    {"submit_write", (PyCFunction)(void (*)(void))TestPort_submit_write,
     METH_VARARGS | METH_KEYWORDS,
     "submit_write(fd, data, offset=-1) -> op id"},
    {"cancel", (PyCFunction)TestPort_cancel, METH_O, "cancel(op_id)"},
    {"wait", (PyCFunction)TestPort_wait, METH_VARARGS,
     "wait(timeout_seconds=None): block (detached) until something is ready"},
    {"process", (PyCFunction)TestPort_process, METH_NOARGS,
     "process() -> [(op_id, result, data_or_None)]"},
    {"wake", (PyCFunction)TestPort_wake, METH_NOARGS,
     "wake(): interrupt wait(); callable from any thread"},
    {"inflight", (PyCFunction)TestPort_inflight, METH_NOARGS,
     "inflight() -> number of ops not yet completed"},
    {"close", (PyCFunction)TestPort_close, METH_NOARGS,
     "close() -> completions of the ops that were still in flight"},
    {"uring_available", (PyCFunction)TestPort_uring_available,
     METH_NOARGS | METH_STATIC, "uring_available() -> bool"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef TestPort_getset[] = {
    {"backend", (getter)TestPort_get_backend, NULL, "resolved backend name",
     NULL},
    {"closed", (getter)TestPort_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot TestPort_slots[] = {
    {Py_tp_new, TestPort_new},
    {Py_tp_dealloc, TestPort_dealloc},
    {Py_tp_methods, TestPort_methods},
    {Py_tp_getset, TestPort_getset},
    {Py_tp_doc, "TestPort(backend='auto'): a completion port for tests"},
    {0, NULL},
};

static PyType_Spec TestPort_spec = {
    .name = "zokio._native_testing.TestPort",
    .basicsize = sizeof(TestPortObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = TestPort_slots,
};

int zk_port_testing_add(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &TestPort_spec, NULL);
    if (!type)
        return -1;
    int r = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return r;
}
