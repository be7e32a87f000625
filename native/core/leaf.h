/* leaf.h -- what a task can await (leaf.c), and the timers embedded in
 * leaves.
 *
 * A coroutine suspends by yielding a leaf; the worker registers the task as
 * the leaf's waker (zk_awaitable_register) and later asks whether a wake is
 * real (zk_awaitable_ready).  The waker handshake that makes this safe from
 * any thread is described at the top of leaf.c.
 */
#ifndef ZOKIO_LEAF_H
#define ZOKIO_LEAF_H

#include "core/state.h"
#include "core/timer_wheel.h"

/* ---- timers ------------------------------------------------------------ */

typedef enum zk_timer_kind {
    ZK_TIMER_SLEEP = 1,
    ZK_TIMER_TIMEOUT = 2,
    ZK_TIMER_KINDS
} zk_timer_kind;

/* A timer embedded in a Python object (Sleep leaf or TimeoutScope).  The wheel
 * holds a strong reference to `owner` while the entry is linked. */
struct zk_timer {
    zk_timer_entry entry;   /* must stay first: the wheel hands it back;
                               entry.tag holds the zk_timer_kind, which says
                               which object contains the timer
                               (zk_timer_owner) */
    _Atomic(zk_worker *) worker;  /* wheel it was last filed in; set under
                               that wheel's lock (sched.c) */
    int64_t deadline_ns;    /* absolute, zk_monotonic_ns() clock */
};

/* ---- leaves ------------------------------------------------------------ */

/* Every awaitable leaf begins with this header.  `waker` holds a strong
 * reference to the task waiting on the leaf; it is taken with an atomic
 * exchange by exactly one of: the completer (which wakes it) or the canceller
 * (which drops it). */
struct zk_leaf {
    PyObject_HEAD
    _Atomic(zk_task *) waker;
    _Atomic int done;        /* ZK_LEAF_*: goes PENDING -> COMPLETING -> DONE
                                once; DONE is stored last (release) */
    PyObject *value;         /* result, valid once done (acquire) */
    PyObject *exc;           /* exception instance, or NULL */
};

typedef struct zk_sleep {
    zk_leaf leaf;
    zk_timer timer;
} zk_sleep;

/* A cancel scope (zokio.CancelScope, move_on_after and the others,
 * zokio.timeout): a region of one task's code that can be cancelled, by its
 * deadline or by cancel() from any thread.  Once cancelled, it interrupts its task at every
 * suspension point inside it until it exits (task.c, "cancel scopes").
 * Entered with arm() on the task's own thread, which links it to the
 * enclosing scope (kept in the task's context, zk_state.scope_var) and makes
 * it the innermost one; left with disarm(). */
struct zk_timeout_scope {
    PyObject_HEAD
    zk_timer timer;          /* deadline_ns is read by any thread: atomic
                                builtins; filed and re-filed under dl_lock */
    _Atomic(zk_task *) task; /* strong; set once by arm(), then constant */
    PyObject *outer;         /* the enclosing scope when this one was
                                entered (or the one given to the
                                constructor), or NULL; strong.  Possibly
                                another task's (a spawned child inherits its
                                parent's context) */
    PyObject *token;         /* contextvars.Token of the arm() that made
                                this scope the innermost, or NULL */
    zk_worker *arm_worker;   /* the worker that armed it */
    double deadline;         /* as set (seconds, zokio.monotonic clock);
                                under dl_lock */
    int scope_state;         /* ZK_SCOPE_* (task.h); under the task's lock
                                once armed */
    uint8_t shield;          /* under the task's lock once armed */
    _Atomic uint8_t cancel_called;  /* cancel() was called (any thread) */
    _Atomic uint8_t rearm;   /* the deadline moved on a thread that could
                                not file the timer: the task's runner files
                                it (set under the task's lock) */
    uint8_t dl_closed;       /* exited: the timer is never filed again;
                                under dl_lock */
    zk_mutex dl_lock;        /* serialises filing the timer: arm, deadline
                                moves (cancel and file again), cancel, exit */
};

/* File sc's timer again in w's wheel (its deadline moved).  Returns 1 if
 * the deadline has already passed: the caller fires the scope. */
int zk_scope_file_timer(zk_worker *w, zk_timeout_scope *sc);
/* TimeoutScope(deadline, outer, shield) without argument parsing: `type`
 * is zk_state.TimeoutScopeType, `outer` may be NULL. */
PyObject *zk_scope_new(PyTypeObject *type, double deadline, PyObject *outer, int shield);
/* scope.arm(relative) and scope.disarm() for C callers (the CancelScope
 * fast path): 0 / 1 (disarm: the scope fired), or -1 with an exception. */
int zk_scope_arm(zk_timeout_scope *self, PyObject *relative);
int zk_scope_disarm(zk_timeout_scope *self);
#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030D0000
/* A sleeping task pays for its Sleep: 112 bytes is a mimalloc size class. */
_Static_assert(sizeof(zk_sleep) <= 112, "zk_sleep grew past 112 bytes");
#endif

/* What differs between timer kinds, one row per zk_timer_kind (leaf.c). */
typedef struct zk_timer_ops {
    size_t owner_offset;     /* offsetof(<object that embeds it>, timer) */
    /* The timer is due.  Attached; on the wheel's owner, or on the monitor
     * thread for a stuck owner (sched.c). */
    void (*fire)(zk_state *st, zk_timer *timer);
} zk_timer_ops;
extern const zk_timer_ops zk_timer_kinds[ZK_TIMER_KINDS];

/* The Python object that embeds `timer` (a Sleep or a TimeoutScope). */
static inline PyObject *zk_timer_owner(zk_timer *timer) {
    return (PyObject *)((char *)timer - zk_timer_kinds[timer->entry.tag].owner_offset);
}

/* Called when a timer entry is due (see zk_timer_ops.fire). */
static inline void zk_timer_fire(zk_state *st, zk_timer *timer) {
    zk_timer_kinds[timer->entry.tag].fire(st, timer);
}

enum { ZK_LEAF_PENDING = 0, ZK_LEAF_COMPLETING = 1, ZK_LEAF_DONE = 2 };

static inline int zk_leaf_is_done(zk_leaf *l) {
    return atomic_load_explicit(&l->done, memory_order_acquire) == ZK_LEAF_DONE;
}

/* Complete a leaf with a value (stolen) or an exception (stolen) and wake the
 * task registered on it.  Any thread, attached.  Returns 0, or 1 if the leaf
 * was already complete (the references are then released). */
int zk_leaf_complete(zk_state *st, zk_leaf *leaf, PyObject *value, PyObject *exc);

/* The shared machinery of leaves, for leaf types defined outside leaf.c (the
 * Op leaf, io/op_leaf.c).  A leaf type embeds zk_leaf first. */
void zk_leaf_init(zk_leaf *l);
/* The registrar's half of the waker handshake (top of leaf.c).  Returns 0,
 * or -1 with RuntimeError if another task already waits on the leaf. */
int zk_leaf_register_waker(zk_leaf *leaf, zk_task *task);
/* Drop the registered waker, if any (the task is being interrupted). */
void zk_leaf_unregister_waker(zk_leaf *leaf);
/* A completed leaf's outcome the way __next__ returns it: NULL with
 * StopIteration(value) set (no exception for None), or NULL with the stored
 * exception raised. */
PyObject *zk_leaf_outcome(zk_leaf *l);
/* Return v (stolen) from __next__: NULL with StopIteration(v) set, from a
 * per-thread cached instance (leaf.c); None sets nothing. */
PyObject *zk_return_value(PyObject *v);
/* Let go of the value the thread's cached StopIteration still holds (a
 * worker about to park), or of the cache itself (a worker exiting).
 * Attached. */
void zk_return_value_release(void);
void zk_return_value_drop(void);
/* Type slots: __next__ (the outcome once done, while the cooperative budget
 * lasts, else yield the leaf), __await__, GC traverse/clear, dealloc. */
PyObject *zk_leaf_iternext(zk_leaf *self);
PyObject *zk_leaf_await(PyObject *self);
int zk_leaf_traverse(zk_leaf *self, visitproc visit, void *arg);
int zk_leaf_clear(zk_leaf *self);
void zk_leaf_dealloc(zk_leaf *self);

/* ---- awaitable kinds --------------------------------------------------- */

/* What the kernel does with an awaited object of one kind.  Each kind
 * defines one table next to its type (Task: task.c; YieldNow, Oneshot,
 * Sleep: leaf.c; Op: io/op_leaf.c) and registers it with zk_leaf_kind_add;
 * the calls below find it from the object's type, so no function tests
 * types one by one.  Every hook runs on the worker polling the task,
 * attached. */
struct zk_leaf_ops {
    /* Would resuming the task make progress?  Filters spurious wakes. */
    int (*ready)(PyObject *obj);
    /* The task's coroutine just yielded obj: make obj wake the task.
     * Returns 0, or -1 with an exception to throw into the coroutine. */
    int (*register_waker)(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj);
    /* Undo register_waker because the task is being interrupted (cancel or
     * timeout): unregister timers, cancel ops. */
    void (*unregister)(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj);
    /* How an interrupt reaches a task suspended on obj (ZK_INTERRUPT_*
     * below).  NULL: always ZK_INTERRUPT_NOW. */
    int (*interrupt_mode)(zk_state *st, zk_worker *w, PyObject *obj);
};

/* A task with a pending interrupt is suspended on `obj`.  For an I/O op
 * still in flight the interrupt must wait for the op's own completion, or
 * data the kernel already moved would be lost.  interrupt_mode returns:
 *   ZK_INTERRUPT_NOW    throw the interrupt now (not an op, or the op ended
 *                       by cancellation)
 *   ZK_INTERRUPT_WAIT   op cancel requested; stay suspended until it ends
 *   ZK_INTERRUPT_LATER  the op completed with a real result: resume the
 *                       coroutine with it, throw at the next suspension */
enum { ZK_INTERRUPT_NOW = 0, ZK_INTERRUPT_WAIT = 1, ZK_INTERRUPT_LATER = 2 };

/* Make objects of `type` awaitable by zokio tasks.  Module init only; the
 * kinds awaited most should be added first.  Returns 0, or -1 with
 * RuntimeError when ZK_LEAF_KINDS_MAX is reached. */
int zk_leaf_kind_add(zk_state *st, PyTypeObject *type, const zk_leaf_ops *ops);

/* The ops of obj's kind, or NULL if obj is not a zokio awaitable.  It runs
 * twice for every await that suspends, so it is what a chain of type
 * compares was: a fixed, unrolled row of them, hottest kind first, no
 * end-of-list test (an unused entry is NULL, which no type equals). */
static inline const zk_leaf_ops *zk_leaf_ops_of(zk_state *st, PyObject *obj) {
    PyTypeObject *tp = Py_TYPE(obj);
#pragma GCC unroll 8
    for (int i = 0; i < ZK_LEAF_KINDS_MAX; i++)
        if (st->leaf_kind_type[i] == tp)
            return st->leaf_kind_ops[i];
    return NULL;
}

/* Is `obj` (something a coroutine yielded) ready, so that resuming the task
 * makes progress?  Used to filter spurious wakes. */
static inline int zk_awaitable_ready(zk_state *st, PyObject *obj) {
    const zk_leaf_ops *ops = zk_leaf_ops_of(st, obj);
    return ops == NULL || ops->ready(obj);
}

/* TypeError for a task that awaited something zokio cannot wait on. */
int zk_awaitable_foreign(PyObject *obj);

/* Register `task` as the waker of `obj`, which its coroutine just yielded.
 * Returns 0, or -1 with an exception set that must be thrown into the
 * coroutine (e.g. a foreign awaitable). */
static inline int zk_awaitable_register(zk_state *st, zk_worker *w, zk_task *task,
                                        PyObject *obj) {
    const zk_leaf_ops *ops = zk_leaf_ops_of(st, obj);
    if (ops == NULL)
        return zk_awaitable_foreign(obj);
    return ops->register_waker(st, w, task, obj);
}

/* See zk_leaf_ops.interrupt_mode. */
static inline int zk_awaitable_interrupt_mode(zk_state *st, zk_worker *w, PyObject *obj) {
    const zk_leaf_ops *ops = zk_leaf_ops_of(st, obj);
    if (ops == NULL || ops->interrupt_mode == NULL)
        return ZK_INTERRUPT_NOW;
    return ops->interrupt_mode(st, w, obj);
}

/* Undo a registration because the task is being interrupted (cancel or
 * timeout).  Unregisters timers and cancels ops.  Attached. */
static inline void zk_awaitable_unregister(zk_state *st, zk_worker *w, zk_task *task,
                                           PyObject *obj) {
    const zk_leaf_ops *ops = zk_leaf_ops_of(st, obj);
    if (ops != NULL)
        ops->unregister(st, w, task, obj);
}

int zk_leaf_types_init(PyObject *module, zk_state *st);
PyObject *zk_sleep_new(zk_state *st, int64_t deadline_ns);

#endif
