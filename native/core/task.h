/* task.h -- the Task object and its state word (after Tokio task/state.rs).
 *
 * A Task is a coroutine plus one atomic state word.  The word is changed only
 * by the transition_* functions below, each a single CAS loop returning an
 * outcome the caller must act on.  The word is what guarantees exactly one
 * thread polls a coroutine at a time: on 3.13t two threads sending into the
 * same coroutine can crash the interpreter (CPython gh-120321).
 *
 * Reference counting replaces Tokio's ref bits.  The scheduler's live-task
 * registry owns one strong reference from spawn until completion, and every
 * registered waker owns one.  Queue entries borrow: a task is queued only
 * while NOTIFIED and never after COMPLETE (completion happens under RUNNING,
 * when no entry exists), so the registry keeps every queued task alive.
 * Borrowing matters on 3.13t: a queue reference taken on the spawning thread
 * and dropped on the worker that ran the task is a cross-thread decref, which
 * goes through CPython's biased-refcount queue on every task.
 */
#ifndef ZOKIO_TASK_H
#define ZOKIO_TASK_H

#include "core/state.h"

/* The task is being polled by some worker.  Set and cleared only by that
 * worker (transition_to_running / transition_to_idle / _complete). */
#define ZK_RUNNING   ((uint32_t)1u << 0)
/* The coroutine finished (returned, raised, or was abandoned).  Once this bit
 * is set, it is never unset, and result/exception are immutable. */
#define ZK_COMPLETE  ((uint32_t)1u << 1)
/* The task sits in a run queue, or must be re-queued when its current poll
 * ends.  At most one queue entry exists while this bit is set. */
#define ZK_NOTIFIED  ((uint32_t)1u << 2)
/* cancel() was called.  Once set, never unset. */
#define ZK_CANCELLED ((uint32_t)1u << 3)
/* An interrupt (Cancelled or a timeout marker) waits in `interrupt` to be
 * thrown at the next poll.  Set under the task's lock, cleared by the poller. */
#define ZK_INTERRUPT ((uint32_t)1u << 4)
/* The task failed and its exception reached someone (await, result(),
 * exception()): no "never retrieved" log when the handle dies.  Set after
 * completion by any joiner; never unset. */
#define ZK_EXC_RETRIEVED ((uint32_t)1u << 5)
/* The exception object itself was raised to one joiner.  Every later joiner
 * gets a copy carrying the task's own traceback (see task.c: a raised
 * exception's __traceback__ grows as it unwinds, so one object must never
 * unwind on two threads at once).  Set once by an atomic fetch_or. */
#define ZK_EXC_RAISED ((uint32_t)1u << 6)
/* The coroutine was resumed by someone other than this task while the task
 * owned it (see "one runner per coroutine" in task.c).  The task fails with
 * RuntimeError at its next poll instead of sending into it.  Runner only. */
#define ZK_CORO_LOST ((uint32_t)1u << 7)
/* The task has entered a cancel scope (leaf.h) at least once: a pending
 * interrupt is then chosen by walking its scopes (task.c, "cancel scopes")
 * instead of taken as it is.  Set by the task itself; never unset. */
#define ZK_SCOPED ((uint32_t)1u << 8)

struct zk_task {
    PyObject_HEAD
    _Atomic uint32_t state;
    int16_t home;               /* worker that spawned it, or -1: the
                                   registry's reference is dropped there */
    uint8_t failed : 1;         /* outcome is (exception, traceback); written
                                   once, before COMPLETE is published */
    uint8_t yield_resume : 1;   /* yield_now registered; next __next__ returns */
    uint8_t coro_saved : 2;     /* frame state to restore before the next
                                   send while the task holds its coroutine
                                   (ZK_CORO_* in task.c); runner only */
    uint8_t coro_typed : 1;     /* the coroutine's type is OwnedCoroutine
                                   while this task owns it (task.c) */
    zk_mutex lock;              /* guards waiters and interrupt; on 3.13+ one
                                   byte: with the fields above it fills the
                                   word after PyObject_HEAD (keeps the task at
                                   128 bytes, a mimalloc size class) */
    PyObject *coro;             /* owned until the handle dies */
    PyObject *context;          /* contextvars.Context copy, owned */
    PyObject *name;             /* str or NULL */
    PyObject *outcome;          /* result, or (exception, traceback at
                                   completion) if `failed`; valid once
                                   COMPLETE is seen with acquire */
    PyObject *waiting_on;       /* leaf the coroutine yielded; only the
                                   thread holding RUNNING touches it */
    zk_state *st;               /* module state (lives as long as the module) */
    zk_sched *sched;            /* borrowed: outlives every task that is not
                                   complete (shutdown abandons the rest) */
    PyObject *waiters;          /* NULL, one waiter (a task to wake or a
                                   callable to call), or a list of them */
    PyObject *interrupt;        /* exception to throw at the next poll */
    zk_task *owned_prev;        /* live-task registry of the scheduler */
    zk_task *owned_next;        /* after completion: link in the home
                                   worker's release stack */
};

#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030D0000
/* Idle-task memory is a benchmarked figure: 128 bytes is a mimalloc size
 * class, one byte more costs 16. */
_Static_assert(sizeof(struct zk_task) <= 128, "zk_task grew past 128 bytes");
#endif

typedef enum {
    ZK_WAKE_DO_NOTHING = 0,  /* already queued, complete, or the poller will
                                re-queue it */
    ZK_WAKE_SUBMIT = 1,      /* caller must take a reference and queue it */
} zk_wake_outcome;

/* wake: idle -> NOTIFIED (submit); RUNNING -> RUNNING|NOTIFIED (the poller
 * re-queues); NOTIFIED or COMPLETE -> nothing.  acq_rel: pairs with the
 * poller's transition_to_idle so a wake during a poll is never lost. */
static inline zk_wake_outcome zk_transition_to_notified(zk_task *t) {
    uint32_t cur = atomic_load_explicit(&t->state, memory_order_acquire);
    for (;;) {
        if (cur & (ZK_NOTIFIED | ZK_COMPLETE))
            return ZK_WAKE_DO_NOTHING;
        uint32_t next = cur | ZK_NOTIFIED;
        if (atomic_compare_exchange_weak_explicit(&t->state, &cur, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            return (cur & ZK_RUNNING) ? ZK_WAKE_DO_NOTHING : ZK_WAKE_SUBMIT;
    }
}

typedef enum {
    ZK_RUN_OK = 0,       /* we hold RUNNING; poll the coroutine */
    ZK_RUN_DONE = 1,     /* already complete: drop the queue's reference */
} zk_run_outcome;

/* poll start: NOTIFIED -> RUNNING.  Acquire: pairs with the release of the
 * previous poller's transition_to_idle, so its writes to the coroutine are
 * visible here. */
static inline zk_run_outcome zk_transition_to_running(zk_task *t) {
    uint32_t cur = atomic_load_explicit(&t->state, memory_order_acquire);
    for (;;) {
        if (cur & ZK_COMPLETE)
            return ZK_RUN_DONE;
        uint32_t next = (cur & ~ZK_NOTIFIED) | ZK_RUNNING;
        if (atomic_compare_exchange_weak_explicit(&t->state, &cur, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            return ZK_RUN_OK;
    }
}

typedef enum {
    ZK_IDLE_OK = 0,        /* parked; some waker will queue it */
    ZK_IDLE_REQUEUE = 1,   /* woken during the poll: re-queue (keep NOTIFIED) */
} zk_idle_outcome;

/* poll end: RUNNING -> idle, or RUNNING|NOTIFIED -> NOTIFIED (requeue).
 * Release: publishes the coroutine's new state to the next poller. */
static inline zk_idle_outcome zk_transition_to_idle(zk_task *t) {
    uint32_t cur = atomic_load_explicit(&t->state, memory_order_acquire);
    for (;;) {
        uint32_t next = cur & ~ZK_RUNNING;
        if (atomic_compare_exchange_weak_explicit(&t->state, &cur, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            return (cur & ZK_NOTIFIED) ? ZK_IDLE_REQUEUE : ZK_IDLE_OK;
    }
}

/* completion: RUNNING -> COMPLETE (NOTIFIED dropped: nothing will poll it
 * again; a queued duplicate sees COMPLETE in transition_to_running).
 * Release: publishes result/exception to joiners (acquire in is_complete). */
static inline void zk_transition_to_complete(zk_task *t) {
    uint32_t cur = atomic_load_explicit(&t->state, memory_order_acquire);
    for (;;) {
        uint32_t next = (cur & ~(ZK_RUNNING | ZK_NOTIFIED)) | ZK_COMPLETE;
        if (atomic_compare_exchange_weak_explicit(&t->state, &cur, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            return;
    }
}

/* ---- the task API (task.c) ------------------------------------------------ */

int zk_task_type_init(PyObject *module, zk_state *st);
zk_task *zk_task_new(zk_state *st, zk_sched *s, PyObject *coro, PyObject *name);
/* Wake from any thread.  Borrowed reference. */
void zk_task_wake(zk_task *t);
/* Poll once on worker w (t comes from a queue; may be freed on return). */
void zk_task_run(zk_worker *w, zk_task *t);
/* Request cancellation (any thread).  Returns 1 if the request was new. */
int zk_task_cancel(zk_task *t);
/* Cancel scopes (leaf.h; the rules are at "cancel scopes" in task.c).
 * scope_state and shield are read and written under the task's lock, so
 * expiry or cancel() (any thread) and exit (the task's thread) cannot both
 * act.
 *   fire      ARMED -> FIRED: the scope is cancelled; the task is
 *             interrupted at its current or next suspension point inside
 *             it, and at every one after, until it exits.  Any thread.
 *             Returns 1 if it was armed.
 *   disarm    -> DISARMED (the scope exits, on the task's thread); an
 *             interrupt of this scope not yet delivered is taken back; a
 *             shield that ends lets what it deferred through.  Returns 1 if
 *             the scope had been cancelled.
 *   changed   the scope's shield went off, or (rearm) its deadline moved
 *             on a thread that could not file its timer: the task is woken
 *             to re-evaluate (and its runner files the timer).  Any thread.
 */
enum { ZK_SCOPE_IDLE = 0, ZK_SCOPE_ARMED = 1, ZK_SCOPE_FIRED = 2, ZK_SCOPE_DISARMED = 3 };
int zk_task_fire_scope(zk_task *t, zk_timeout_scope *scope);
int zk_task_disarm_scope(zk_task *t, zk_timeout_scope *scope);
void zk_task_scope_changed(zk_task *t, zk_timeout_scope *scope, int rearm);
/* After the scheduler stopped: close the coroutine of a task that never
 * finished and complete it as cancelled.  No worker may be running. */
void zk_task_abandon(zk_task *t);
/* A spawn that lost the race with shutdown: the task was registered but
 * never queued.  Close its coroutine and complete it as cancelled. */
int zk_task_refuse(zk_task *t);
int zk_task_is_complete(zk_task *t);
/* Add `waiter` (a task to wake, or a callable to call with the task) to run
 * when t completes.  Returns 1 if added, 0 if t is already complete, -1 on
 * error. */
int zk_task_add_waiter(zk_task *t, PyObject *waiter);
void zk_task_remove_waiter(zk_task *t, PyObject *waiter);

#endif
