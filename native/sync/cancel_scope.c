/* cancel_scope.c -- the hot path of zokio.CancelScope (zokio/_scope.py):
 * `zokio.timeout(s)` and entering and leaving a scope.
 *
 * A server wraps every read in `async with zokio.timeout(idle)`.  Written
 * in Python that is a scope object with five fields, a native TimeoutScope
 * and two coroutines (__aenter__, __aexit__) per request, about 3 us on
 * 3.13t.  scope_install(CancelScope) replaces __enter__, __exit__,
 * __aenter__ and __aexit__ with native methods, and scope_timeout(s)
 * builds the object in C: what is left is the TimeoutScope's own arm and
 * disarm (core/leaf.c).  The async forms return already-complete
 * awaitables (sync/semaphore.c's Ready), not coroutines.  A scope that
 * fired goes to CancelScope._exit_fired in Python, which decides what its
 * exit catches.
 *
 * CancelScope's fields are __slots__; their offsets come from the class's
 * member descriptors.  They are set when the scope is made and read here
 * by the one task that enters it.
 */
#include "sync/cancel_scope.h"
#include "sync/waitlist.h"
#include "core/leaf.h"
#include "core/class_glue.h"

#include <math.h>

static struct {
    zk_state *st;
    PyTypeObject *cls;      /* CancelScope (strong, immortal) */
    Py_ssize_t off_ns, off_relative, off_caught, off_fired, off_fail;
    PyObject *str_exit_fired;
    PyObject *timed_out;    /* "timed out" */
} S;

static inline void set_slot(PyObject *self, Py_ssize_t off, PyObject *v) {
    /* a fresh object, not yet seen by another thread */
    PyObject **p = (PyObject **)((char *)self + off);
    PyObject *old = *p;
    *p = v;
    Py_XDECREF(old);
}

/* The scope's native TimeoutScope, checked (a private field, but a
 * subclass could have replaced it). */
static zk_timeout_scope *native_of(PyObject *self) {
    PyObject *ns = zk_slot_load(self, S.off_ns);
    if (ns == NULL || !Py_IS_TYPE(ns, S.st->TimeoutScopeType)) {
        PyErr_SetString(PyExc_RuntimeError, "this CancelScope has no native scope");
        return NULL;
    }
    return (zk_timeout_scope *)ns;
}

static int enter(PyObject *self) {
    zk_timeout_scope *ns = native_of(self);
    if (ns == NULL)
        return -1;
    return zk_scope_arm(ns, zk_slot_load(self, S.off_relative));  /* *_after: counts from entry */
}

/* The exit's answer (True: the exception is caught), a new reference. */
static PyObject *leave(PyObject *self, PyObject *exc) {
    zk_timeout_scope *ns = native_of(self);
    if (ns == NULL)
        return NULL;
    int fired = zk_scope_disarm(ns);
    if (fired < 0)
        return NULL;
    if (!fired)
        return Py_NewRef(Py_False);  /* never cancelled: nothing here can be ours */
    return PyObject_CallMethodOneArg(self, S.str_exit_fired, exc);
}

static PyObject *scope_enter(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self) < 0)
        return NULL;
    return Py_NewRef(self);
}

static PyObject *scope_aenter(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self) < 0)
        return NULL;
    return zk_sync_ready(self);
}

static int exit_args(Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__ expects 3 arguments, got %zd", nargs);
        return -1;
    }
    return 0;
}

static PyObject *scope_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (exit_args(nargs) < 0)
        return NULL;
    return leave(self, args[1]);
}

static PyObject *scope_aexit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (exit_args(nargs) < 0)
        return NULL;
    PyObject *r = leave(self, args[1]);
    if (r == NULL)
        return NULL;
    PyObject *ready = zk_sync_ready(r);
    Py_DECREF(r);
    return ready;
}

static PyMethodDef scope_defs[] = {
    {"__enter__", scope_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))scope_exit, METH_FASTCALL, NULL},
    {"__aenter__", scope_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))scope_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

/* scope_timeout(seconds): zokio.timeout(seconds), a fail_after scope whose
 * deadline counts from entry (None: no deadline). */
static PyObject *mod_scope_timeout(PyObject *module, PyObject *seconds) {
    ZK_UNUSED(module);
    if (S.cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "scope_install was not called");
        return NULL;
    }
    if (seconds != Py_None) {
        if (PyFloat_CheckExact(seconds)) {
            if (isnan(PyFloat_AS_DOUBLE(seconds))) {
                PyErr_SetString(PyExc_ValueError, "timeout() seconds is NaN");
                return NULL;
            }
        } else if (PyBool_Check(seconds) || !(PyLong_Check(seconds) || PyFloat_Check(seconds))) {
            PyErr_Format(PyExc_TypeError, "timeout() expects seconds as a number, not %.100s",
                         Py_TYPE(seconds)->tp_name);
            return NULL;
        } else if (PyFloat_Check(seconds) && isnan(PyFloat_AsDouble(seconds))) {
            PyErr_SetString(PyExc_ValueError, "timeout() seconds is NaN");
            return NULL;
        }
    }
    PyObject *ns = zk_scope_new(S.st->TimeoutScopeType, INFINITY, NULL, 0);
    if (ns == NULL)
        return NULL;
    PyObject *self = S.cls->tp_alloc(S.cls, 0);
    if (self == NULL) {
        Py_DECREF(ns);
        return NULL;
    }
    set_slot(self, S.off_ns, ns);
    set_slot(self, S.off_caught, Py_NewRef(Py_False));
    set_slot(self, S.off_fired, Py_NewRef(Py_False));
    if (seconds == Py_None) {
        set_slot(self, S.off_relative, Py_NewRef(Py_None));
        set_slot(self, S.off_fail, Py_NewRef(S.timed_out));
    } else {
        set_slot(self, S.off_relative, Py_NewRef(seconds));
        set_slot(self, S.off_fail, Py_NewRef(seconds));
    }
    return self;
}

/* scope_install(CancelScope) */
static PyObject *mod_scope_install(PyObject *module, PyObject *cls) {
    ZK_UNUSED(module);
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "scope_install needs a class");
        return NULL;
    }
    if (S.cls != NULL) {
        if ((PyObject *)S.cls == cls)
            Py_RETURN_NONE;
        PyErr_SetString(PyExc_RuntimeError, "scope_install: another class is installed");
        return NULL;
    }
    if (zk_slot_offset(cls, "_ns", "scope_install", &S.off_ns) < 0 ||
        zk_slot_offset(cls, "_relative", "scope_install", &S.off_relative) < 0 ||
        zk_slot_offset(cls, "_caught", "scope_install", &S.off_caught) < 0 ||
        zk_slot_offset(cls, "_fired", "scope_install", &S.off_fired) < 0 ||
        zk_slot_offset(cls, "_fail", "scope_install", &S.off_fail) < 0)
        return NULL;
    if (zk_install_methods(cls, scope_defs) < 0)
        return NULL;
    S.cls = (PyTypeObject *)Py_NewRef(cls);
    zk_immortalize(cls);
    Py_RETURN_NONE;
}

static PyMethodDef module_defs[] = {
    {"scope_install", mod_scope_install, METH_O,
     "scope_install(CancelScope): native __enter__/__exit__/__aenter__/__aexit__."},
    {"scope_timeout", mod_scope_timeout, METH_O,
     "timeout(seconds)\n--\n\n"
     "``async with zokio.timeout(s):`` -- fail_after(s): TimeoutError if the\n"
     "block is still running after ``s`` seconds (counted from entry).\n"
     "``None``: no deadline (the scope can still be cancelled)."},
    {NULL, NULL, 0, NULL},
};

int zk_cancel_scope_init(PyObject *module, zk_state *st) {
    S.st = st;
    if (S.str_exit_fired == NULL) {
        S.str_exit_fired = PyUnicode_InternFromString("_exit_fired");
        S.timed_out = PyUnicode_InternFromString("timed out");
        if (S.str_exit_fired == NULL || S.timed_out == NULL)
            return -1;
    }
    return PyModule_AddFunctions(module, module_defs);
}
