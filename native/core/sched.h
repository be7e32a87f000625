/* sched.h -- the work-stealing scheduler and its workers (sched.c).
 *
 * The Scheduler object owns N workers; each worker owns a local run queue
 * (run_queue.h), a LIFO slot, a completion port (io/port.h), a timer wheel
 * (timer_wheel.h) and a mailbox.  sched.c's header comment has the parking
 * protocol and the lost-wake argument.
 */
#ifndef ZOKIO_SCHED_H
#define ZOKIO_SCHED_H

#include "core/state.h"
#include "io/port.h"

/* zokio's clock: CLOCK_MONOTONIC in nanoseconds. */
int64_t zk_monotonic_ns(void);

int zk_sched_type_init(PyObject *module, zk_state *st);
/* The scheduler whose worker runs on this thread, or NULL. */
zk_sched *zk_current_sched(void);
/* zokio.spawn / zokio.spawn_blocking on scheduler s (bindings: module.c). */
PyObject *zk_sched_spawn(zk_sched *s, PyObject *coro, PyObject *name);
PyObject *zk_sched_spawn_blocking(zk_sched *s, PyObject *fn, PyObject *args, PyObject *kwargs);
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
/* Cancel `op`, in flight on the port of `owner` (the worker it was submitted
 * on): at once when that is the calling worker, else through owner's
 * mailbox, since an io_uring ring takes submissions from its owner only.
 * `holder` owns op's memory; the mailbox keeps it alive until then. */
void zk_worker_cancel_op(zk_worker *current, zk_worker *owner, PyObject *holder, zk_op *op);
/* Timers fire at ticks of ZK_TICK_NS: a sleep ends up to one tick after its
 * deadline (plus the time to get to it), never before. */
#define ZK_TICK_NS 250000
/* The current tick of w's clock (ticks since the scheduler's base). */
uint64_t zk_worker_now_tick(zk_worker *w);
/* Count a completed op on the worker (metrics). */
void zk_worker_count_op(zk_worker *w);

#endif
