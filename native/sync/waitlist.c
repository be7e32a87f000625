/* waitlist.c -- the FIFO wait list and its Waiter leaf (contract: waitlist.h).
 *
 * The list is an intrusive doubly linked list of Waiter objects; every field
 * of it, and every waiter's prev/next/waiter_state, is read and written only
 * under the primitive's mutex (wl->lock).  The leaf header (waker, done,
 * value, exc) follows the waker handshake of core/leaf.c: a waiter is
 * completed exactly once, after the mutex is released.
 *
 * Who gives a grant back.  A grant (permits, a message) leaves the primitive
 * when a pop/take marks the waiter GRANTED.  It reaches its user when the
 * outcome is consumed: the awaiting task's __next__, zk_waiter_take_outcome,
 * or zk_waiter_block returning 1.  Any other end returns it through the
 * list's give_back, exactly once, decided by an atomic exchange on
 * `consumed`:
 *   - the waiter is cancelled while still LINKED: removed, and a partial
 *     grant (got > 0) is given back;
 *   - the coroutine suspended on it is closed (runtime shutdown, the
 *     coroutine collected): close() below removes a linked waiter and gives
 *     back a grant that has landed;
 *   - the waiter dies GRANTED and unconsumed: its dealloc gives it back.
 */
#include "sync/waitlist.h"
#include "core/task.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t zk_monotonic_ns(void);  /* core/sched.c */

/* The Waiter type, created once at module init and immortal (like the other
 * leaf types): zk_waiter_new is called by primitives that have no module
 * state at hand, and the module is never unloaded. */
static PyTypeObject *waiter_type;

/* ---- the list (under wl->lock) ------------------------------------------- */

void zk_waitlist_init(zk_waitlist *wl, zk_mutex *lock, PyObject *owner,
                      zk_give_back_fn give_back) {
    wl->lock = lock;
    wl->head = wl->tail = NULL;
    wl->length = 0;
    wl->owner = owner;
    wl->give_back = give_back;
}

zk_waiter *zk_waiter_new(Py_ssize_t want, int kind) {
    zk_waiter *w = PyObject_GC_New(zk_waiter, waiter_type);
    if (w == NULL)
        return NULL;
    zk_leaf_init(&w->leaf);
    w->prev = w->next = NULL;
    w->list = NULL;
    w->owner = NULL;
    w->waiter_state = ZK_WAITER_NEW;
    w->kind = kind;
    w->want = want;
    w->got = 0;
    w->item = NULL;
    atomic_init(&w->consumed, 0);
    atomic_init(&w->blocking, 0);
    PyObject_GC_Track(w);
    return w;
}

void zk_waitlist_push_locked(zk_waitlist *wl, zk_waiter *w) {
    Py_INCREF(w);
    w->list = wl;
    if (w->owner == NULL)
        w->owner = Py_NewRef(wl->owner);
    w->waiter_state = ZK_WAITER_LINKED;
    w->next = NULL;
    w->prev = wl->tail;
    if (wl->tail)
        wl->tail->next = w;
    else
        wl->head = w;
    wl->tail = w;
    wl->length++;
}

static void unlink_locked(zk_waitlist *wl, zk_waiter *w, int new_state) {
    if (w->prev)
        w->prev->next = w->next;
    else
        wl->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        wl->tail = w->prev;
    w->prev = w->next = NULL;
    wl->length--;
    w->waiter_state = new_state;
}

zk_waiter *zk_waitlist_pop_locked(zk_waitlist *wl) {
    zk_waiter *w = wl->head;
    if (w != NULL)
        unlink_locked(wl, w, ZK_WAITER_GRANTED);
    return w;
}

zk_waiter *zk_waitlist_take_locked(zk_waitlist *wl, zk_waiter *w) {
    if (w->list != wl || w->waiter_state != ZK_WAITER_LINKED)
        return NULL;
    unlink_locked(wl, w, ZK_WAITER_GRANTED);
    return w;
}

zk_waiter *zk_waitlist_remove_locked(zk_waitlist *wl, zk_waiter *w) {
    if (w->list != wl || w->waiter_state != ZK_WAITER_LINKED)
        return NULL;
    unlink_locked(wl, w, ZK_WAITER_REMOVED);
    return w;
}

/* ---- completion and blocking ---------------------------------------------- */

static long futex(_Atomic int *addr, int op, int val, const struct timespec *ts) {
    return syscall(SYS_futex, (int *)addr, op, val, ts, NULL, 0);
}

void zk_waiter_complete(zk_waiter *w, PyObject *value, PyObject *exc) {
    if (value == NULL && exc == NULL)
        value = Py_NewRef(Py_None);
    zk_leaf_complete(NULL, &w->leaf, value, exc);
    /* Dekker with zk_waiter_block: done was stored seq_cst above, blocking
     * is stored seq_cst before the blocker reads done. */
    if (atomic_load_explicit(&w->blocking, memory_order_seq_cst))
        futex(&w->leaf.done, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL);
    Py_DECREF(w);  /* the list's reference; may give an unconsumed grant back */
}

PyObject *zk_waiter_take_outcome(zk_waiter *w) {
    atomic_store_explicit(&w->consumed, 1, memory_order_release);
    if (w->leaf.exc != NULL) {
        zk_raise_instance(w->leaf.exc);
        return NULL;
    }
    return Py_NewRef(w->leaf.value != NULL ? w->leaf.value : Py_None);
}

/* How long one detached futex wait lasts before the thread re-attaches to
 * look at signals (Ctrl-C in a plain thread blocked on a primitive). */
#define BLOCK_SLICE_NS 50000000LL

int zk_waiter_block(zk_waiter *w, int64_t timeout_ns) {
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : zk_monotonic_ns() + timeout_ns;
    atomic_store_explicit(&w->blocking, 1, memory_order_seq_cst);
    for (;;) {
        int seen = atomic_load_explicit(&w->leaf.done, memory_order_seq_cst);
        if (seen == ZK_LEAF_DONE) {
            atomic_store_explicit(&w->blocking, 0, memory_order_relaxed);
            atomic_store_explicit(&w->consumed, 1, memory_order_release);
            return 1;
        }
        int64_t now = zk_monotonic_ns();
        if (now >= deadline) {
            atomic_store_explicit(&w->blocking, 0, memory_order_relaxed);
            return 0;
        }
        int64_t slice = deadline - now;
        if (slice > BLOCK_SLICE_NS)
            slice = BLOCK_SLICE_NS;
        struct timespec ts = {.tv_sec = slice / 1000000000LL, .tv_nsec = slice % 1000000000LL};
        Py_BEGIN_ALLOW_THREADS
        /* COMPLETING -> DONE changes the word too: the wait returns EAGAIN. */
        futex(&w->leaf.done, FUTEX_WAIT_PRIVATE, seen, &ts);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            atomic_store_explicit(&w->blocking, 0, memory_order_relaxed);
            return -1;
        }
    }
}

/* ---- cancellation --------------------------------------------------------- */

/* Give a grant back once (see the top of this file). */
static void give_back_once(zk_waiter *w, PyObject *owner, zk_give_back_fn give_back) {
    if (give_back == NULL || owner == NULL)
        return;
    if (atomic_exchange_explicit(&w->consumed, 1, memory_order_acq_rel) != 0)
        return;
    give_back(owner, w);
}

/* Remove w if it is still linked.  Returns its state as found.  A partial
 * grant of a removed waiter is given back. */
static int cancel_linked(zk_waiter *w) {
    zk_waitlist *wl = w->list;
    if (wl == NULL)
        return ZK_WAITER_NEW;
    zk_mutex_lock(wl->lock);
    int state = w->waiter_state;
    zk_waiter *removed = state == ZK_WAITER_LINKED ? zk_waitlist_remove_locked(wl, w) : NULL;
    zk_mutex_unlock(wl->lock);
    if (removed != NULL) {
        if (w->got > 0)
            give_back_once(w, w->owner, wl->give_back);
        else
            atomic_store_explicit(&w->consumed, 1, memory_order_release);
        Py_DECREF(removed);  /* the list's; the caller still holds one */
    }
    return state;
}

static int waiter_ready(PyObject *obj) {
    return zk_leaf_is_done(&((zk_waiter *)obj)->leaf);
}

static int waiter_register(zk_state *st, zk_worker *wk, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(wk);
    return zk_leaf_register_waker(&((zk_waiter *)obj)->leaf, task);
}

static void waiter_unregister(zk_state *st, zk_worker *wk, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(wk), ZK_UNUSED(task);
    zk_waiter *w = (zk_waiter *)obj;
    zk_leaf_unregister_waker(&w->leaf);
    /* interrupt_mode already removed a linked waiter; a waiter that was never
     * pushed, or was removed, has nothing to undo. */
}

/* The cancellation rules of waitlist.h, decided under the list's mutex. */
static int waiter_interrupt_mode(zk_state *st, zk_worker *wk, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(wk);
    zk_waiter *w = (zk_waiter *)obj;
    if (zk_leaf_is_done(&w->leaf))
        return w->waiter_state == ZK_WAITER_GRANTED ? ZK_INTERRUPT_LATER : ZK_INTERRUPT_NOW;
    int state = cancel_linked(w);
    if (state == ZK_WAITER_GRANTED) {
        /* Granted under the mutex, completion not landed yet: it will wake
         * the task, which then resumes with the grant. */
        return zk_leaf_is_done(&w->leaf) ? ZK_INTERRUPT_LATER : ZK_INTERRUPT_WAIT;
    }
    return ZK_INTERRUPT_NOW;
}

static const zk_leaf_ops waiter_ops = {
    .ready = waiter_ready,
    .register_waker = waiter_register,
    .unregister = waiter_unregister,
    .interrupt_mode = waiter_interrupt_mode,
};

/* ---- the Waiter type ------------------------------------------------------ */

static PyObject *waiter_iternext(zk_waiter *self) {
    if (zk_current_task == NULL) {
        if (zk_abandoning)
            return Py_NewRef(self);
        PyErr_Format(PyExc_RuntimeError,
                     "%R must be awaited inside a zokio task (no zokio runtime is "
                     "running this coroutine)", (PyObject *)self);
        return NULL;
    }
    if (zk_leaf_is_done(&self->leaf) && zk_coop_budget-- > 0) {
        atomic_store_explicit(&self->consumed, 1, memory_order_release);
        return zk_leaf_outcome(&self->leaf);
    }
    zk_suspending = (PyObject *)self;
    return Py_NewRef(self);
}

/* close(): the coroutine suspended on this waiter is being closed (runtime
 * shutdown abandons its task, or the coroutine is collected).  A linked
 * waiter leaves the list; a grant that landed goes back.  A grant whose
 * completion is still in flight goes back from dealloc. */
static PyObject *waiter_close(zk_waiter *self, PyObject *Py_UNUSED(ignored)) {
    int state = cancel_linked(self);
    if (state == ZK_WAITER_GRANTED && zk_leaf_is_done(&self->leaf) && self->list != NULL)
        give_back_once(self, self->owner, self->list->give_back);
    Py_RETURN_NONE;
}

static PyObject *waiter_done(zk_waiter *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(zk_leaf_is_done(&self->leaf));
}

static int waiter_traverse(zk_waiter *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->leaf.value);
    Py_VISIT(self->leaf.exc);
    Py_VISIT(self->owner);
    Py_VISIT(self->item);
    return 0;
}

/* Breaking a cycle: drop the payloads.  `owner` stays: a linked waiter is
 * unlinked by its primitive's clear (which owns the list's references), and
 * the owner must outlive a grant that dealloc may still give back. */
static int waiter_clear(zk_waiter *self) {
    Py_CLEAR(self->leaf.value);
    Py_CLEAR(self->leaf.exc);
    Py_CLEAR(self->item);
    return 0;
}

static void waiter_dealloc(zk_waiter *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* A linked waiter is owned by its list, so here it is NEW, GRANTED or
     * REMOVED. */
    if (self->waiter_state == ZK_WAITER_GRANTED && self->list != NULL &&
        atomic_load_explicit(&self->consumed, memory_order_acquire) == 0) {
        /* give_back reads the waiter (got, item) and takes no reference to
         * it (waitlist.h), so it may run on a dying object. */
        give_back_once(self, self->owner, self->list->give_back);
    }
    Py_CLEAR(self->leaf.value);
    Py_CLEAR(self->leaf.exc);
    Py_CLEAR(self->item);
    zk_task *t = atomic_exchange_explicit(&self->leaf.waker, NULL, memory_order_relaxed);
    Py_XDECREF(t);
    Py_CLEAR(self->owner);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static const char *state_names[] = {"new", "linked", "granted", "removed"};

static PyObject *waiter_repr(zk_waiter *self) {
    int s = self->waiter_state;
    return PyUnicode_FromFormat("<zokio.sync.Waiter %s want=%zd got=%zd%s>",
                                s >= 0 && s <= 3 ? state_names[s] : "?", self->want, self->got,
                                zk_leaf_is_done(&self->leaf) ? " done" : "");
}

/* Introspection for tests: read without the mutex, so only meaningful when
 * nothing else touches the waiter. */
static PyObject *waiter_get_state(zk_waiter *self, void *Py_UNUSED(c)) {
    return PyUnicode_FromString(state_names[self->waiter_state & 3]);
}
static PyObject *waiter_get_want(zk_waiter *self, void *Py_UNUSED(c)) {
    return PyLong_FromSsize_t(self->want);
}
static PyObject *waiter_get_got(zk_waiter *self, void *Py_UNUSED(c)) {
    return PyLong_FromSsize_t(self->got);
}
static PyObject *waiter_get_kind(zk_waiter *self, void *Py_UNUSED(c)) {
    return PyLong_FromLong(self->kind);
}
static PyObject *waiter_get_consumed(zk_waiter *self, void *Py_UNUSED(c)) {
    return PyBool_FromLong(atomic_load_explicit(&self->consumed, memory_order_acquire));
}

static PyGetSetDef waiter_getset[] = {
    {"state", (getter)waiter_get_state, NULL, "new, linked, granted or removed", NULL},
    {"want", (getter)waiter_get_want, NULL, NULL, NULL},
    {"got", (getter)waiter_get_got, NULL, NULL, NULL},
    {"kind", (getter)waiter_get_kind, NULL, NULL, NULL},
    {"consumed", (getter)waiter_get_consumed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef waiter_methods[] = {
    {"close", (PyCFunction)waiter_close, METH_NOARGS,
     "Withdraw: leave the wait list, or give back a grant not yet taken."},
    {"done", (PyCFunction)waiter_done, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot waiter_slots[] = {
    {Py_tp_dealloc, waiter_dealloc},
    {Py_tp_traverse, waiter_traverse},
    {Py_tp_clear, waiter_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, waiter_iternext},
    {Py_am_await, zk_leaf_await},
    {Py_tp_repr, waiter_repr},
    {Py_tp_methods, waiter_methods},
    {Py_tp_getset, waiter_getset},
    {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "zokio.sync.Waiter",
    .basicsize = sizeof(zk_waiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiter_slots,
};

/* ---- a bare list for tests ------------------------------------------------ */

/* _WaitListProbe: one wait list and its mutex, driven step by step from
 * Python (tests/sync/test_waitlist.py).  Its give_back adds the returned
 * `got` to `given_back`.  Not used by zokio itself. */
typedef struct {
    PyObject_HEAD
    zk_mutex lock;
    zk_waitlist wl;
    _Atomic Py_ssize_t given_back;
} probe_obj;

static void probe_give_back(PyObject *owner, zk_waiter *w) {
    probe_obj *p = (probe_obj *)owner;
    atomic_fetch_add(&p->given_back, w->got);
}

static PyObject *probe_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0) || PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "_WaitListProbe() takes no arguments");
        return NULL;
    }
    probe_obj *p = PyObject_GC_New(probe_obj, type);
    if (p == NULL)
        return NULL;
    zk_mutex_init(&p->lock);
    zk_waitlist_init(&p->wl, &p->lock, (PyObject *)p, probe_give_back);
    atomic_init(&p->given_back, 0);
    PyObject_GC_Track(p);
    return (PyObject *)p;
}

/* Unlink every waiter (REMOVED) and drop the list's references. */
static void probe_drain(probe_obj *p) {
    zk_mutex_lock(&p->lock);
    zk_waiter *chain = NULL;
    zk_waiter *w;
    while ((w = p->wl.head) != NULL) {
        zk_waitlist_remove_locked(&p->wl, w);
        w->next = chain;  /* unlinked: reuse next for the free chain */
        chain = w;
    }
    zk_mutex_unlock(&p->lock);
    while (chain != NULL) {
        w = chain;
        chain = w->next;
        w->next = NULL;
        Py_DECREF(w);
    }
}

static int probe_traverse(probe_obj *p, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(p));
    /* The list owns a reference to each linked waiter.  Read without the
     * mutex: the collector stops the world. */
    for (zk_waiter *w = p->wl.head; w != NULL; w = w->next)
        Py_VISIT((PyObject *)w);
    return 0;
}

static int probe_clear(probe_obj *p) {
    probe_drain(p);
    return 0;
}

static void probe_dealloc(probe_obj *p) {
    PyTypeObject *tp = Py_TYPE(p);
    PyObject_GC_UnTrack(p);
    probe_drain(p);
    zk_mutex_destroy(&p->lock);
    tp->tp_free(p);
    Py_DECREF(tp);
}

static zk_waiter *probe_waiter_arg(probe_obj *p, PyObject *arg) {
    if (!Py_IS_TYPE(arg, waiter_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a Waiter");
        return NULL;
    }
    ZK_UNUSED(p);
    return (zk_waiter *)arg;
}

static PyObject *probe_push(probe_obj *p, PyObject *args) {
    Py_ssize_t want = 1;
    int kind = 0;
    if (!PyArg_ParseTuple(args, "|ni:push", &want, &kind))
        return NULL;
    zk_waiter *w = zk_waiter_new(want, kind);
    if (w == NULL)
        return NULL;
    zk_mutex_lock(&p->lock);
    zk_waitlist_push_locked(&p->wl, w);
    zk_mutex_unlock(&p->lock);
    return (PyObject *)w;
}

/* pop() -> the head, now GRANTED but not completed (complete() does), or
 * None.  The returned object carries the list's reference via complete(). */
static PyObject *probe_pop(probe_obj *p, PyObject *Py_UNUSED(ignored)) {
    zk_mutex_lock(&p->lock);
    zk_waiter *w = zk_waitlist_pop_locked(&p->wl);
    if (w != NULL)
        w->got = w->want;  /* the probe's grant is the whole want */
    zk_mutex_unlock(&p->lock);
    if (w == NULL)
        Py_RETURN_NONE;
    return (PyObject *)w;  /* the list's reference, handed to the caller */
}

static PyObject *probe_take(probe_obj *p, PyObject *arg) {
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    zk_mutex_lock(&p->lock);
    zk_waiter *t = zk_waitlist_take_locked(&p->wl, w);
    if (t != NULL)
        t->got = t->want;
    zk_mutex_unlock(&p->lock);
    if (t == NULL)
        Py_RETURN_NONE;
    return (PyObject *)t;
}

static PyObject *probe_remove(probe_obj *p, PyObject *arg) {
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    zk_mutex_lock(&p->lock);
    zk_waiter *t = zk_waitlist_remove_locked(&p->wl, w);
    zk_mutex_unlock(&p->lock);
    Py_XDECREF(t);
    return PyBool_FromLong(t != NULL);
}

/* grant(w, got): record a partial grant on a linked waiter. */
static PyObject *probe_grant(probe_obj *p, PyObject *args) {
    PyObject *arg;
    Py_ssize_t got;
    if (!PyArg_ParseTuple(args, "On:grant", &arg, &got))
        return NULL;
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    zk_mutex_lock(&p->lock);
    w->got = got;
    zk_mutex_unlock(&p->lock);
    Py_RETURN_NONE;
}

/* complete(w, value=None): wake a waiter returned by pop()/take().  The
 * caller's reference from pop()/take() is the one zk_waiter_complete
 * consumes, so the Python caller must not use that object afterwards except
 * through another reference it holds. */
static PyObject *probe_complete(probe_obj *p, PyObject *args) {
    PyObject *arg, *value = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:complete", &arg, &value))
        return NULL;
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    if (w->waiter_state != ZK_WAITER_GRANTED || zk_leaf_is_done(&w->leaf)) {
        PyErr_SetString(PyExc_RuntimeError, "complete() needs a granted, pending waiter");
        return NULL;
    }
    Py_INCREF(w);  /* stands for the reference pop()/take() handed out */
    zk_waiter_complete(w, Py_NewRef(value), NULL);
    Py_RETURN_NONE;
}

/* block(w, timeout) -> 1 completed, 0 timed out (plain thread). */
static PyObject *probe_block(probe_obj *p, PyObject *args) {
    PyObject *arg;
    double timeout;
    if (!PyArg_ParseTuple(args, "Od:block", &arg, &timeout))
        return NULL;
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    int r = zk_waiter_block(w, timeout < 0 ? -1 : (int64_t)(timeout * 1e9));
    if (r < 0)
        return NULL;
    return PyLong_FromLong(r);
}

static PyObject *probe_outcome(probe_obj *p, PyObject *arg) {
    zk_waiter *w = probe_waiter_arg(p, arg);
    if (w == NULL)
        return NULL;
    if (!zk_leaf_is_done(&w->leaf)) {
        PyErr_SetString(PyExc_RuntimeError, "not completed");
        return NULL;
    }
    return zk_waiter_take_outcome(w);
}

static PyObject *probe_order(probe_obj *p, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (;;) {
        /* Copy under the mutex into a fixed array, append outside it. */
        zk_waiter *buf[64];
        Py_ssize_t n = 0, start = PyList_GET_SIZE(out), i = 0;
        zk_mutex_lock(&p->lock);
        for (zk_waiter *w = p->wl.head; w != NULL; w = w->next, i++) {
            if (i < start)
                continue;
            if (n == 64)
                break;
            Py_INCREF(w);
            buf[n++] = w;
        }
        Py_ssize_t total = p->wl.length;
        zk_mutex_unlock(&p->lock);
        for (Py_ssize_t k = 0; k < n; k++) {
            int r = PyList_Append(out, (PyObject *)buf[k]);
            Py_DECREF(buf[k]);
            if (r < 0) {
                for (k++; k < n; k++)
                    Py_DECREF(buf[k]);
                Py_DECREF(out);
                return NULL;
            }
        }
        if (n < 64 || PyList_GET_SIZE(out) >= total)
            return out;
    }
}

static PyObject *probe_len(probe_obj *p, void *Py_UNUSED(c)) {
    zk_mutex_lock(&p->lock);
    Py_ssize_t n = p->wl.length;
    zk_mutex_unlock(&p->lock);
    return PyLong_FromSsize_t(n);
}

static PyObject *probe_given_back(probe_obj *p, void *Py_UNUSED(c)) {
    return PyLong_FromSsize_t(atomic_load(&p->given_back));
}

static PyMethodDef probe_methods[] = {
    {"push", (PyCFunction)probe_push, METH_VARARGS, "push(want=1, kind=0) -> linked Waiter"},
    {"pop", (PyCFunction)probe_pop, METH_NOARGS, "pop() -> granted head or None"},
    {"take", (PyCFunction)probe_take, METH_O, "take(w) -> w granted, or None if not linked"},
    {"remove", (PyCFunction)probe_remove, METH_O, "remove(w) -> True if it was linked"},
    {"grant", (PyCFunction)probe_grant, METH_VARARGS, "grant(w, got): a partial grant"},
    {"complete", (PyCFunction)probe_complete, METH_VARARGS, "complete(w, value=None)"},
    {"block", (PyCFunction)probe_block, METH_VARARGS, "block(w, timeout) -> 1 or 0"},
    {"outcome", (PyCFunction)probe_outcome, METH_O, "the outcome of a completed waiter"},
    {"order", (PyCFunction)probe_order, METH_NOARGS, "the linked waiters, head first"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef probe_getset[] = {
    {"length", (getter)probe_len, NULL, NULL, NULL},
    {"given_back", (getter)probe_given_back, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot probe_slots[] = {
    {Py_tp_new, probe_new},
    {Py_tp_dealloc, probe_dealloc},
    {Py_tp_traverse, probe_traverse},
    {Py_tp_clear, probe_clear},
    {Py_tp_methods, probe_methods},
    {Py_tp_getset, probe_getset},
    {Py_tp_doc, "Test-only: one bare wait list driven step by step."},
    {0, NULL},
};

static PyType_Spec probe_spec = {
    .name = "zokio._native._WaitListProbe",
    .basicsize = sizeof(probe_obj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = probe_slots,
};

int zk_waitlist_types_init(PyObject *module, zk_state *st) {
    st->WaiterType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (st->WaiterType == NULL)
        return -1;
    zk_immortalize((PyObject *)st->WaiterType);
    waiter_type = st->WaiterType;
    if (PyModule_AddObjectRef(module, "Waiter", (PyObject *)st->WaiterType) < 0)
        return -1;
    PyObject *probe = PyType_FromModuleAndSpec(module, &probe_spec, NULL);
    if (probe == NULL)
        return -1;
    int r = PyModule_AddObjectRef(module, "_WaitListProbe", probe);
    Py_DECREF(probe);
    if (r < 0 || zk_leaf_kind_add(st, st->WaiterType, &waiter_ops) < 0)
        return -1;
    /* The primitives built on the list (semaphore.c, notify.c). */
    if (zk_semaphore_types_init(module, st) < 0 || zk_notify_types_init(module, st) < 0)
        return -1;
    return 0;
}
