/* semaphore.c -- the batch semaphore every lock of zokio.sync sits on
 * (after Tokio's batch_semaphore), its guards, and a ready awaitable.
 *
 * State, all under `lock`:
 *   permits   available permits
 *   wl        FIFO of parked acquirers (waitlist.h); a waiter wants `want`
 *             permits and holds `got` of them so far
 *   bound     the most permits that can exist (BoundedSemaphore, Lock), or
 *             -1 for none
 *   holder    the guard that holds an exclusive semaphore (Mutex), or NULL
 *
 * Invariant: permits > 0 only while the list is empty.  release(n) hands
 * permits to the head first, in order: each waiter is completed once its
 * `got` reaches `want`, and a head that cannot be satisfied yet keeps what it
 * was given (so a large request is never overtaken by small ones).  An
 * acquire therefore takes permits at once only when nobody is queued (no
 * barging); otherwise it parks at the tail, taking what is available
 * (nothing, by the invariant, unless the list was empty).
 *
 * The fast path (permits available) allocates nothing: acquire() returns a
 * shared, already completed awaitable.  The slow path allocates its waiter
 * before taking the mutex, and waiters are completed after releasing it.
 *
 * A cancelled waiter (waitlist.c decides under the mutex) gives back what it
 * was given through sem_give_back, which releases those permits again; a
 * guard granted to a waiter that never took it is released the same way.
 */
#include "sync/waitlist.h"
#include "core/task.h"
#include "core/timeout_arg.h"
#include <sched.h>
#include <structmember.h>

/* The most permits a semaphore holds (as Tokio: a few bits of headroom), so
 * that no sum of permits, a release and a head waiter's share can wrap. */
#define ZK_SEM_MAX_PERMITS (PY_SSIZE_T_MAX >> 3)

/* Waiter kinds: what the await of a parked acquirer returns. */
enum { SEM_KIND_TRUE = 0, SEM_KIND_NONE = 1, SEM_KIND_GUARD = 2 };

enum { OVER_NONE = 0, OVER_VALUE_ERROR = 1, OVER_RUNTIME_ERROR = 2 };

typedef struct zk_sem {
    PyObject_HEAD
    zk_mutex lock;
    Py_ssize_t permits;
    Py_ssize_t bound;
    int over_error;         /* OVER_*: what releasing past bound raises */
    zk_waitlist wl;
    PyObject *holder;       /* the holding guard of an exclusive use, strong */
    PyObject *weakreflist;
} zk_sem;

typedef struct zk_guard {
    PyObject_HEAD
    zk_sem *sem;            /* strong */
    PyObject *target;       /* object whose `_value` the guard exposes; strong */
    Py_ssize_t n;           /* permits it holds */
    _Atomic int held;       /* 1 from its grant until its release */
    int writable;
    int used;               /* acquired once already (a guard is single-use) */
} zk_guard;

typedef struct zk_ready {
    PyObject_HEAD
    PyObject *value;
} zk_ready;

static PyTypeObject *sem_type, *guard_type, *ready_type;
static PyObject *ready_none, *ready_true, *ready_false;  /* immortal */
static PyObject *str_value;

/* ---- Ready: an awaitable that is complete from the start ------------------- */

static PyObject *ready_iternext(zk_ready *self) {
    return zk_return_value(Py_NewRef(self->value));
}

static PyObject *ready_await(PyObject *self) {
    return Py_NewRef(self);
}

static int ready_traverse(zk_ready *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    return 0;
}

static int ready_clear(zk_ready *self) {
    Py_CLEAR(self->value);
    return 0;
}

static void ready_dealloc(zk_ready *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->value);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *ready_new(PyObject *value) {
    zk_ready *r = PyObject_GC_New(zk_ready, ready_type);
    if (r == NULL)
        return NULL;
    r->value = Py_NewRef(value);
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

PyObject *zk_sync_ready(PyObject *value) {
    if (value == Py_None && ready_none != NULL)
        return Py_NewRef(ready_none);
    if (value == Py_True && ready_true != NULL)
        return Py_NewRef(ready_true);
    if (value == Py_False && ready_false != NULL)
        return Py_NewRef(ready_false);
    return ready_new(value);
}

static PyObject *ready_send(zk_ready *self, PyObject *arg) {
    ZK_UNUSED(arg);
    return ready_iternext(self);
}

static PyObject *ready_close(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    ZK_UNUSED(self);
    Py_RETURN_NONE;
}

static PyMethodDef ready_methods[] = {
    {"send", (PyCFunction)ready_send, METH_O, NULL},
    {"close", ready_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ready_slots[] = {
    {Py_tp_dealloc, ready_dealloc},
    {Py_tp_traverse, ready_traverse},
    {Py_tp_clear, ready_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, ready_iternext},
    {Py_am_await, ready_await},
    {Py_tp_methods, ready_methods},
    {Py_tp_doc, "An awaitable that is already complete (an acquire that did not wait)."},
    {0, NULL},
};

static PyType_Spec ready_spec = {
    .name = "zokio.sync.Ready",
    .basicsize = sizeof(zk_ready),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ready_slots,
};

/* ---- the semaphore core (under sem->lock) ------------------------------------ */

/* An exclusive semaphore (bound 1: Mutex) records the guard holding it.  The
 * previous holder released (which cleared the slot) before the permit could
 * be granted again, so nothing is normally replaced; *drop receives it if it
 * were, for a decref after unlocking. */
static void set_holder_locked(zk_sem *s, zk_guard *g, PyObject **drop) {
    if (s->bound != 1)
        return;
    PyObject *old = s->holder;
    s->holder = Py_NewRef((PyObject *)g);
    if (old != NULL && *drop == NULL)
        *drop = old;
    else if (old != NULL)
        Py_DECREF(old);  /* unreachable: the holder slot is cleared first */
}

/* Hand `n` permits out, head first.  Waiters whose want is met are popped
 * (GRANTED) and chained through `next` onto *done for completion after
 * unlocking; what is left goes to the counter.  A guard carried by a popped
 * waiter becomes held here, and the holder of an exclusive semaphore, so
 * that the grant and the ownership change together. */
static void assign_locked(zk_sem *s, Py_ssize_t n, zk_waiter **done, PyObject **drop) {
    zk_waiter **tail = done;
    while (*tail)
        tail = &(*tail)->next;
    while (n > 0) {
        zk_waiter *h = zk_waitlist_head_locked(&s->wl);
        if (h == NULL)
            break;
        Py_ssize_t need = h->want - h->got;
        if (need > n) {
            h->got += n;
            n = 0;
            break;
        }
        h->got = h->want;
        n -= need;
        zk_waitlist_pop_locked(&s->wl);
        if (h->kind == SEM_KIND_GUARD && h->item != NULL) {
            zk_guard *g = (zk_guard *)h->item;
            atomic_store_explicit(&g->held, 1, memory_order_release);
            set_holder_locked(s, g, drop);
        }
        h->next = NULL;
        *tail = h;
        tail = &h->next;
    }
    s->permits += n;
}

/* After unlocking: wake the waiters assign_locked granted. */
static void complete_chain(zk_waiter *w) {
    while (w != NULL) {
        zk_waiter *next = w->next;
        w->next = NULL;
        PyObject *value;
        if (w->kind == SEM_KIND_GUARD && w->item != NULL)
            value = Py_NewRef(w->item);
        else
            value = Py_NewRef(w->kind == SEM_KIND_TRUE ? Py_True : Py_None);
        zk_waiter_complete(w, value, NULL);
        w = next;
    }
}

/* Release n permits without the bound check (given back, or a guard). */
static void sem_release_unchecked(zk_sem *s, Py_ssize_t n) {
    zk_waiter *done = NULL;
    PyObject *drop = NULL;
    zk_mutex_lock(&s->lock);
    assign_locked(s, n, &done, &drop);
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(drop);
    complete_chain(done);
}

static void sem_give_back(PyObject *owner, zk_waiter *w) {
    zk_sem *s = (zk_sem *)owner;
    PyObject *drop = NULL;
    if (w->kind == SEM_KIND_GUARD && w->item != NULL) {
        zk_guard *g = (zk_guard *)w->item;
        atomic_store_explicit(&g->held, 0, memory_order_release);
        zk_mutex_lock(&s->lock);
        if (s->holder == (PyObject *)g) {
            drop = s->holder;
            s->holder = NULL;
        }
        zk_mutex_unlock(&s->lock);
    }
    if (w->got > 0)
        sem_release_unchecked(s, w->got);
    Py_XDECREF(drop);
}

/* Parked waiters of a semaphore that is being collected: unlink them all. */
static void sem_drain(zk_sem *s) {
    zk_waiter *chain = NULL, *w;
    zk_mutex_lock(&s->lock);
    while ((w = zk_waitlist_head_locked(&s->wl)) != NULL) {
        zk_waitlist_remove_locked(&s->wl, w);
        w->next = chain;
        chain = w;
    }
    zk_mutex_unlock(&s->lock);
    while (chain != NULL) {
        w = chain;
        chain = w->next;
        w->next = NULL;
        Py_DECREF(w);
    }
}

static int check_n(Py_ssize_t n, zk_sem *s) {
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "the number of permits must be >= 0, got %zd", n);
        return -1;
    }
    if (s->bound >= 0 && n > s->bound) {
        PyErr_Format(PyExc_ValueError,
                     "cannot acquire %zd permits from a semaphore of %zd", n, s->bound);
        return -1;
    }
    if (n > ZK_SEM_MAX_PERMITS) {
        PyErr_Format(PyExc_ValueError,
                     "cannot acquire %zd permits: a semaphore holds at most %zd", n,
                     (Py_ssize_t)ZK_SEM_MAX_PERMITS);
        return -1;
    }
    return 0;
}

/* The guard of an exclusive semaphore becomes the holder (fast path). */
static void grant_guard_locked(zk_sem *s, zk_guard *g, PyObject **drop) {
    atomic_store_explicit(&g->held, 1, memory_order_release);
    set_holder_locked(s, g, drop);
}

/* acquire n: a Ready awaitable if the permits were free and nobody waits,
 * else a linked Waiter.  `guard` (borrowed, may be NULL) is what the await
 * returns for SEM_KIND_GUARD. */
static PyObject *sem_acquire_impl(zk_sem *s, Py_ssize_t n, int kind, zk_guard *guard) {
    if (check_n(n, s) < 0)
        return NULL;
    PyObject *drop = NULL;
    zk_mutex_lock(&s->lock);
    if (s->permits >= n) {
        s->permits -= n;
        if (guard != NULL)
            grant_guard_locked(s, guard, &drop);
        zk_mutex_unlock(&s->lock);
        Py_XDECREF(drop);
        if (guard != NULL)
            return ready_new((PyObject *)guard);
        return Py_NewRef(kind == SEM_KIND_TRUE ? ready_true : ready_none);
    }
    zk_mutex_unlock(&s->lock);

    zk_waiter *w = zk_waiter_new(n, kind);
    if (w == NULL)
        return NULL;
    if (guard != NULL)
        w->item = Py_NewRef((PyObject *)guard);
    zk_mutex_lock(&s->lock);
    if (s->permits >= n) {
        /* Released meanwhile: no need to park after all. */
        s->permits -= n;
        if (guard != NULL)
            grant_guard_locked(s, guard, &drop);
        zk_mutex_unlock(&s->lock);
        Py_XDECREF(drop);
        Py_DECREF(w);
        if (guard != NULL)
            return ready_new((PyObject *)guard);
        return Py_NewRef(kind == SEM_KIND_TRUE ? ready_true : ready_none);
    }
    /* permits > 0 only with an empty list: this waiter becomes the head and
     * starts with what is there. */
    w->got = s->permits;
    s->permits = 0;
    zk_waitlist_push_locked(&s->wl, w);
    zk_mutex_unlock(&s->lock);
    return (PyObject *)w;
}

/* ---- the Semaphore type -------------------------------------------------------- */

static PyObject *sem_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"permits", "bound", "over_release", NULL};
    Py_ssize_t permits = 1, bound = -1;
    int over = OVER_NONE;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nni:Semaphore", kwlist, &permits, &bound,
                                     &over))
        return NULL;
    if (permits < 0) {
        PyErr_Format(PyExc_ValueError, "initial permits must be >= 0, got %zd", permits);
        return NULL;
    }
    if (bound >= 0 && bound < permits) {
        PyErr_SetString(PyExc_ValueError, "bound must be >= the initial permits");
        return NULL;
    }
    if (permits > ZK_SEM_MAX_PERMITS || bound > ZK_SEM_MAX_PERMITS) {
        PyErr_Format(PyExc_OverflowError, "a semaphore holds at most %zd permits, got %zd",
                     (Py_ssize_t)ZK_SEM_MAX_PERMITS, permits > bound ? permits : bound);
        return NULL;
    }
    zk_sem *s = (zk_sem *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    zk_mutex_init(&s->lock);
    s->permits = permits;
    s->bound = bound;
    s->over_error = over;
    s->holder = NULL;
    s->weakreflist = NULL;
    zk_waitlist_init(&s->wl, &s->lock, (PyObject *)s, sem_give_back);
    return (PyObject *)s;
}

static int sem_traverse(zk_sem *s, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->holder);
    /* The list owns a reference to each parked waiter.  Read without the
     * mutex: the collector has stopped the world. */
    for (zk_waiter *w = s->wl.head; w != NULL; w = w->next)
        Py_VISIT((PyObject *)w);
    /* A Python subclass's __dict__ and slots: its subtype_traverse. */
    return 0;
}

static int sem_clear(zk_sem *s) {
    sem_drain(s);
    zk_mutex_lock(&s->lock);
    PyObject *h = s->holder;
    s->holder = NULL;
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(h);
    return 0;
}

static void sem_dealloc(zk_sem *s) {
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    if (s->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)s);
    sem_clear(s);
    zk_mutex_destroy(&s->lock);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static int parse_n(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *n, const char *name) {
    *n = 1;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd given)", name, nargs);
        return -1;
    }
    if (nargs == 1) {
        *n = PyLong_AsSsize_t(args[0]);
        if (*n == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *sem_acquire(zk_sem *s, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t n;
    if (parse_n(args, nargs, &n, "acquire") < 0)
        return NULL;
    return sem_acquire_impl(s, n, SEM_KIND_TRUE, NULL);
}

static PyObject *sem_aenter(zk_sem *s, PyObject *Py_UNUSED(ignored)) {
    return sem_acquire_impl(s, 1, SEM_KIND_NONE, NULL);
}

static PyObject *sem_try_acquire(zk_sem *s, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t n;
    if (parse_n(args, nargs, &n, "try_acquire") < 0 || check_n(n, s) < 0)
        return NULL;
    zk_mutex_lock(&s->lock);
    int ok = s->permits >= n;
    if (ok)
        s->permits -= n;
    zk_mutex_unlock(&s->lock);
    return PyBool_FromLong(ok);
}

/* release(n): any thread.  Past the bound: ValueError or RuntimeError. */
static int sem_release_impl(zk_sem *s, Py_ssize_t n) {
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "cannot release %zd permits", n);
        return -1;
    }
    zk_waiter *done = NULL;
    PyObject *drop = NULL;
    zk_mutex_lock(&s->lock);
    /* Free permits plus what the head has been handed (by the invariant one
     * of the two is 0): the count the ceiling and the bound apply to. */
    zk_waiter *h = zk_waitlist_head_locked(&s->wl);
    Py_ssize_t free_now = s->permits + (h != NULL ? h->got : 0);
    if (n > ZK_SEM_MAX_PERMITS - free_now) {
        zk_mutex_unlock(&s->lock);
        PyErr_Format(PyExc_OverflowError,
                     "releasing %zd permits would pass the most a semaphore holds (%zd)",
                     n, (Py_ssize_t)ZK_SEM_MAX_PERMITS);
        return -1;
    }
    if (s->bound >= 0 && n > s->bound - free_now) {
        Py_ssize_t out = s->bound - free_now;
        zk_mutex_unlock(&s->lock);
        if (s->over_error == OVER_RUNTIME_ERROR)
            PyErr_SetString(PyExc_RuntimeError, "release of an unlocked lock");
        else
            PyErr_Format(PyExc_ValueError,
                         "released too many times: %zd permits released with "
                         "%zd held", n, out);
        return -1;
    }
    assign_locked(s, n, &done, &drop);
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(drop);
    complete_chain(done);
    return 0;
}

static PyObject *sem_release(zk_sem *s, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t n;
    if (parse_n(args, nargs, &n, "release") < 0 || sem_release_impl(s, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *sem_aexit(zk_sem *s, PyObject *const *args, Py_ssize_t nargs) {
    ZK_UNUSED(args), ZK_UNUSED(nargs);
    if (sem_release_impl(s, 1) < 0)
        return NULL;
    return Py_NewRef(ready_none);
}

/* acquire_blocking(n=1, timeout=None) -> bool: for plain threads. */
static PyObject *sem_acquire_blocking(zk_sem *s, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"n", "timeout", NULL};
    Py_ssize_t n = 1;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nO:acquire_blocking", kwlist, &n, &timeout))
        return NULL;
    int64_t tns;
    if (zk_timeout_arg_ns(timeout, &tns) < 0)
        return NULL;
    if (zk_current_worker != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "acquire_blocking() would block a zokio worker: use await acquire()");
        return NULL;
    }
    PyObject *r = sem_acquire_impl(s, n, SEM_KIND_TRUE, NULL);
    if (r == NULL)
        return NULL;
    if (Py_IS_TYPE(r, ready_type)) {
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    zk_waiter *w = (zk_waiter *)r;
    int got = zk_waiter_block(w, tns);
    if (got == 1) {
        Py_DECREF(w);
        Py_RETURN_TRUE;
    }
    /* Timed out or interrupted: withdraw.  If the grant won the race, it is
     * ours after all (a timeout), or goes back (an exception is raised). */
    zk_mutex_lock(&s->lock);
    zk_waiter *removed = zk_waitlist_remove_locked(&s->wl, w);
    zk_mutex_unlock(&s->lock);
    if (removed != NULL) {
        atomic_store_explicit(&w->consumed, 1, memory_order_release);
        Py_ssize_t back = w->got;
        Py_DECREF(removed);
        if (back > 0)
            sem_release_unchecked(s, back);
        Py_DECREF(w);
        if (got < 0)
            return NULL;
        Py_RETURN_FALSE;
    }
    /* Granted: wait for the completion in flight (it follows the unlock). */
    while (!zk_leaf_is_done(&w->leaf)) {
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
    if (got < 0) {
        Py_DECREF(w);  /* unconsumed: dealloc gives it back */
        return NULL;
    }
    atomic_store_explicit(&w->consumed, 1, memory_order_release);
    Py_DECREF(w);
    Py_RETURN_TRUE;
}

static PyObject *sem_get_available(zk_sem *s, void *Py_UNUSED(c)) {
    zk_mutex_lock(&s->lock);
    Py_ssize_t n = s->permits;
    zk_mutex_unlock(&s->lock);
    return PyLong_FromSsize_t(n);
}

static PyObject *sem_get_waiting(zk_sem *s, void *Py_UNUSED(c)) {
    zk_mutex_lock(&s->lock);
    Py_ssize_t n = s->wl.length;
    zk_mutex_unlock(&s->lock);
    return PyLong_FromSsize_t(n);
}

/* locked(): no permit can be taken right now. */
static PyObject *sem_locked(zk_sem *s, PyObject *Py_UNUSED(ignored)) {
    zk_mutex_lock(&s->lock);
    int locked = s->permits == 0;
    zk_mutex_unlock(&s->lock);
    return PyBool_FromLong(locked);
}

/* ---- guards ------------------------------------------------------------------ */

static zk_guard *guard_make(zk_sem *s, Py_ssize_t n, PyObject *target, int writable) {
    zk_guard *g = PyObject_GC_New(zk_guard, guard_type);
    if (g == NULL)
        return NULL;
    g->sem = (zk_sem *)Py_NewRef((PyObject *)s);
    g->target = Py_NewRef(target);
    g->n = n;
    atomic_init(&g->held, 0);
    g->writable = writable;
    g->used = 0;
    PyObject_GC_Track(g);
    return g;
}

/* guard(n, target, writable) -> an unacquired guard (async with acquires). */
static PyObject *sem_guard(zk_sem *s, PyObject *args) {
    Py_ssize_t n;
    PyObject *target;
    int writable;
    if (!PyArg_ParseTuple(args, "nOp:guard", &n, &target, &writable))
        return NULL;
    if (check_n(n, s) < 0)
        return NULL;
    return (PyObject *)guard_make(s, n, target, writable);
}

/* Acquire the guard: the await returns the guard itself. */
static PyObject *guard_acquire(zk_guard *g, PyObject *Py_UNUSED(ignored)) {
    if (g->used) {
        PyErr_SetString(PyExc_RuntimeError, "this guard was already used; get a new one");
        return NULL;
    }
    g->used = 1;
    return sem_acquire_impl(g->sem, g->n, SEM_KIND_GUARD, g);
}

/* lock_guard(): Mutex.lock() and Mutex.__aenter__: a new writable guard over
 * self, acquired. */
static PyObject *sem_lock_guard(zk_sem *s, PyObject *Py_UNUSED(ignored)) {
    zk_guard *g = guard_make(s, 1, (PyObject *)s, 1);
    if (g == NULL)
        return NULL;
    g->used = 1;
    PyObject *r = sem_acquire_impl(s, 1, SEM_KIND_GUARD, g);
    Py_DECREF(g);
    return r;
}

/* try_lock_guard() -> a held guard, or None. */
static PyObject *sem_try_lock_guard(zk_sem *s, PyObject *Py_UNUSED(ignored)) {
    zk_guard *g = guard_make(s, 1, (PyObject *)s, 1);
    if (g == NULL)
        return NULL;
    g->used = 1;
    PyObject *drop = NULL;
    zk_mutex_lock(&s->lock);
    int ok = s->permits >= 1;
    if (ok) {
        s->permits -= 1;
        grant_guard_locked(s, g, &drop);
    }
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(drop);
    if (!ok) {
        Py_DECREF(g);
        Py_RETURN_NONE;
    }
    return (PyObject *)g;
}

/* try_guard(n, target, writable) -> a held guard, or None. */
static PyObject *sem_try_guard(zk_sem *s, PyObject *args) {
    Py_ssize_t n;
    PyObject *target;
    int writable;
    if (!PyArg_ParseTuple(args, "nOp:try_guard", &n, &target, &writable))
        return NULL;
    if (check_n(n, s) < 0)
        return NULL;
    zk_guard *g = guard_make(s, n, target, writable);
    if (g == NULL)
        return NULL;
    g->used = 1;
    PyObject *drop = NULL;
    zk_mutex_lock(&s->lock);
    int ok = s->permits >= n;
    if (ok) {
        s->permits -= n;
        grant_guard_locked(s, g, &drop);
    }
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(drop);
    if (!ok) {
        Py_DECREF(g);
        Py_RETURN_NONE;
    }
    return (PyObject *)g;
}

static int guard_release_impl(zk_guard *g) {
    if (atomic_exchange_explicit(&g->held, 0, memory_order_acq_rel) == 0) {
        PyErr_SetString(PyExc_RuntimeError, "this guard does not hold the lock (released already)");
        return -1;
    }
    zk_sem *s = g->sem;
    PyObject *drop = NULL;
    zk_waiter *done = NULL;
    zk_mutex_lock(&s->lock);
    if (s->holder == (PyObject *)g) {
        drop = s->holder;
        s->holder = NULL;
    }
    assign_locked(s, g->n, &done, &drop);
    zk_mutex_unlock(&s->lock);
    Py_XDECREF(drop);
    complete_chain(done);
    return 0;
}

/* unlock_holder(): Mutex.__aexit__ / Mutex.release(): release the guard
 * that holds an exclusive semaphore. */
static PyObject *sem_unlock_holder(zk_sem *s, PyObject *const *args, Py_ssize_t nargs) {
    ZK_UNUSED(args), ZK_UNUSED(nargs);
    zk_mutex_lock(&s->lock);
    PyObject *h = s->holder != NULL ? Py_NewRef(s->holder) : NULL;
    zk_mutex_unlock(&s->lock);
    if (h == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the mutex is not locked");
        return NULL;
    }
    int r = guard_release_impl((zk_guard *)h);
    Py_DECREF(h);
    if (r < 0)
        return NULL;
    return Py_NewRef(ready_none);
}

static PyObject *guard_release(zk_guard *g, PyObject *Py_UNUSED(ignored)) {
    if (guard_release_impl(g) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *guard_aexit(zk_guard *g, PyObject *const *args, Py_ssize_t nargs) {
    ZK_UNUSED(args), ZK_UNUSED(nargs);
    if (guard_release_impl(g) < 0)
        return NULL;
    return Py_NewRef(ready_none);
}

static int guard_check(zk_guard *g) {
    if (!atomic_load_explicit(&g->held, memory_order_acquire)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this guard does not hold the lock (released, or not acquired yet)");
        return -1;
    }
    return 0;
}

static PyObject *guard_get_value(zk_guard *g, void *Py_UNUSED(c)) {
    if (guard_check(g) < 0)
        return NULL;
    return PyObject_GetAttr(g->target, str_value);
}

static int guard_set_value(zk_guard *g, PyObject *value, void *Py_UNUSED(c)) {
    if (guard_check(g) < 0)
        return -1;
    if (!g->writable) {
        PyErr_SetString(PyExc_AttributeError, "a read guard cannot change the value");
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the guarded value cannot be deleted");
        return -1;
    }
    return PyObject_SetAttr(g->target, str_value, value);
}

static PyObject *guard_get_held(zk_guard *g, void *Py_UNUSED(c)) {
    return PyBool_FromLong(atomic_load_explicit(&g->held, memory_order_acquire));
}

static int guard_traverse(zk_guard *g, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(g));
    Py_VISIT(g->sem);
    Py_VISIT(g->target);
    return 0;
}

static int guard_clear(zk_guard *g) {
    Py_CLEAR(g->target);
    return 0;
}

static void guard_dealloc(zk_guard *g) {
    PyTypeObject *tp = Py_TYPE(g);
    PyObject_GC_UnTrack(g);
    /* A held guard is referenced by its holder slot or by its user; a
     * guard dropped while held (not the holder of an exclusive semaphore)
     * releases its permits, as Tokio's guards do on drop. */
    if (atomic_exchange_explicit(&g->held, 0, memory_order_acq_rel) && g->sem != NULL)
        sem_release_unchecked(g->sem, g->n);
    Py_CLEAR(g->sem);
    Py_CLEAR(g->target);
    tp->tp_free(g);
    Py_DECREF(tp);
}

static PyObject *guard_repr(zk_guard *g) {
    return PyUnicode_FromFormat("<zokio.sync guard %s%s>", g->writable ? "write" : "read",
                                atomic_load(&g->held) ? " held" : "");
}

static PyMethodDef guard_methods[] = {
    {"release", (PyCFunction)guard_release, METH_NOARGS,
     "Give the lock back; the guard is unusable afterwards."},
    {"acquire", (PyCFunction)guard_acquire, METH_NOARGS, NULL},
    {"__aenter__", (PyCFunction)guard_acquire, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))guard_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef guard_getset[] = {
    {"value", (getter)guard_get_value, (setter)guard_set_value,
     "The guarded value; only while the guard holds the lock.", NULL},
    {"held", (getter)guard_get_held, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *guard_await(PyObject *g) {
    return guard_acquire((zk_guard *)g, NULL);
}

static PyType_Slot guard_slots[] = {
    {Py_am_await, guard_await},
    {Py_tp_dealloc, guard_dealloc},
    {Py_tp_traverse, guard_traverse},
    {Py_tp_clear, guard_clear},
    {Py_tp_methods, guard_methods},
    {Py_tp_getset, guard_getset},
    {Py_tp_repr, guard_repr},
    {Py_tp_doc, "Access to a Mutex's or RwLock's value while the lock is held."},
    {0, NULL},
};

static PyType_Spec guard_spec = {
    .name = "zokio.sync.Guard",
    .basicsize = sizeof(zk_guard),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = guard_slots,
};

/* ---- the Semaphore type's table ------------------------------------------------ */

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef sem_methods[] = {
    {"acquire", FASTCALL(sem_acquire),
     "acquire(n=1) -> awaitable: True once n permits are held (FIFO)."},
    {"try_acquire", FASTCALL(sem_try_acquire),
     "try_acquire(n=1) -> bool: take n permits if free and nobody waits."},
    {"release", FASTCALL(sem_release), "release(n=1): any thread."},
    {"acquire_blocking", (PyCFunction)(void (*)(void))sem_acquire_blocking,
     METH_VARARGS | METH_KEYWORDS,
     "acquire_blocking(n=1, timeout=None) -> bool: for plain threads."},
    {"locked", (PyCFunction)sem_locked, METH_NOARGS, NULL},
    {"__aenter__", (PyCFunction)sem_aenter, METH_NOARGS, NULL},
    {"__aexit__", FASTCALL(sem_aexit), NULL},
    {"_guard", (PyCFunction)sem_guard, METH_VARARGS, NULL},
    {"_try_guard", (PyCFunction)sem_try_guard, METH_VARARGS, NULL},
    {"_lock_guard", (PyCFunction)sem_lock_guard, METH_NOARGS, NULL},
    {"_try_lock_guard", (PyCFunction)sem_try_lock_guard, METH_NOARGS, NULL},
    {"_unlock_holder", FASTCALL(sem_unlock_holder), NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sem_getset[] = {
    {"available", (getter)sem_get_available, NULL, "permits free right now", NULL},
    {"waiting", (getter)sem_get_waiting, NULL, "parked acquirers", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sem_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(zk_sem, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot sem_slots[] = {
    {Py_tp_new, sem_new},
    {Py_tp_dealloc, sem_dealloc},
    {Py_tp_traverse, sem_traverse},
    {Py_tp_clear, sem_clear},
    {Py_tp_methods, sem_methods},
    {Py_tp_getset, sem_getset},
    {Py_tp_members, sem_members},
    {Py_tp_doc, "The batch semaphore under zokio.sync's locks (FIFO, direct handoff)."},
    {0, NULL},
};

static PyType_Spec sem_spec = {
    .name = "zokio._native.BatchSemaphore",
    .basicsize = sizeof(zk_sem),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = sem_slots,
};

int zk_semaphore_types_init(PyObject *module, zk_state *st) {
    ZK_UNUSED(st);
    str_value = PyUnicode_InternFromString("_value");
    if (str_value == NULL)
        return -1;
    ready_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ready_spec, NULL);
    guard_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &guard_spec, NULL);
    sem_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sem_spec, NULL);
    if (ready_type == NULL || guard_type == NULL || sem_type == NULL)
        return -1;
    zk_immortalize((PyObject *)ready_type);
    zk_immortalize((PyObject *)guard_type);
    ready_none = ready_new(Py_None);
    ready_true = ready_new(Py_True);
    ready_false = ready_new(Py_False);
    if (ready_none == NULL || ready_true == NULL || ready_false == NULL)
        return -1;
    zk_immortalize(ready_none);
    zk_immortalize(ready_true);
    zk_immortalize(ready_false);
    if (PyModule_AddObjectRef(module, "BatchSemaphore", (PyObject *)sem_type) < 0 ||
        PyModule_AddObjectRef(module, "Guard", (PyObject *)guard_type) < 0 ||
        PyModule_AddObjectRef(module, "Ready", (PyObject *)ready_type) < 0)
        return -1;
    return 0;
}
