/* leaf.c -- what a zokio task can await.
 *
 * A coroutine suspends by yielding a leaf; the worker then registers the task
 * as the leaf's waker (zk_awaitable_register).  Leaves:
 *   YieldNow      one shared instance; resumes after one trip through the queue
 *   JoinHandle    (task.c) the awaiter becomes a waiter of the task
 *   Oneshot       a cell completed once, from any thread (spawn_blocking,
 *                 user code, later sync primitives)
 *   Sleep         a timer in the current worker's wheel
 *   Op            (io/op_leaf.c) an I/O op record in the current worker's
 *                 completion port
 *   TimeoutScope  not awaited: a timer that interrupts its task
 * Each kind's ops table (core/leaf.h) says how the worker registers, checks
 * and unregisters a task on it.
 *
 * Waker handshake (leaf header `waker` + `done`):
 *   registrar:  CAS waker NULL -> task;   then load done (seq_cst)
 *   completer:  store done = DONE (seq_cst); then exchange waker -> NULL
 * Whatever the interleaving, at least one side sees the other, and the
 * atomic exchange lets exactly one of them take the task reference and wake
 * it.  A wake the task does not need (it moved on) is filtered by the worker
 * with zk_awaitable_ready().
 */
#include "core/leaf.h"
#include "core/sched.h"
#include "core/task.h"
#include <math.h>

void zk_leaf_init(zk_leaf *l) {
    atomic_init(&l->waker, NULL);
    atomic_init(&l->done, ZK_LEAF_PENDING);
    l->value = NULL;
    l->exc = NULL;
}

int zk_leaf_complete(zk_state *st, zk_leaf *leaf, PyObject *value, PyObject *exc) {
    ZK_UNUSED(st);
    int expected = ZK_LEAF_PENDING;
    if (!atomic_compare_exchange_strong_explicit(&leaf->done, &expected, ZK_LEAF_COMPLETING,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        Py_XDECREF(value);
        Py_XDECREF(exc);
        return 1;
    }
    leaf->value = value;
    leaf->exc = exc;
    /* seq_cst: ordered against the registrar's CAS on waker (see top). */
    atomic_store_explicit(&leaf->done, ZK_LEAF_DONE, memory_order_seq_cst);
    zk_task *w = atomic_exchange_explicit(&leaf->waker, NULL, memory_order_seq_cst);
    if (w != NULL) {
        zk_task_wake(w);
        Py_DECREF(w);
    }
    return 0;
}

/* Returns 0, or -1 with RuntimeError if another task already waits here. */
int zk_leaf_register_waker(zk_leaf *leaf, zk_task *task) {
    zk_task *expected = NULL;
    Py_INCREF(task);
    if (!atomic_compare_exchange_strong_explicit(&leaf->waker, &expected, task,
                                                 memory_order_seq_cst, memory_order_seq_cst)) {
        Py_DECREF(task);
        PyErr_Format(PyExc_RuntimeError,
                     "%R is already awaited by another task", (PyObject *)leaf);
        return -1;
    }
    if (atomic_load_explicit(&leaf->done, memory_order_seq_cst) == ZK_LEAF_DONE) {
        zk_task *w = atomic_exchange_explicit(&leaf->waker, NULL, memory_order_seq_cst);
        if (w != NULL) {
            zk_task_wake(w);
            Py_DECREF(w);
        }
    }
    return 0;
}

void zk_leaf_unregister_waker(zk_leaf *leaf) {
    zk_task *w = atomic_exchange_explicit(&leaf->waker, NULL, memory_order_seq_cst);
    Py_XDECREF(w);
}

/* Returning a value from __next__ means raising StopIteration(value), and
 * building that exception (an args tuple, the instance, its init) costs as
 * much as the rest of a completed await.  Each thread keeps one
 * StopIteration and raises it again with its `value` swapped, when nothing
 * but the cache holds it (the await that catches it -- SEND -- takes the
 * value and drops the exception at once; an exception someone kept, e.g.
 * by calling __next__ by hand, is left alone and replaced).  Its traceback,
 * context and cause are reset before each reuse.  The last value returned
 * on a thread stays referenced by the cache until the next one.  A
 * thread-local reference, not a module global: it belongs to the thread,
 * which is what owns an object's refcount on 3.13t.  Setting `value`
 * directly also returns a tuple or an exception instance as itself, which
 * PyErr_SetObject would unpack or raise. */
static ZK_TLS PyObject *stop_cache;

PyObject *zk_return_value(PyObject *v) {
    if (v == Py_None) {
        Py_DECREF(v);
        return NULL;
    }
    PyObject *e = stop_cache;
    if (e == NULL || Py_REFCNT(e) != 1) {
        PyObject *fresh = PyObject_CallNoArgs(PyExc_StopIteration);
        if (fresh == NULL) {
            Py_DECREF(v);
            return NULL;
        }
        stop_cache = fresh;
        Py_XDECREF(e);  /* someone else still holds the old one */
        e = fresh;
    } else {
        PyException_SetTraceback(e, Py_None);
        PyException_SetContext(e, NULL);
        PyException_SetCause(e, NULL);
    }
    PyStopIterationObject *si = (PyStopIterationObject *)e;
    PyObject *old = si->value;
    si->value = v;  /* steals */
    Py_XDECREF(old);
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(Py_NewRef(e));
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(e)), Py_NewRef(e), NULL);
#endif
    return NULL;
}

void zk_return_value_release(void) {
    PyObject *e = stop_cache;
    if (e != NULL && Py_REFCNT(e) == 1) {
        PyStopIterationObject *si = (PyStopIterationObject *)e;
        Py_CLEAR(si->value);
    }
}

void zk_return_value_drop(void) {
    Py_CLEAR(stop_cache);
}

/* The value of a completed leaf, as __next__'s return: StopIteration(value)
 * or the stored exception (leaf.h). */
PyObject *zk_leaf_outcome(zk_leaf *l) {
    if (l->exc != NULL) {
        zk_raise_instance(l->exc);
        return NULL;
    }
    PyObject *r = l->value;
    if (r == NULL || r == Py_None)
        return NULL;
    return zk_return_value(Py_NewRef(r));
}

static PyObject *outside_task_error(PyObject *self) {
    PyErr_Format(PyExc_RuntimeError,
                 "%R must be awaited inside a zokio task (no zokio runtime is "
                 "running this coroutine)", self);
    return NULL;
}

/* __next__ shared by Oneshot, Sleep and Op: the outcome once done (while the
 * cooperative budget lasts), else yield the leaf to the worker. */
PyObject *zk_leaf_iternext(zk_leaf *self) {
    if (zk_current_task == NULL) {
        /* Closing an abandoned task's coroutine: suspend (see task.c). */
        if (zk_abandoning)
            return Py_NewRef(self);
        return outside_task_error((PyObject *)self);
    }
    if (zk_leaf_is_done(self) && zk_coop_budget-- > 0)
        return zk_leaf_outcome(self);
    zk_suspending = (PyObject *)self;
    return Py_NewRef(self);
}

PyObject *zk_leaf_await(PyObject *self) {
    return Py_NewRef(self);
}

int zk_leaf_traverse(zk_leaf *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    Py_VISIT(self->exc);
    return 0;
}

static void leaf_clear_fields(zk_leaf *self) {
    Py_CLEAR(self->value);
    Py_CLEAR(self->exc);
    zk_task *w = atomic_exchange_explicit(&self->waker, NULL, memory_order_relaxed);
    Py_XDECREF(w);
}

int zk_leaf_clear(zk_leaf *self) {
    leaf_clear_fields(self);
    return 0;
}

static PyObject *leaf_done_method(zk_leaf *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(zk_leaf_is_done(self));
}

/* ---- YieldNow ------------------------------------------------------------ */

/* One shared instance.  Per-await state lives in the task (yield_resume),
 * so yielding allocates nothing. */
static PyObject *yield_iternext(PyObject *self) {
    zk_task *t = zk_current_task;
    if (t == NULL) {
        if (zk_abandoning)
            return Py_NewRef(self);
        return outside_task_error(self);
    }
    if (t->yield_resume) {
        t->yield_resume = 0;
        return NULL;
    }
    zk_suspending = self;
    return Py_NewRef(self);
}

static PyObject *yield_repr(PyObject *Py_UNUSED(self)) {
    return PyUnicode_FromString("<zokio.yield_now>");
}

static void plain_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot yield_slots[] = {
    {Py_tp_dealloc, plain_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, yield_iternext},
    {Py_am_await, zk_leaf_await},
    {Py_tp_repr, yield_repr},
    {0, NULL},
};

static PyType_Spec yield_spec = {
    .name = "zokio._native.YieldNow",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = yield_slots,
};

/* ---- Oneshot -------------------------------------------------------------- */

static PyObject *oneshot_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Oneshot() takes no arguments");
        return NULL;
    }
    zk_leaf *self = PyObject_GC_New(zk_leaf, type);
    if (self == NULL)
        return NULL;
    zk_leaf_init(self);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static zk_state *state_of_type(PyTypeObject *tp) {
    return (zk_state *)PyType_GetModuleState(tp);
}

static PyObject *oneshot_set(zk_leaf *self, PyObject *value) {
    int r = zk_leaf_complete(state_of_type(Py_TYPE(self)), self, Py_NewRef(value), NULL);
    return PyBool_FromLong(r == 0);
}

static PyObject *oneshot_set_exception(zk_leaf *self, PyObject *exc) {
    if (PyExceptionClass_Check(exc)) {
        exc = PyObject_CallNoArgs(exc);
        if (exc == NULL)
            return NULL;
    } else if (PyExceptionInstance_Check(exc)) {
        Py_INCREF(exc);
    } else {
        PyErr_Format(PyExc_TypeError, "set_exception() needs an exception, not %.100s",
                     Py_TYPE(exc)->tp_name);
        return NULL;
    }
    if (PyErr_GivenExceptionMatches(exc, PyExc_StopIteration)) {
        /* Raised out of `await`, it would end the awaiting coroutine's
         * frame as a return (PEP 479 territory): refuse it, as asyncio's
         * Future.set_exception does. */
        Py_DECREF(exc);
        PyErr_SetString(PyExc_TypeError,
                        "StopIteration interacts badly with generators and cannot be "
                        "raised into a Oneshot");
        return NULL;
    }
    int r = zk_leaf_complete(state_of_type(Py_TYPE(self)), self, NULL, exc);
    return PyBool_FromLong(r == 0);
}

static PyObject *oneshot_repr(zk_leaf *self) {
    return PyUnicode_FromFormat("<zokio.Oneshot %s>", zk_leaf_is_done(self) ? "done" : "pending");
}

void zk_leaf_dealloc(zk_leaf *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* A leaf's value may be another leaf holding another (a chain of
     * Oneshots each completed with the next): freeing the head would
     * recurse once per link and overflow the C stack.  The trashcan defers
     * the deep part, as CPython's own containers do. */
    Py_TRASHCAN_BEGIN(self, zk_leaf_dealloc)
    leaf_clear_fields(self);
    tp->tp_free(self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyMethodDef oneshot_methods[] = {
    {"set", (PyCFunction)oneshot_set, METH_O,
     "Complete with a value; wakes the awaiting task.  Any thread.  Returns "
     "False if the cell was already complete."},
    {"set_exception", (PyCFunction)oneshot_set_exception, METH_O,
     "Complete with an exception raised in the awaiting task.  Any thread."},
    {"done", (PyCFunction)leaf_done_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot oneshot_slots[] = {
    {Py_tp_doc, "A one-shot cell: completed once from any thread, awaited by one task."},
    {Py_tp_new, oneshot_new},
    {Py_tp_dealloc, zk_leaf_dealloc},
    {Py_tp_traverse, zk_leaf_traverse},
    {Py_tp_clear, zk_leaf_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, zk_leaf_iternext},
    {Py_am_await, zk_leaf_await},
    {Py_tp_methods, oneshot_methods},
    {Py_tp_repr, oneshot_repr},
    {0, NULL},
};

static PyType_Spec oneshot_spec = {
    .name = "zokio.Oneshot",
    .basicsize = sizeof(zk_leaf),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = oneshot_slots,
};

/* ---- Sleep ------------------------------------------------------------------ */

static PyObject *sleep_repr(zk_sleep *self) {
    return PyUnicode_FromFormat("<zokio.sleep %s>", zk_leaf_is_done(&self->leaf) ? "done" : "pending");
}

/* Sleep is not a GC type: it refers to nothing the collector could find a
 * cycle through (its value is None; its waker reference is not visited by
 * any leaf).  Every sleeping task would otherwise add one more object to
 * each stop-the-world collection, and a burst of 100k sleeps made those
 * pauses the largest part of the first burst's lateness. */
static void sleep_dealloc(zk_sleep *self) {
    /* A filed timer holds a reference to its Sleep, so it cannot be linked. */
    PyTypeObject *tp = Py_TYPE(self);
    leaf_clear_fields(&self->leaf);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot sleep_slots[] = {
    {Py_tp_dealloc, sleep_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, zk_leaf_iternext},
    {Py_am_await, zk_leaf_await},
    {Py_tp_repr, sleep_repr},
    {0, NULL},
};

static PyType_Spec sleep_spec = {
    .name = "zokio._native.Sleep",
    .basicsize = sizeof(zk_sleep),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sleep_slots,
};

PyObject *zk_sleep_new(zk_state *st, int64_t deadline_ns) {
    zk_sleep *self = PyObject_New(zk_sleep, st->SleepType);
    if (self == NULL)
        return NULL;
    zk_leaf_init(&self->leaf);
    memset(&self->timer, 0, sizeof(self->timer));
    self->timer.entry.tag = ZK_TIMER_SLEEP;
    self->timer.deadline_ns = deadline_ns;
    return (PyObject *)self;
}

/* ---- TimeoutScope: a cancel scope ------------------------------------------
 *
 * The native half of zokio.CancelScope (and of move_on_*, fail_*, timeout):
 * arm() on entry, disarm() on exit, cancel() and the deadline from any
 * thread.  What a cancelled scope does to its task is in task.c ("cancel
 * scopes"). */

static void scope_dealloc(zk_timeout_scope *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    zk_task *t = atomic_exchange_explicit(&self->task, NULL, memory_order_relaxed);
    Py_XDECREF(t);
    Py_CLEAR(self->outer);
    Py_CLEAR(self->token);
    zk_mutex_destroy(&self->dl_lock);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int scope_traverse(zk_timeout_scope *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT((PyObject *)atomic_load_explicit(&self->task, memory_order_relaxed));
    Py_VISIT(self->outer);
    Py_VISIT(self->token);
    return 0;
}

static int scope_clear(zk_timeout_scope *self) {
    zk_task *t = atomic_exchange_explicit(&self->task, NULL, memory_order_relaxed);
    Py_XDECREF(t);
    Py_CLEAR(self->outer);
    Py_CLEAR(self->token);
    return 0;
}

static inline int64_t deadline_to_ns(double deadline) {
    double ns = deadline * 1e9;
    if (ns > 9.0e18)
        return INT64_MAX;  /* inf and "never" */
    if (ns < -9.0e18)
        return INT64_MIN + 1;
    return (int64_t)ns;
}

static int parse_deadline(PyObject *value, double *out) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a cancel scope's deadline");
        return -1;
    }
    if (PyBool_Check(value) || !(PyFloat_Check(value) || PyLong_Check(value))) {
        PyErr_Format(PyExc_TypeError, "a deadline must be a number (zokio.monotonic() "
                     "seconds), not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(d)) {
        PyErr_SetString(PyExc_ValueError, "timeout deadline is NaN");
        return -1;
    }
    *out = d;
    return 0;
}

static PyObject *scope_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"deadline", "outer", "shield", NULL};
    PyObject *deadline_obj;
    PyObject *outer = Py_None;
    int shield = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|Op:TimeoutScope", kwlist,
                                     &deadline_obj, &outer, &shield))
        return NULL;
    if (outer != Py_None && !Py_IS_TYPE(outer, type)) {
        PyErr_Format(PyExc_TypeError, "outer must be a TimeoutScope or None, not %.100s",
                     Py_TYPE(outer)->tp_name);
        return NULL;
    }
    double deadline;
    if (parse_deadline(deadline_obj, &deadline) < 0)
        return NULL;
    return zk_scope_new(type, deadline, outer != Py_None ? outer : NULL, shield);
}

PyObject *zk_scope_new(PyTypeObject *type, double deadline, PyObject *outer, int shield) {
    zk_timeout_scope *self = PyObject_GC_New(zk_timeout_scope, type);
    if (self == NULL)
        return NULL;
    memset(&self->timer, 0, sizeof(self->timer));
    self->timer.entry.tag = ZK_TIMER_TIMEOUT;
    self->timer.deadline_ns = deadline_to_ns(deadline);
    atomic_init(&self->task, NULL);
    self->outer = Py_XNewRef(outer);
    self->token = NULL;
    self->arm_worker = NULL;
    self->deadline = deadline;
    self->scope_state = ZK_SCOPE_IDLE;
    self->shield = (uint8_t)shield;
    atomic_init(&self->cancel_called, 0);
    atomic_init(&self->rearm, 0);
    self->dl_closed = 0;
    zk_mutex_init(&self->dl_lock);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static inline zk_task *scope_task_of(zk_timeout_scope *self) {
    return atomic_load_explicit(&self->task, memory_order_seq_cst);
}

int zk_scope_file_timer(zk_worker *w, zk_timeout_scope *sc) {
    int due = 0;
    zk_mutex_lock(&sc->dl_lock);
    if (!sc->dl_closed) {
        zk_worker_cancel_timer(w, &sc->timer);
        int64_t ns = __atomic_load_n(&sc->timer.deadline_ns, __ATOMIC_RELAXED);
        if (ns <= zk_monotonic_ns())
            due = 1;
        else if (ns != INT64_MAX && !zk_worker_add_timer(w, &sc->timer))
            due = 1;
    }
    zk_mutex_unlock(&sc->dl_lock);
    return due;
}

/* arm(relative=None): enter the scope in the current task: it becomes the
 * innermost scope of the task's context, linked to the enclosing one.
 * `relative` (seconds): the deadline is now + relative (move_on_after and
 * fail_after count from entry). */
int zk_scope_arm(zk_timeout_scope *self, PyObject *relative) {
    double rel = 0.0;
    int has_rel = relative != NULL && relative != Py_None;
    if (has_rel && parse_deadline(relative, &rel) < 0)
        return -1;
    zk_worker *w = zk_current_worker;
    zk_task *t = zk_current_task;
    if (w == NULL || t == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a zokio cancel scope (zokio.timeout, CancelScope, move_on_after, "
                        "fail_after...) must be entered inside a zokio task");
        return -1;
    }
    if (scope_task_of(self) != NULL || self->token != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cancel scope was already entered (a scope is entered once)");
        return -1;
    }
    zk_state *st = state_of_type(Py_TYPE(self));
    if (has_rel) {
        int64_t now = zk_monotonic_ns();
        double rel_ns = rel * 1e9;
        int64_t ns = rel_ns >= (double)(INT64_MAX - now) ? INT64_MAX
                     : now + (rel_ns > 0 ? (int64_t)rel_ns : 0);
        zk_mutex_lock(&self->dl_lock);
        self->deadline = ns == INT64_MAX ? INFINITY : (double)ns / 1e9;
        __atomic_store_n(&self->timer.deadline_ns, ns, __ATOMIC_RELAXED);
        zk_mutex_unlock(&self->dl_lock);
    }
    if (self->outer == NULL) {
        PyObject *cur = NULL;
        if (PyContextVar_Get(st->scope_var, NULL, &cur) < 0)
            return -1;
        self->outer = cur;  /* NULL if none */
    }
    PyObject *token = PyContextVar_Set(st->scope_var, (PyObject *)self);
    if (token == NULL)
        return -1;
    self->token = token;
    self->arm_worker = w;
    self->scope_state = ZK_SCOPE_ARMED;  /* not yet shared: no lock needed */
    atomic_fetch_or_explicit(&t->state, ZK_SCOPED, memory_order_relaxed);
    /* Publish the task, then look at cancel_called: cancel() does the
     * opposite (seq_cst both), so a cancel racing the entry is seen by one
     * of the two, or both (firing twice is harmless). */
    Py_INCREF(t);
    atomic_store_explicit(&self->task, t, memory_order_seq_cst);
    int due = atomic_load_explicit(&self->cancel_called, memory_order_seq_cst) != 0;
    if (!due)
        due = zk_scope_file_timer(w, self);
    if (due)
        zk_task_fire_scope(t, self);
    return 0;
}

static PyObject *scope_arm(zk_timeout_scope *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "arm() takes at most one argument");
        return NULL;
    }
    if (zk_scope_arm(self, nargs == 1 ? args[0] : NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* disarm() -> True if the scope was cancelled (deadline or cancel()). */
int zk_scope_disarm(zk_timeout_scope *self) {
    zk_task *t = scope_task_of(self);
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this cancel scope was never entered");
        return -1;
    }
    zk_mutex_lock(&self->dl_lock);
    self->dl_closed = 1;
    zk_worker_cancel_timer(zk_current_worker, &self->timer);
    zk_mutex_unlock(&self->dl_lock);
    int fired = zk_task_disarm_scope(t, self);
    PyObject *token = self->token;
    if (token != NULL) {
        self->token = NULL;
        zk_state *st = state_of_type(Py_TYPE(self));
        /* Fails only when exited in another context than entered (closing
         * an abandoned coroutine): that context is not ours to change. */
        if (PyContextVar_Reset(st->scope_var, token) < 0)
            PyErr_Clear();
        Py_DECREF(token);
    }
    return fired;
}

static PyObject *scope_disarm(zk_timeout_scope *self, PyObject *Py_UNUSED(ignored)) {
    int fired = zk_scope_disarm(self);
    return fired < 0 ? NULL : PyBool_FromLong(fired);
}

/* cancel(): any thread, any time; idempotent. */
static PyObject *scope_cancel(zk_timeout_scope *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store_explicit(&self->cancel_called, 1, memory_order_seq_cst);
    zk_task *t = scope_task_of(self);
    if (t != NULL && zk_task_fire_scope(t, self)) {
        /* Its timer has nothing left to do. */
        zk_mutex_lock(&self->dl_lock);
        zk_worker_cancel_timer(zk_current_worker, &self->timer);
        zk_mutex_unlock(&self->dl_lock);
    }
    Py_RETURN_NONE;
}

static PyObject *scope_get_deadline(zk_timeout_scope *self, void *Py_UNUSED(c)) {
    zk_mutex_lock(&self->dl_lock);
    double d = self->deadline;
    zk_mutex_unlock(&self->dl_lock);
    return PyFloat_FromDouble(d);
}

/* Move the deadline (any thread).  An entered scope's timer is cancelled
 * and filed again: in the calling worker's wheel when that worker belongs
 * to the task's runtime, else by the task's own runner at its next poll
 * (it is woken for that; a plain thread cannot file a timer, and a parked
 * worker would not see one filed for it).  A deadline that has already
 * passed cancels the scope at once.  A scope that was cancelled stays
 * cancelled. */
static int scope_set_deadline(zk_timeout_scope *self, PyObject *value, void *Py_UNUSED(c)) {
    double d;
    if (parse_deadline(value, &d) < 0)
        return -1;
    zk_task *t = scope_task_of(self);
    zk_worker *cw = zk_current_worker;
    int direct = t != NULL && cw != NULL && zk_worker_sched(cw) == t->sched;
    int due = 0, rearm = 0;
    int64_t ns = deadline_to_ns(d);
    zk_mutex_lock(&self->dl_lock);
    self->deadline = d;
    __atomic_store_n(&self->timer.deadline_ns, ns, __ATOMIC_RELAXED);
    if (t != NULL && !self->dl_closed) {
        zk_worker_cancel_timer(cw, &self->timer);
        if (ns <= zk_monotonic_ns())
            due = 1;
        else if (ns != INT64_MAX) {
            if (!direct)
                rearm = 1;
            else if (!zk_worker_add_timer(cw, &self->timer))
                due = 1;
        }
    }
    zk_mutex_unlock(&self->dl_lock);
    if (due)
        zk_task_fire_scope(t, self);
    else if (rearm)
        zk_task_scope_changed(t, self, 1);
    return 0;
}

static PyObject *scope_get_shield(zk_timeout_scope *self, void *Py_UNUSED(c)) {
    zk_task *t = scope_task_of(self);
    if (t == NULL)
        return PyBool_FromLong(self->shield);
    zk_mutex_lock(&t->lock);
    int v = self->shield;
    zk_mutex_unlock(&t->lock);
    return PyBool_FromLong(v);
}

/* Turning a shield off lets what it deferred through at once (the task is
 * woken to re-evaluate); turning it on defers what is not yet delivered. */
static int scope_set_shield(zk_timeout_scope *self, PyObject *value, void *Py_UNUSED(c)) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a cancel scope's shield");
        return -1;
    }
    int v = PyObject_IsTrue(value);
    if (v < 0)
        return -1;
    zk_task *t = scope_task_of(self);
    if (t == NULL) {
        self->shield = (uint8_t)v;
        return 0;
    }
    zk_mutex_lock(&t->lock);
    int was = self->shield;
    self->shield = (uint8_t)v;
    zk_mutex_unlock(&t->lock);
    if (was && !v)
        zk_task_scope_changed(t, self, 0);
    return 0;
}

/* cancel_called: cancel() was called, or the scope fired while entered. */
static PyObject *scope_get_cancel_called(zk_timeout_scope *self, void *Py_UNUSED(c)) {
    if (atomic_load_explicit(&self->cancel_called, memory_order_acquire))
        Py_RETURN_TRUE;
    zk_task *t = scope_task_of(self);
    int fired = 0;
    if (t != NULL) {
        zk_mutex_lock(&t->lock);
        fired = self->scope_state == ZK_SCOPE_FIRED;
        zk_mutex_unlock(&t->lock);
    }
    return PyBool_FromLong(fired);
}

static PyObject *scope_get_entered(zk_timeout_scope *self, void *Py_UNUSED(c)) {
    return PyBool_FromLong(scope_task_of(self) != NULL);
}

static PyMethodDef scope_methods[] = {
    {"arm", (PyCFunction)(void (*)(void))scope_arm, METH_FASTCALL,
     "arm(relative=None): enter the scope in the current task (it becomes the "
     "innermost one); with `relative`, the deadline is now + relative."},
    {"disarm", (PyCFunction)scope_disarm, METH_NOARGS,
     "Exit the scope; True if it had been cancelled."},
    {"cancel", (PyCFunction)scope_cancel, METH_NOARGS,
     "Cancel the scope (any thread, idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef scope_getset[] = {
    {"deadline", (getter)scope_get_deadline, (setter)scope_set_deadline,
     "Absolute deadline, zokio.monotonic() seconds (inf: none).  Settable from "
     "any thread: the timer moves.", NULL},
    {"shield", (getter)scope_get_shield, (setter)scope_set_shield,
     "While entered, defer the task's cancellation and outer scopes'.", NULL},
    {"cancel_called", (getter)scope_get_cancel_called, NULL,
     "cancel() was called, or the deadline passed while entered.", NULL},
    {"entered", (getter)scope_get_entered, NULL, "arm() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot scope_slots[] = {
    {Py_tp_new, scope_new},
    {Py_tp_dealloc, scope_dealloc},
    {Py_tp_traverse, scope_traverse},
    {Py_tp_clear, scope_clear},
    {Py_tp_methods, scope_methods},
    {Py_tp_getset, scope_getset},
    {0, NULL},
};

static PyType_Spec scope_spec = {
    .name = "zokio._native.TimeoutScope",
    .basicsize = sizeof(zk_timeout_scope),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = scope_slots,
};

/* ---- timer kinds --------------------------------------------------------- */

static void sleep_timer_fire(zk_state *st, zk_timer *timer) {
    zk_sleep *s = (zk_sleep *)zk_timer_owner(timer);
    zk_leaf_complete(st, &s->leaf, Py_NewRef(Py_None), NULL);
}

static void scope_timer_fire(zk_state *st, zk_timer *timer) {
    ZK_UNUSED(st);
    zk_timeout_scope *sc = (zk_timeout_scope *)zk_timer_owner(timer);
    zk_task *t = atomic_load_explicit(&sc->task, memory_order_acquire);
    if (t != NULL)
        zk_task_fire_scope(t, sc);
}

const zk_timer_ops zk_timer_kinds[ZK_TIMER_KINDS] = {
    [ZK_TIMER_SLEEP] = {.owner_offset = offsetof(zk_sleep, timer), .fire = sleep_timer_fire},
    [ZK_TIMER_TIMEOUT] = {.owner_offset = offsetof(zk_timeout_scope, timer),
                          .fire = scope_timer_fire},
};

/* ---- awaitable kinds: one ops table each ------------------------------------ */

int zk_leaf_kind_add(zk_state *st, PyTypeObject *type, const zk_leaf_ops *ops) {
    for (int i = 0; i < ZK_LEAF_KINDS_MAX; i++) {
        if (st->leaf_kind_type[i] == NULL) {
            st->leaf_kind_type[i] = type;
            st->leaf_kind_ops[i] = ops;
            return 0;
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "zokio: too many awaitable kinds (ZK_LEAF_KINDS_MAX)");
    return -1;
}

int zk_awaitable_foreign(PyObject *obj) {
    PyErr_Format(PyExc_TypeError,
                 "a zokio task awaited %R, which is not a zokio awaitable; "
                 "asyncio futures and other event loops' objects cannot be "
                 "awaited on zokio (wrap blocking work in zokio.spawn_blocking)",
                 obj);
    return -1;
}

static int leaf_ready(PyObject *obj) {
    return zk_leaf_is_done((zk_leaf *)obj);
}

static int yield_ready(PyObject *obj) {
    ZK_UNUSED(obj);
    return 1;
}

static int yield_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w), ZK_UNUSED(obj);
    task->yield_resume = 1;
    zk_task_wake(task);  /* RUNNING: re-queued to the back after the poll */
    return 0;
}

static void yield_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w), ZK_UNUSED(obj);
    task->yield_resume = 0;
}

static const zk_leaf_ops yield_ops = {
    .ready = yield_ready,
    .register_waker = yield_register,
    .unregister = yield_unregister,
};

static int oneshot_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w);
    return zk_leaf_register_waker((zk_leaf *)obj, task);
}

static void oneshot_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w), ZK_UNUSED(task);
    zk_leaf_unregister_waker((zk_leaf *)obj);
}

static const zk_leaf_ops oneshot_ops = {
    .ready = leaf_ready,
    .register_waker = oneshot_register,
    .unregister = oneshot_unregister,
};

static int sleep_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    zk_sleep *s = (zk_sleep *)obj;
    if (zk_leaf_register_waker(&s->leaf, task) < 0)
        return -1;
    if (!zk_leaf_is_done(&s->leaf) && !s->timer.entry.linked) {
        if (!zk_worker_add_timer(w, &s->timer))
            zk_timer_fire(st, &s->timer);
    }
    return 0;
}

static void sleep_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(task);
    zk_sleep *s = (zk_sleep *)obj;
    zk_leaf_unregister_waker(&s->leaf);
    zk_worker_cancel_timer(w, &s->timer);
}

static const zk_leaf_ops sleep_ops = {
    .ready = leaf_ready,
    .register_waker = sleep_register,
    .unregister = sleep_unregister,
};


int zk_leaf_types_init(PyObject *module, zk_state *st) {
#define MAKE(field, spec)                                                              \
    do {                                                                               \
        st->field = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);     \
        if (st->field == NULL)                                                         \
            return -1;                                                                 \
    } while (0)
    MAKE(YieldNowType, yield_spec);
    MAKE(OneshotType, oneshot_spec);
    MAKE(SleepType, sleep_spec);
    MAKE(TimeoutScopeType, scope_spec);
#undef MAKE
    /* Hottest first (see zk_leaf_ops_of); the Task kind is added before
     * these by zk_task_type_init. */
    if (zk_leaf_kind_add(st, st->YieldNowType, &yield_ops) < 0 ||
        zk_leaf_kind_add(st, st->SleepType, &sleep_ops) < 0 ||
        zk_leaf_kind_add(st, st->OneshotType, &oneshot_ops) < 0)
        return -1;
    st->scope_var = PyContextVar_New("zokio_cancel_scope", NULL);
    st->str_scope_attr = PyUnicode_InternFromString("_zokio_scope");
    if (st->scope_var == NULL || st->str_scope_attr == NULL)
        return -1;
    st->yield_now = PyType_GenericAlloc(st->YieldNowType, 0);
    if (st->yield_now == NULL)
        return -1;
    zk_immortalize((PyObject *)st->YieldNowType);
    zk_immortalize((PyObject *)st->OneshotType);
    zk_immortalize((PyObject *)st->SleepType);
    zk_immortalize(st->yield_now);
    if (PyModule_AddObjectRef(module, "Oneshot", (PyObject *)st->OneshotType) < 0 ||
        PyModule_AddObjectRef(module, "TimeoutScope", (PyObject *)st->TimeoutScopeType) < 0 ||
        PyModule_AddObjectRef(module, "yield_now_instance", st->yield_now) < 0)
        return -1;
    return 0;
}
