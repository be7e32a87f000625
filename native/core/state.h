/* state.h -- what every file of the kernel shares: the module state, the
 * names of the kernel's types, and the per-thread context.
 *
 * One header per layer says who uses whom (docs/architecture.md draws it):
 *   core/task.h           Task (the JoinHandle) and its atomic state word
 *   core/leaf.h           what a task awaits, timers embedded in leaves, and
 *                         the dispatch from an awaited object to its kind
 *   core/sched.h          workers, queues, stealing, parking, mailboxes
 *   core/run_queue.h      local deque (steal-half) and inject queue; pure C
 *   core/timer_wheel.h    hierarchical timing wheel; pure C
 *   core/blocking_pool.h  spawn_blocking threads
 *   io/port.h             the completion-port contract; pure C
 *   io/op.h               one descriptor per opcode (op.c holds the table)
 *   io/op_leaf.h          the Op leaf: an op record awaited by a task
 *   module.c              Python bindings only
 *   testing/              test-only types: the separate zokio._native_testing
 */
#ifndef ZOKIO_STATE_H
#define ZOKIO_STATE_H

#include "core/compat.h"

/* The kernel's types, declared once so that headers can name one another's
 * without including them.  Each is defined in the header of its layer. */
typedef struct zk_sched zk_sched;                   /* sched.c (opaque) */
typedef struct zk_worker zk_worker;                 /* sched.c (opaque) */
typedef struct zk_task zk_task;                     /* task.h */
typedef struct zk_leaf zk_leaf;                     /* leaf.h */
typedef struct zk_timer zk_timer;                   /* leaf.h */
typedef struct zk_timeout_scope zk_timeout_scope;   /* leaf.h */
typedef struct zk_blocking_pool zk_blocking_pool;   /* blocking_pool.c (opaque) */
typedef struct zk_leaf_ops zk_leaf_ops;             /* leaf.h */

/* Task, YieldNow, Sleep, Oneshot, Op, and room for the kinds to come. */
#define ZK_LEAF_KINDS_MAX 8

/* Module state: every type and exception the kernel needs.  No static
 * PyObject globals: a scheduler keeps a strong reference to its module so
 * this struct outlives every worker that reads it. */
typedef struct zk_state {
    PyTypeObject *TaskType;
    PyTypeObject *OwnedCoroType; /* a spawned coroutine's type while its task owns it */
    PyTypeObject *OneshotType;
    PyTypeObject *SleepType;
    PyTypeObject *OpType;
    PyTypeObject *TimeoutScopeType;
    PyTypeObject *YieldNowType;
    PyTypeObject *SchedulerType;
    /* zokio.sync (native/sync/) */
    PyTypeObject *WaiterType;   /* waitlist.c: a party parked on a wait list */
    PyObject *Cancelled;        /* zokio.Cancelled (BaseException) */
    PyObject *yield_now;        /* the one YieldNow instance */
    PyObject *str_throw;        /* interned "throw" */
    PyObject *str_close;        /* interned "close" */
    PyObject *await_one;        /* zokio._api._await_one: spawn wraps an
                                   awaitable that is not a coroutine in it */
    /* Every awaitable kind (leaf.h): its exact type, borrowed from the
     * fields above, and its ops table, at the same index, in the order
     * registered (zk_leaf_kind_add).  The lookup compares types from the
     * front, so the kinds awaited most come first (module.c); the types sit
     * apart from the tables so that the compares read one cache line.
     * Unused entries are NULL. */
    PyTypeObject *leaf_kind_type[ZK_LEAF_KINDS_MAX];
    const zk_leaf_ops *leaf_kind_ops[ZK_LEAF_KINDS_MAX];
    /* -- cancel scopes (structured concurrency) -- */
    PyObject *scope_var;        /* ContextVar: the innermost entered cancel
                                   scope of the running task (leaf.c) */
    PyObject *str_scope_attr;   /* interned "_zokio_scope": on a scope's
                                   Cancelled, the scope that threw it */
    /* ---- channels (native/sync/channel.c) ---- */
    PyTypeObject *ChanType;          /* the shared state of one mpsc channel */
    PyTypeObject *ChanSenderType;
    PyTypeObject *ChanReceiverType;
    PyTypeObject *ChanReadyType;     /* a received item not yet awaited */
    PyTypeObject *ChanSendDoneType;
    PyTypeObject *ChanRetryType;     /* an operation deferred past a yield */
    PyObject *chan_send_done;        /* the one SendDone instance */
    PyObject *ChannelClosed;         /* zokio.sync._errors, set at its import */
    PyObject *QueueFull;
    PyObject *QueueEmpty;
    /* ---- end of channels ---- */
} zk_state;

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
/* The awaitable whose __next__ last suspended on this thread (set just
 * before it returns itself).  A task step clears it before resuming its
 * coroutine; a zokio awaitable that reaches the task without being it was
 * yielded bare (`yield leaf` in a generator-based coroutine), which would
 * lose its result: refused (task.c).  Borrowed, compared only. */
extern ZK_TLS PyObject *zk_suspending;
/* Set in a child of fork() whose forking thread was a worker (task.c). */
extern ZK_TLS int zk_worker_before_fork;
#define ZK_COOP_BUDGET 128

#endif
