/* zokio.h -- declarations shared by the kernel's files.
 *
 * Map of the kernel (docs/architecture.md draws the same boxes):
 *   task.h / task.c         Task (the JoinHandle) and its atomic state word
 *   leaf.c                  what a task can await: yield_now, Oneshot, Sleep,
 *                           Op (I/O), TimeoutScope -- and how each registers
 *                           the task's waker
 *   sched.c                 workers, run queues, stealing, parking, mailboxes
 *   run_queue.c             local deque (steal-half) and inject queue
 *   timer_wheel.c           hierarchical timing wheel (one per worker)
 *   port*.c                 completion port: io_uring and epoll backends
 *   blocking_pool.c         spawn_blocking threads
 *   module.c                Python bindings only
 */
#ifndef ZOKIO_H
#define ZOKIO_H

#include "core/compat.h"
#include "io/port.h"
#include "core/run_queue.h"
#include "core/timer_wheel.h"

typedef struct zk_sched zk_sched;
typedef struct zk_worker zk_worker;
typedef struct zk_task zk_task;
typedef struct zk_blocking_pool zk_blocking_pool;

/* Module state: every type and exception the kernel needs.  No static
 * PyObject globals: a scheduler keeps a strong reference to its module so
 * this struct outlives every worker that reads it. */
typedef struct zk_state {
    PyTypeObject *TaskType;
    PyTypeObject *OneshotType;
    PyTypeObject *SleepType;
    PyTypeObject *OpType;
    PyTypeObject *TimeoutScopeType;
    PyTypeObject *YieldNowType;
    PyTypeObject *SchedulerType;
    PyObject *Cancelled;        /* zokio.Cancelled (BaseException) */
    PyObject *yield_now;        /* the one YieldNow instance */
    PyObject *str_throw;        /* interned "throw" */
    PyObject *str_close;        /* interned "close" */
} zk_state;

/* ---- time ------------------------------------------------------------- */

int64_t zk_monotonic_ns(void);

/* ---- thread-local context --------------------------------------------- */

/* The worker running on this thread (NULL on other threads) and the task it
 * is polling right now (NULL between polls).  Only the owning thread reads or
 * writes them. */
/* initial-exec: the extension is loaded once, and the general-dynamic model
 * would cost a __tls_get_addr call on every access on the hot path. */
#define ZK_TLS _Thread_local __attribute__((tls_model("initial-exec")))
extern ZK_TLS zk_worker *zk_current_worker;
extern ZK_TLS zk_task *zk_current_task;
/* Cooperative budget of the current poll: leaves that are already complete
 * return at once while this is positive, then force a yield (see leaf.c). */
extern ZK_TLS int zk_coop_budget;
/* Nonzero while this thread closes the coroutine of an abandoned task:
 * zokio awaitables then suspend instead of raising (task.c). */
extern ZK_TLS int zk_abandoning;
#define ZK_COOP_BUDGET 128

/* ---- timers ------------------------------------------------------------ */

typedef enum zk_timer_kind {
    ZK_TIMER_SLEEP = 1,
    ZK_TIMER_TIMEOUT = 2,
} zk_timer_kind;

/* A timer embedded in a Python object (Sleep leaf or TimeoutScope).  The wheel
 * holds a strong reference to `owner` while the entry is linked. */
typedef struct zk_timer {
    zk_timer_entry entry;   /* must stay first: the wheel hands it back;
                               entry.tag holds the zk_timer_kind, which says
                               which object contains the timer
                               (zk_timer_owner) */
    _Atomic(zk_worker *) worker;  /* wheel it was last filed in; set under
                               that wheel's lock (sched.c) */
    int64_t deadline_ns;    /* absolute, zk_monotonic_ns() clock */
} zk_timer;

/* ---- leaves (leaf.c) ---------------------------------------------------- */

/* Every awaitable leaf begins with this header.  `waker` holds a strong
 * reference to the task waiting on the leaf; it is taken with an atomic
 * exchange by exactly one of: the completer (which wakes it) or the canceller
 * (which drops it). */
typedef struct zk_leaf {
    PyObject_HEAD
    _Atomic(zk_task *) waker;
    _Atomic int done;        /* 0 pending, 1 done; set once (release) */
    PyObject *value;         /* result, valid once done (acquire) */
    PyObject *exc;           /* exception instance, or NULL */
} zk_leaf;

typedef struct zk_sleep {
    zk_leaf leaf;
    zk_timer timer;
} zk_sleep;

typedef struct zk_io_op {
    zk_leaf leaf;
    zk_op op;
    Py_buffer view;          /* pinned until the op's own completion */
    PyObject *read_buf;      /* bytearray for reads */
    zk_worker *worker;       /* port it was submitted to */
    int submitted;           /* in flight; written by the owning worker */
    int view_held;
    int cancel_requested;    /* an interrupt asked the port to cancel it */
    int ended_by_cancel;     /* its completion was -ECANCELED */
} zk_io_op;

typedef struct zk_timeout_scope {
    PyObject_HEAD
    zk_timer timer;
    zk_task *task;           /* strong; the task this scope interrupts */
    PyObject *marker;        /* the Cancelled instance thrown on expiry */
    int scope_state;         /* ZK_SCOPE_*, under the task's lock */
    uint64_t arm_seq;        /* order of arming: an outer scope of a task
                                has the smaller number (task.c) */
} zk_timeout_scope;

#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030D0000
/* A sleeping task pays for its Sleep: 112 bytes is a mimalloc size class. */
_Static_assert(sizeof(zk_sleep) <= 112, "zk_sleep grew past 112 bytes");
#endif

/* The Python object that embeds `timer` (a Sleep or a TimeoutScope). */
static inline PyObject *zk_timer_owner(zk_timer *timer) {
    size_t off = timer->entry.tag == ZK_TIMER_SLEEP ? offsetof(zk_sleep, timer)
                                                    : offsetof(zk_timeout_scope, timer);
    return (PyObject *)((char *)timer - off);
}

/* Complete a leaf with a value (stolen) or an exception (stolen) and wake the
 * task registered on it.  Any thread, attached.  Returns 0, or 1 if the leaf
 * was already complete (the references are then released). */
int zk_leaf_complete(zk_state *st, zk_leaf *leaf, PyObject *value, PyObject *exc);

/* Is `obj` (something a coroutine yielded) ready, so that resuming the task
 * makes progress?  Used to filter spurious wakes. */
int zk_awaitable_ready(zk_state *st, PyObject *obj);

/* Register `task` as the waker of `obj`, which its coroutine just yielded.
 * Returns 0, or -1 with an exception set that must be thrown into the
 * coroutine (e.g. a foreign awaitable). */
int zk_awaitable_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj);

/* A task with a pending interrupt is suspended on `obj`.  For an I/O op
 * still in flight the interrupt must wait for the op's own completion, or
 * data the kernel already moved would be lost.  Returns:
 *   ZK_INTERRUPT_NOW    throw the interrupt now (not an op, or the op ended
 *                       by cancellation)
 *   ZK_INTERRUPT_WAIT   op cancel requested; stay suspended until it ends
 *   ZK_INTERRUPT_LATER  the op completed with a real result: resume the
 *                       coroutine with it, throw at the next suspension */
enum { ZK_INTERRUPT_NOW = 0, ZK_INTERRUPT_WAIT = 1, ZK_INTERRUPT_LATER = 2 };
int zk_awaitable_interrupt_mode(zk_state *st, zk_worker *w, PyObject *obj);

/* Undo a registration because the task is being interrupted (cancel or
 * timeout).  Unregisters timers and cancels ops.  Attached. */
void zk_awaitable_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj);

/* Called by the owning worker when a timer entry fires or is cancelled. */
void zk_timer_fire(zk_state *st, zk_timer *timer);
/* Called by the owning worker when an op record completes. */
void zk_io_op_complete(zk_op *op, int64_t result);

int zk_leaf_types_init(PyObject *module, zk_state *st);
PyObject *zk_sleep_new(zk_state *st, int64_t deadline_ns);
PyObject *zk_io_op_new(zk_state *st, zk_opcode opcode, int fd, PyObject *data,
                       Py_ssize_t nbytes, int64_t offset);

/* ---- tasks (task.c) ----------------------------------------------------- */

int zk_task_type_init(PyObject *module, zk_state *st);
zk_task *zk_task_new(zk_state *st, zk_sched *s, PyObject *coro, PyObject *name);
/* Wake from any thread.  Borrowed reference. */
void zk_task_wake(zk_task *t);
/* Poll once on worker w (t comes from a queue; may be freed on return). */
void zk_task_run(zk_worker *w, zk_task *t);
/* Request cancellation (any thread).  Returns 1 if the request was new. */
int zk_task_cancel(zk_task *t);
/* Timeout scopes.  scope_state is read and written only under the task's
 * lock, so expiry (on the timer's worker) and exit (on the task's thread)
 * cannot both act.  fire: ARMED -> FIRED and interrupt the task with
 * `marker` at its next suspension point.  disarm: -> DISARMED; an interrupt
 * that was placed but not yet delivered is taken back.  disarm returns 1 if
 * the scope had fired. */
enum { ZK_SCOPE_IDLE = 0, ZK_SCOPE_ARMED = 1, ZK_SCOPE_FIRED = 2, ZK_SCOPE_DISARMED = 3 };
int zk_task_fire_scope(zk_task *t, zk_timeout_scope *scope);
int zk_task_disarm_scope(zk_task *t, zk_timeout_scope *scope);
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

/* ---- scheduler (sched.c) ------------------------------------------------ */

int zk_sched_type_init(PyObject *module, zk_state *st);
/* Queue a runnable task.  The entry borrows `t`: the live-task registry
 * keeps every queued task alive (see task.h).
 * `lifo`: the running task woke it (cache-hot; use the LIFO slot). */
void zk_sched_schedule(zk_sched *s, zk_task *t, int lifo);
/* Queue a task that is yielding: to the back of a queue, never the LIFO slot. */
void zk_sched_schedule_yield(zk_sched *s, zk_task *t);
zk_state *zk_sched_state(zk_sched *s);
void zk_sched_task_started(zk_sched *s, zk_task *t);
void zk_sched_task_finished(zk_sched *s, zk_task *t);
zk_sched *zk_worker_sched(zk_worker *w);
zk_port *zk_worker_port(zk_worker *w);
/* File a timer in w's wheel (w must be the current worker).  Returns 1 if
 * filed, 0 if already due (caller fires it). */
int zk_worker_add_timer(zk_worker *w, zk_timer *timer);
/* Remove a timer from whichever wheel holds it (any thread: wheels are
 * locked). */
void zk_worker_cancel_timer(zk_worker *current, zk_timer *timer);
/* Cancel an op in flight on its owning worker's port. */
void zk_worker_cancel_op(zk_worker *current, zk_io_op *op);
uint64_t zk_worker_now_ms(zk_worker *w);
/* Count a completed op on the worker (metrics). */
void zk_worker_count_op(zk_worker *w);

/* ---- blocking pool (blocking_pool.c) ------------------------------------ */

zk_blocking_pool *zk_blocking_pool_new(zk_state *st, zk_sched *s, size_t cap,
                                       double keep_alive, PyObject *spawn_thread);
/* Run call(fn, *args, **kwargs) on a pool thread and complete `leaf`. */
int zk_blocking_pool_submit(zk_blocking_pool *p, PyObject *fn, PyObject *args,
                            PyObject *kwargs, zk_leaf *leaf);
/* Body of a pool thread (called by a Python thread); returns when idle past
 * keep-alive or when the pool shuts down. */
void zk_blocking_pool_thread_main(zk_blocking_pool *p);
/* Stop accepting work, wake idle threads so they exit.  Queued jobs that no
 * thread picked up complete with Cancelled. */
void zk_blocking_pool_shutdown(zk_blocking_pool *p);
/* Wait until every pool thread exited, up to timeout (< 0: forever).
 * Detached while waiting.  Returns 1 if all exited. */
int zk_blocking_pool_join(zk_blocking_pool *p, double timeout);
void zk_blocking_pool_free(zk_blocking_pool *p);
/* GC support: the pool owns the Runtime's thread-starting callable. */
int zk_blocking_pool_traverse(zk_blocking_pool *p, visitproc visit, void *arg);
void zk_blocking_pool_clear(zk_blocking_pool *p);
void zk_blocking_pool_stats(zk_blocking_pool *p, size_t *threads, size_t *idle, size_t *queued);

#endif
