/* sched.c -- the multi-threaded work-stealing scheduler (after Tokio
 * runtime/scheduler/multi_thread).
 *
 * Each worker is a Python thread that calls Scheduler.run_worker() and stays
 * in the C loop below for its whole life, with one PyThreadState.  A worker
 * owns: a local run queue (run_queue.c), a LIFO slot, a completion port
 * (port.h), a timer wheel (timer_wheel.c) and a mailbox for requests from
 * other threads (timer and op cancellations).
 *
 * Where a runnable task goes:
 *   spawned or woken by the running task       -> LIFO slot (old one to queue)
 *   woken by timers or I/O                     -> polled right after the
 *                                                 maintenance pass (`woken`)
 *   yielding, LIFO overflow                    -> back of the local queue
 *   from any other thread                      -> inject queue + notify
 *
 * Parking (the "searching" protocol):
 *   - a worker out of local work becomes *searching* (at most half of the
 *     workers at once) and tries to steal from random victims, then the
 *     inject queue;
 *   - a wake notifies a parked worker only if nobody is searching;
 *   - the last searcher that finds work wakes one more, so workers ramp up
 *     one at a time instead of a thundering herd;
 *   - a parked worker blocks inside its own completion port (detached), with
 *     its next timer deadline as the timeout, so I/O, timers and cross-thread
 *     wakes all arrive through one path.
 * Stranded work (the monitor): a worker stuck in one long poll -- CPU-bound
 * Python, the very workload a free-threaded runtime is for -- cannot fire
 * its due timers or run the task in its LIFO slot.  A monitor thread
 * (run_monitor) samples every worker each ZK_MONITOR_TICK_NS without
 * attaching; a worker that is inside a poll whose poll counter did not move
 * for ZK_MONITOR_STUCK_TICKS ticks is stuck, and the monitor takes over what
 * it cannot serve: it fires the due timers of its wheel (wheels are locked
 * for this) and moves its LIFO task (an atomic slot) to the inject queue, and
 * wakes a parked worker for that and for the stuck worker's local queue;
 * it also flags every poll longer than a tick (fair_hurry), so its worker
 * adapts its fairness interval when that poll ends.
 * The hot path pays one exchange per LIFO push/pop, an uncontended lock per
 * timer operation and two plain stores per poll.  When every worker is
 * parked the monitor sleeps until one unparks.
 *
 * Lost-wake argument: the waker publishes the task (queue push) before it
 * reads num_searching / the parked list (seq_cst fence); the parker registers
 * as parked under idle_lock and *then* re-checks every queue.  Either the
 * waker sees the parked worker, or the parker's re-check sees the task.
 */
#include "core/sched.h"
#include "core/blocking_pool.h"
#include "core/leaf.h"
#include "core/run_queue.h"
#include "core/task.h"
#include "core/timer_wheel.h"
#include "io/port.h"
#include "structmember.h"
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>

#define ZK_OWNED_SHARDS 16
/* Polls between two checks of the inject queue, timers and I/O: adapted per
 * worker (after Tokio's global_queue_interval) so that the checks come about
 * every ZK_FAIRNESS_TARGET_NS of polling: short polls check every 61 polls
 * as before; 20 ms polls (CPU-bound Python) check every 2nd poll instead of
 * leaving due timers and cross-thread wakes waiting 61 x 20 ms = 1.2 s. */
#define ZK_FAIRNESS_MAX 61
#define ZK_FAIRNESS_MIN 2
#define ZK_FAIRNESS_TARGET_NS 200000
#define ZK_LIFO_MAX_POLLS 3
#define ZK_INJECT_BATCH 32
/* A searcher that found nothing spins this many rounds before parking:
 * parking and unparking cost two syscalls and two context switches, more
 * than a short burst of work takes to arrive. */
#define ZK_SPIN_ROUNDS 64
#define ZK_SPIN_STEAL_MIN 2
#define ZK_SPIN_PAUSES 32
/* Monitor: sampling period, and how many periods without a new poll make a
 * worker inside a poll "stuck".  A timer on a stuck worker fires at most
 * about (1 + STUCK_TICKS) ticks late. */
#define ZK_MONITOR_TICK_NS 2000000
#define ZK_MONITOR_STUCK_TICKS 2
#define ZK_TIMER_BATCH 32

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

enum { MAIL_CANCEL_OP = 2, MAIL_FORGET_FD = 3 };

typedef struct zk_mail {
    int kind;
    PyObject *obj;       /* strong reference to what holds the op */
    zk_op *op;
    int fd;              /* MAIL_FORGET_FD: the file, by number and identity */
    uint64_t dev, ino;
} zk_mail;

struct zk_worker {
    zk_local_queue queue;          /* first: cache-line heavy */
    zk_sched *sched;
    int index;
    /* LIFO slot: the owner pushes and pops with an exchange; the monitor
     * takes a task out of a stuck owner's slot the same way. */
    _Atomic(zk_task *) lifo;
    int lifo_polls;
    _Atomic int polling;           /* 1 while zk_task_run runs (monitor) */
    /* While the worker processes timers and I/O completions, the tasks they
     * wake are collected here and polled right after, in wake order, instead
     * of going through the LIFO slot: one slot cannot hold a batch, and the
     * rest would land at the back of the local queue, behind every task
     * queued meanwhile -- a burst of fresh spawns made due sleepers wait for
     * the whole burst (cold 100k-sleep p99 of 13-40 ms).  Owner only. */
    int collecting;
    zk_task **woken;
    size_t woken_len, woken_cap;
    int searching;                 /* owner only; mirrored in num_searching */
    uint32_t rng;
    uint64_t tick;
    /* adaptive fairness (ZK_FAIRNESS_*): owner only */
    uint32_t fair_interval;        /* polls between checks, MIN..MAX */
    uint32_t fair_countdown;       /* polls left until the next check */
    int fair_due;                  /* the next pick looks at the inject queue first */
    int64_t fair_since_ns;         /* start of the current measuring window */
    int64_t avg_poll_ns;           /* moving average of one poll's time */
    _Atomic int fair_hurry;        /* set by the monitor when a poll ran long:
                                      adapt at the end of that poll instead
                                      of after the whole (long) window */
    zk_port *port;
    zk_timer_wheel wheel;          /* under wheel_lock: the owner files and
                                      fires, the monitor fires due timers of
                                      a stuck owner, any thread cancels */
    zk_mutex wheel_lock;
    int started;
    zk_mutex mail_lock;
    zk_mail *mail;
    size_t mail_len, mail_cap;
    _Atomic size_t mail_pending;
    /* Finished tasks spawned here whose registry reference another worker
     * let go: a lock-free stack (push: CAS on head, any thread; drain:
     * exchange, owner).  Dropping the reference here, on the thread that
     * created the task, keeps the final decref thread-local; dropping it on
     * the finishing worker would send every task through CPython's
     * biased-refcount queue, whose lock the two threads then fight over. */
    /* On a cache line of its own with `parked`, which a finishing worker
     * reads before the push: every task finished elsewhere touches this
     * line, and next to the owner's per-poll fields (the metrics below)
     * each push cost the owner a cache miss on its next poll. */
    _Alignas(ZK_CACHELINE) _Atomic(zk_task *) release_head;
    _Atomic int parked;            /* 1 while in the parked stack (idle_lock) */
    /* metrics: written by the owner, read by anyone (relaxed) */
    _Alignas(ZK_CACHELINE) _Atomic uint64_t m_polls, m_steals, m_parks, m_timers_fired, m_ops;
    _Atomic uint64_t m_rescued;    /* tasks and timers the monitor took over */
    _Atomic uint64_t m_timers_helped; /* due timers this worker fired from
                                         the wheel of a worker in a poll */
    _Atomic size_t m_timers_pending;
};

struct zk_sched {
    PyObject_HEAD
    zk_state *st;
    PyObject *module;              /* keeps st alive */
    int nworkers;
    zk_worker *workers;
    zk_backend backend;
    int search_width;              /* at most half of this many searchers:
                                      min(workers, CPUs), since searchers
                                      beyond the cores only steal time */
    int spin;                      /* spin before parking: only when every
                                      worker can have a core of its own */
    int64_t base_ns;               /* timer ticks count from here */
    zk_inject_queue inject;
    _Atomic int num_searching;
    _Atomic int nparked;           /* mirror of parked_len for lock-free reads */
    zk_mutex idle_lock;
    int *parked_stack;
    int parked_len;
    _Atomic int stop;
    _Atomic int stop_done;         /* stop() finished waking every port */
    _Atomic int wakers_active;     /* threads inside wake_worker() */
    _Atomic int closing;           /* no new spawns */
    _Atomic int workers_running;
    /* The live-task registry, one shard per home worker (index 1 + home,
     * 0 for tasks spawned from plain threads): a task starts and usually
     * finishes on its home worker, so each worker mostly touches its own
     * shard, and 128-byte strides keep shards off each other's cache lines
     * (they bounced between the workers when tasks were sharded by
     * address). */
    struct {
        zk_mutex lock;
        zk_task *head;
        _Atomic uint64_t spawned, completed;  /* written under lock */
        char pad[128 - sizeof(zk_mutex) - sizeof(zk_task *) - 2 * sizeof(uint64_t)];
    } owned[ZK_OWNED_SHARDS];
    char live_pad0[64];
    _Atomic int64_t live;          /* its own line: every start and finish */
    char live_pad1[64];
    zk_blocking_pool *pool;
    int finalized;
    /* monitor (run_monitor): futex word bumped to wake it; idle while every
     * worker is parked */
    _Atomic uint32_t monitor_seq;
    _Atomic int monitor_idle;
    _Atomic int monitor_running;
};

zk_state *zk_sched_state(zk_sched *s) { return s->st; }
zk_sched *zk_worker_sched(zk_worker *w) { return w->sched; }
zk_port *zk_worker_port(zk_worker *w) { return w->port; }
void zk_worker_count_op(zk_worker *w) {
    atomic_fetch_add_explicit(&w->m_ops, 1, memory_order_relaxed);
}

int64_t zk_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t ns_to_tick_floor(zk_sched *s, int64_t ns) {
    return ns <= s->base_ns ? 0 : (uint64_t)((ns - s->base_ns) / ZK_TICK_NS);
}

/* A timer fires at the first tick at or after its deadline, never before. */
static uint64_t ns_to_tick_ceil(zk_sched *s, int64_t ns) {
    if (ns <= s->base_ns)
        return 0;
    int64_t d = ns - s->base_ns;
    if (d > INT64_MAX - (ZK_TICK_NS - 1))
        return (uint64_t)(d / ZK_TICK_NS);
    return (uint64_t)((d + ZK_TICK_NS - 1) / ZK_TICK_NS);
}

uint64_t zk_worker_now_tick(zk_worker *w) {
    return ns_to_tick_floor(w->sched, zk_monotonic_ns());
}

static uint32_t next_rand(zk_worker *w) {
    /* xorshift32: victim order only needs to be cheap and spread out. */
    uint32_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w->rng = x;
    return x;
}

/* Wake another worker's port from any thread.  A worker closes its port
 * only after stop is set, stop() has woken everyone (stop_done) and no
 * thread is inside this function, so the port cannot be closed under us:
 * a caller that comes in after stop backs off. */
static void wake_worker(zk_sched *s, zk_worker *target) {
    atomic_fetch_add_explicit(&s->wakers_active, 1, memory_order_seq_cst);
    if (!atomic_load_explicit(&s->stop, memory_order_seq_cst))
        zk_port_wake(target->port);
    atomic_fetch_sub_explicit(&s->wakers_active, 1, memory_order_release);
}

/* ---- live-task registry (for shutdown) ------------------------------------ */

/* A task's registry shard, fixed for its life.  By address, not by the
 * spawning worker: one task spawning a burst would otherwise put every
 * child in one shard, whose lock the spawner (inserting) and the workers
 * completing the children (removing) then fight over -- perf showed that
 * PyMutex spinning and sleeping at threads=2.  Tasks spawned off the
 * workers share shard 0. */
static int owned_shard(zk_task *t) {
    if (t->home < 0)
        return 0;
    uintptr_t a = (uintptr_t)t >> 7;   /* tasks are 128-byte blocks */
    return 1 + (int)(a % (ZK_OWNED_SHARDS - 1));
}

void zk_sched_task_started(zk_sched *s, zk_task *t) {
    zk_worker *w = zk_current_worker;
    t->home = (w != NULL && w->sched == s) ? (int16_t)w->index : -1;
    int sh = owned_shard(t);
    Py_INCREF(t);  /* the registry's reference, dropped at completion */
    zk_mutex_lock(&s->owned[sh].lock);
    t->owned_prev = NULL;
    t->owned_next = s->owned[sh].head;
    if (t->owned_next)
        t->owned_next->owned_prev = t;
    s->owned[sh].head = t;
    atomic_store_explicit(&s->owned[sh].spawned,
                          atomic_load_explicit(&s->owned[sh].spawned, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    zk_mutex_unlock(&s->owned[sh].lock);
    atomic_fetch_add_explicit(&s->live, 1, memory_order_release);
}

void zk_sched_task_finished(zk_sched *s, zk_task *t) {
    int sh = owned_shard(t);
    zk_mutex_lock(&s->owned[sh].lock);
    if (t->owned_prev)
        t->owned_prev->owned_next = t->owned_next;
    else
        s->owned[sh].head = t->owned_next;
    if (t->owned_next)
        t->owned_next->owned_prev = t->owned_prev;
    t->owned_prev = t->owned_next = NULL;
    atomic_store_explicit(&s->owned[sh].completed,
                          atomic_load_explicit(&s->owned[sh].completed, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    zk_mutex_unlock(&s->owned[sh].lock);
    atomic_fetch_sub_explicit(&s->live, 1, memory_order_release);
    zk_worker *cur = zk_current_worker;
    zk_worker *home = t->home >= 0 ? &s->workers[t->home] : NULL;
    /* A parked home would hold the memory until its next wake, and waking
     * it only for this costs more than the cross-thread decref: drop the
     * reference here then. */
    if (home != NULL && home != cur &&
        !atomic_load_explicit(&home->parked, memory_order_relaxed) &&
        !atomic_load_explicit(&s->stop, memory_order_acquire)) {
        zk_task *head = atomic_load_explicit(&home->release_head, memory_order_relaxed);
        do {
            t->owned_next = head;
            /* release: the home worker reads owned_next after its acquire */
        } while (!atomic_compare_exchange_weak_explicit(&home->release_head, &head, t,
                                                        memory_order_release,
                                                        memory_order_relaxed));
        /* It parked meanwhile (rare): wake it so the memory does not wait
         * for its next timer.  Dekker pair with park(). */
        atomic_thread_fence(memory_order_seq_cst);
        if (head == NULL && atomic_load_explicit(&home->parked, memory_order_relaxed))
            wake_worker(s, home);
        return;
    }
    Py_DECREF(t);
}

/* Drop the registry references other workers handed back.  Owner thread,
 * or any thread once the workers stopped. */
static int drain_releases(zk_worker *w) {
    if (atomic_load_explicit(&w->release_head, memory_order_relaxed) == NULL)
        return 0;
    zk_task *t = atomic_exchange_explicit(&w->release_head, NULL, memory_order_acquire);
    int n = 0;
    while (t != NULL) {
        zk_task *next = t->owned_next;
        t->owned_next = NULL;
        Py_DECREF(t);
        t = next;
        n++;
    }
    return n;
}

/* Snapshot of live tasks (new references) for cancel_all/finalize. */
static PyObject *owned_snapshot(zk_sched *s) {
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int sh = 0; sh < ZK_OWNED_SHARDS; sh++) {
        zk_mutex_lock(&s->owned[sh].lock);
        for (zk_task *t = s->owned[sh].head; t != NULL; t = t->owned_next) {
            /* PyList_Append may allocate but never runs Python code. */
            if (PyList_Append(list, (PyObject *)t) < 0) {
                zk_mutex_unlock(&s->owned[sh].lock);
                Py_DECREF(list);
                return NULL;
            }
        }
        zk_mutex_unlock(&s->owned[sh].lock);
    }
    return list;
}

/* ---- idle / parking ------------------------------------------------------ */

static void notify_parked(zk_sched *s) {
    /* seq_cst: orders the caller's queue push before these reads (pairs with
     * the fence in park()). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->num_searching, memory_order_seq_cst) > 0)
        return;
    if (atomic_load_explicit(&s->nparked, memory_order_seq_cst) == 0)
        return;
    zk_worker *target = NULL;
    zk_mutex_lock(&s->idle_lock);
    if (s->parked_len > 0 &&
        atomic_load_explicit(&s->num_searching, memory_order_relaxed) == 0) {
        target = &s->workers[s->parked_stack[--s->parked_len]];
        atomic_store_explicit(&s->nparked, s->parked_len, memory_order_relaxed);
        atomic_store_explicit(&target->parked, 0, memory_order_relaxed);
        /* The woken worker starts out searching. */
        atomic_fetch_add_explicit(&s->num_searching, 1, memory_order_relaxed);
    }
    zk_mutex_unlock(&s->idle_lock);
    if (target != NULL)
        wake_worker(s, target);
}

static int work_available(zk_sched *s) {
    if (zk_inject_len(&s->inject) > 0)
        return 1;
    for (int i = 0; i < s->nworkers; i++)
        if (zk_local_len(&s->workers[i].queue) > 1)
            return 1;
    return 0;
}

/* Optional wake-ups (more stealable work appeared) are skipped once as many
 * workers are awake as there are CPUs: on an oversubscribed machine an extra
 * awake worker only adds context switches.  The re-check in park() and wakes
 * from outside the runtime still notify unconditionally, so no task waits
 * behind a worker that never yields. */
static int saturated(zk_sched *s) {
    return s->nworkers - atomic_load_explicit(&s->nparked, memory_order_relaxed) >= s->search_width;
}

static void transition_from_searching(zk_worker *w) {
    w->searching = 0;
    /* The last searcher found work: wake one more if there is more. */
    if (atomic_fetch_sub_explicit(&w->sched->num_searching, 1, memory_order_seq_cst) == 1 &&
        !saturated(w->sched) && work_available(w->sched))
        notify_parked(w->sched);
}


/* ---- queues ---------------------------------------------------------------- */

static void push_local(zk_worker *w, zk_task *t) {
    zk_sched *s = w->sched;
    if (zk_local_push_back(&w->queue, t, &s->inject) < 0) {
        /* Out of memory for the overflow batch: queue just this task. */
        if (zk_inject_push(&s->inject, t) < 0) {
            /* The task stays registered (shutdown still finds it) but is
             * not runnable: say so rather than lose it silently. */
            PyErr_NoMemory();
            PyErr_WriteUnraisable((PyObject *)t);
        }
    }
    /* Work others could steal: wake a parked worker if nobody searches. */
    if (atomic_load_explicit(&s->nparked, memory_order_relaxed) > 0 && !saturated(s))
        notify_parked(s);
}

static int collect_woken(zk_worker *w, zk_task *t) {
    if (w->woken_len == w->woken_cap) {
        size_t cap = w->woken_cap ? w->woken_cap * 2 : 64;
        zk_task **a = PyMem_RawRealloc(w->woken, cap * sizeof(zk_task *));
        if (a == NULL)
            return -1;  /* the caller queues it instead */
        w->woken = a;
        w->woken_cap = cap;
    }
    w->woken[w->woken_len++] = t;
    return 0;
}

void zk_sched_schedule(zk_sched *s, zk_task *t, int lifo) {
    zk_worker *w = zk_current_worker;
    if (w != NULL && w->sched == s) {
        if (w->collecting && collect_woken(w, t) == 0)
            return;
        if (lifo) {
            zk_task *prev = atomic_exchange_explicit(&w->lifo, t, memory_order_acq_rel);
            if (prev == NULL)
                return;
            t = prev;
        }
        push_local(w, t);
        return;
    }
    if (zk_inject_push(&s->inject, t) < 0) {
        /* Out of memory: the task stays registered; shutdown finds it. */
        PyErr_Clear();
        return;
    }
    notify_parked(s);
}

void zk_sched_schedule_yield(zk_sched *s, zk_task *t) {
    zk_worker *w = zk_current_worker;
    if (w != NULL && w->sched == s) {
        push_local(w, t);
        return;
    }
    zk_sched_schedule(s, t, 0);
}

static zk_task *pop_inject(zk_worker *w) {
    zk_sched *s = w->sched;
    if (zk_inject_len(&s->inject) == 0)
        return NULL;
    void *batch[ZK_INJECT_BATCH];
    size_t room = zk_local_remaining(&w->queue);
    size_t want = room / 2 + 1;
    if (want > ZK_INJECT_BATCH)
        want = ZK_INJECT_BATCH;
    size_t n = zk_inject_pop_batch(&s->inject, batch, want);
    if (n == 0)
        return NULL;
    for (size_t i = 1; i < n; i++)
        zk_local_push_back(&w->queue, batch[i], &s->inject);
    return (zk_task *)batch[0];
}

static zk_task *next_local_task(zk_worker *w) {
    if (atomic_load_explicit(&w->lifo, memory_order_relaxed) != NULL) {
        /* The monitor may have taken it meanwhile: exchange, then look. */
        zk_task *t = atomic_exchange_explicit(&w->lifo, NULL, memory_order_acq_rel);
        if (t != NULL) {
            if (w->lifo_polls < ZK_LIFO_MAX_POLLS) {
                w->lifo_polls++;
                return t;
            }
            /* LIFO cap reached: the slot's task goes to the back, so a pair
             * of tasks waking each other cannot starve the queue. */
            push_local(w, t);
        }
    }
    w->lifo_polls = 0;
    if (w->fair_due) {
        w->fair_due = 0;
        zk_task *t = pop_inject(w);
        if (t != NULL)
            return t;
    }
    zk_task *t = (zk_task *)zk_local_pop(&w->queue);
    if (t != NULL)
        return t;
    return pop_inject(w);
}

/* min_len: skip victims holding fewer tasks.  The first attempt takes
 * anything (a lone task behind a task that never yields must not be
 * stranded); the spin phase leaves a victim's last task to its owner, which
 * is about to pop it -- otherwise a spinning searcher grabs every task the
 * moment it is queued and steals become a stream of one-task handoffs. */
static zk_task *steal_work(zk_worker *w, size_t min_len) {
    zk_sched *s = w->sched;
    if (!w->searching) {
        int searching = atomic_load_explicit(&s->num_searching, memory_order_seq_cst);
        if (2 * searching >= s->search_width)
            return NULL;  /* enough searchers already: park instead */
        atomic_fetch_add_explicit(&s->num_searching, 1, memory_order_seq_cst);
        w->searching = 1;
    }
    int n = s->nworkers;
    int start = (int)(next_rand(w) % (uint32_t)n);
    for (int i = 0; i < n; i++) {
        int v = (start + i) % n;
        if (v == w->index)
            continue;
        if (zk_local_len(&s->workers[v].queue) < min_len)
            continue;
        zk_task *t = (zk_task *)zk_local_steal_into(&s->workers[v].queue, &w->queue);
        if (t != NULL) {
            atomic_fetch_add_explicit(&w->m_steals, 1, memory_order_relaxed);
            return t;
        }
    }
    return pop_inject(w);
}

/* ---- mailbox, timers, I/O ---------------------------------------------- */

static void mail_post_full(zk_worker *owner, zk_mail mail) {
    zk_mutex_lock(&owner->mail_lock);
    if (owner->mail_len == owner->mail_cap) {
        size_t cap = owner->mail_cap ? owner->mail_cap * 2 : 16;
        zk_mail *m = PyMem_RawRealloc(owner->mail, cap * sizeof(zk_mail));
        if (m == NULL) {
            zk_mutex_unlock(&owner->mail_lock);
            return;  /* the op is released when it ends by itself */
        }
        owner->mail = m;
        owner->mail_cap = cap;
    }
    Py_INCREF(mail.obj);
    owner->mail[owner->mail_len++] = mail;
    atomic_fetch_add_explicit(&owner->mail_pending, 1, memory_order_release);
    zk_mutex_unlock(&owner->mail_lock);
    /* Dekker pair with park(): we publish mail_pending, then read parked;
     * the owner publishes parked, then reads mail_pending. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&owner->parked, memory_order_relaxed))
        wake_worker(owner->sched, owner);
}

static void mail_post(zk_worker *owner, int kind, PyObject *obj, zk_op *op) {
    mail_post_full(owner, (zk_mail){.kind = kind, .obj = obj, .op = op});
}

static void drain_mailbox(zk_worker *w) {
    if (atomic_load_explicit(&w->mail_pending, memory_order_acquire) == 0)
        return;
    zk_mutex_lock(&w->mail_lock);
    zk_mail *items = w->mail;
    size_t n = w->mail_len;
    w->mail = NULL;
    w->mail_len = w->mail_cap = 0;
    atomic_store_explicit(&w->mail_pending, 0, memory_order_relaxed);
    zk_mutex_unlock(&w->mail_lock);
    for (size_t i = 0; i < n; i++) {
        /* An op that completed meanwhile is no longer in flight: the port
         * ignores the cancel. */
        if (items[i].kind == MAIL_CANCEL_OP && w->port != NULL)
            zk_port_cancel(w->port, items[i].op);
        else if (items[i].kind == MAIL_FORGET_FD && w->port != NULL)
            zk_port_forget_fd(w->port, items[i].fd, items[i].dev, items[i].ino);
        Py_DECREF(items[i].obj);
    }
    PyMem_RawFree(items);
}

/* ---- timers: per-worker wheels under wheel_lock ------------------------ */

/* Is the timer linked in the wheel it was last filed in?  Any thread. */
static int timer_is_filed(zk_timer *timer) {
    zk_worker *owner = atomic_load_explicit(&timer->worker, memory_order_acquire);
    if (owner == NULL)
        return 0;
    zk_mutex_lock(&owner->wheel_lock);
    int linked = atomic_load_explicit(&timer->worker, memory_order_relaxed) == owner &&
                 timer->entry.linked;
    zk_mutex_unlock(&owner->wheel_lock);
    return linked;
}

int zk_worker_add_timer(zk_worker *w, zk_timer *timer) {
    if (timer_is_filed(timer))
        return 1;  /* awaited again while still filed: it fires as it is */
    zk_mutex_lock(&w->wheel_lock);
    timer->entry.deadline = ns_to_tick_ceil(w->sched, timer->deadline_ns);
    if (!zk_wheel_insert(&w->wheel, &timer->entry)) {
        zk_mutex_unlock(&w->wheel_lock);
        return 0;
    }
    atomic_store_explicit(&timer->worker, w, memory_order_release);
    /* The wheel's reference, taken before the lock is released: the monitor
     * may fire the timer (and drop it) right after. */
    Py_INCREF(zk_timer_owner(timer));
    atomic_fetch_add_explicit(&w->m_timers_pending, 1, memory_order_relaxed);
    zk_mutex_unlock(&w->wheel_lock);
    return 1;
}

void zk_worker_cancel_timer(zk_worker *current, zk_timer *timer) {
    ZK_UNUSED(current);
    zk_worker *owner = atomic_load_explicit(&timer->worker, memory_order_acquire);
    if (owner == NULL)
        return;
    int removed = 0;
    zk_mutex_lock(&owner->wheel_lock);
    if (atomic_load_explicit(&timer->worker, memory_order_relaxed) == owner &&
        timer->entry.linked) {
        zk_wheel_remove(&owner->wheel, &timer->entry);
        atomic_fetch_sub_explicit(&owner->m_timers_pending, 1, memory_order_relaxed);
        removed = 1;
    }
    zk_mutex_unlock(&owner->wheel_lock);
    if (removed)
        Py_DECREF(zk_timer_owner(timer));  /* the wheel's reference */
}

void zk_worker_cancel_op(zk_worker *current, zk_worker *owner, PyObject *holder, zk_op *op) {
    if (owner == current)
        zk_port_cancel(owner->port, op);
    else
        mail_post(owner, MAIL_CANCEL_OP, holder, op);
}

/* Fire the due timers of w's wheel.  Runs on w, or on the monitor when w is
 * stuck.  Entries are taken out in batches under the lock and fired outside
 * it (firing wakes tasks and drops references: arbitrary code). */
static int fire_due_timers(zk_worker *w) {
    if (atomic_load_explicit(&w->m_timers_pending, memory_order_relaxed) == 0)
        return 0;
    zk_state *st = w->sched->st;
    uint64_t now = zk_worker_now_tick(w);
    int n = 0;
    for (;;) {
        zk_timer *batch[ZK_TIMER_BATCH];
        int k = 0;
        zk_mutex_lock(&w->wheel_lock);
        if (zk_wheel_next_expiration(&w->wheel) <= now) {
            zk_timer_entry *e;
            while (k < ZK_TIMER_BATCH && (e = zk_wheel_poll(&w->wheel, now)) != NULL)
                batch[k++] = (zk_timer *)e;
            atomic_fetch_sub_explicit(&w->m_timers_pending, (size_t)k, memory_order_relaxed);
        }
        zk_mutex_unlock(&w->wheel_lock);
        for (int i = 0; i < k; i++) {
            zk_timer_fire(st, batch[i]);
            Py_DECREF(zk_timer_owner(batch[i]));  /* the wheel's reference */
        }
        n += k;
        if (k < ZK_TIMER_BATCH)
            break;
    }
    if (n > 0)
        atomic_fetch_add_explicit(&w->m_timers_fired, (uint64_t)n, memory_order_relaxed);
    return n;
}

/* Next timer deadline of w's wheel in ticks, or ZK_WHEEL_NEVER. */
static uint64_t next_timer_tick(zk_worker *w) {
    zk_mutex_lock(&w->wheel_lock);
    uint64_t next = zk_wheel_next_expiration(&w->wheel);
    zk_mutex_unlock(&w->wheel_lock);
    return next;
}

/* Timer help.  A worker inside one long poll (a coroutine looping over
 * finished handles, CPU-bound Python) cannot fire its own timers until the
 * poll ends; the monitor takes over only after ZK_MONITOR_STUCK_TICKS.  An
 * idle worker does better: before parking it also waits for the earliest
 * due tick of the workers that are inside a poll, and when it wakes it
 * fires what of theirs is due (the wheels are locked; the woken tasks land
 * on the helper).  Idle path only: a busy worker never looks at another's
 * wheel. */
static int in_poll_with_timers(zk_worker *w, zk_worker *v) {
    return v != w && atomic_load_explicit(&v->polling, memory_order_relaxed) &&
           atomic_load_explicit(&v->m_timers_pending, memory_order_relaxed) > 0;
}

static uint64_t busy_workers_next_tick(zk_worker *w) {
    zk_sched *s = w->sched;
    uint64_t next = ZK_WHEEL_NEVER;
    for (int i = 0; i < s->nworkers; i++) {
        zk_worker *v = &s->workers[i];
        if (in_poll_with_timers(w, v)) {
            uint64_t t = next_timer_tick(v);
            if (t < next)
                next = t;
        }
    }
    return next;
}

static int help_busy_workers_timers(zk_worker *w) {
    zk_sched *s = w->sched;
    int n = 0;
    for (int i = 0; i < s->nworkers; i++) {
        zk_worker *v = &s->workers[i];
        if (in_poll_with_timers(w, v) && next_timer_tick(v) <= zk_worker_now_tick(v))
            n += fire_due_timers(v);
    }
    if (n > 0)
        atomic_fetch_add_explicit(&w->m_timers_helped, (uint64_t)n, memory_order_relaxed);
    return n;
}

/* Timers, I/O completions and mailbox, without blocking. */

/* Poll the tasks that timers and I/O completions woke (see `woken`). */
static void run_woken(zk_worker *w) {
    w->collecting = 0;
    size_t n = w->woken_len;
    if (n == 0)
        return;
    if (w->searching)
        transition_from_searching(w);
    for (size_t i = 0; i < n; i++) {
        zk_task *t = w->woken[i];
        atomic_fetch_add_explicit(&w->m_polls, 1, memory_order_relaxed);
        atomic_store_explicit(&w->polling, 1, memory_order_relaxed);
        zk_task_run(w, t);
        atomic_store_explicit(&w->polling, 0, memory_order_relaxed);
    }
    w->woken_len = 0;
}

static int maintenance(zk_worker *w) {
    drain_mailbox(w);
    drain_releases(w);
    int n = 0;
    w->collecting = 1;
    if (zk_port_inflight(w->port) > 0) {
        zk_port_wait(w->port, 0);
        n += zk_port_process(w->port);
    }
    n += fire_due_timers(w);
    run_woken(w);
    return n;
}

/* ---- monitor: taking over what a stuck worker cannot serve --------------- */

static long futex_op(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, (uint32_t *)word, op, val, ts, NULL, 0);
}

/* Wake the monitor (any thread, no lock, no Python). */
static void monitor_kick(zk_sched *s) {
    atomic_fetch_add_explicit(&s->monitor_seq, 1, memory_order_seq_cst);
    futex_op(&s->monitor_seq, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Sleep (detached) for one tick, or -- while every worker is parked, when
 * no worker can be stuck -- until a worker unparks (it kicks us). */
static void monitor_sleep(zk_sched *s) {
    uint32_t seq = atomic_load_explicit(&s->monitor_seq, memory_order_seq_cst);
    struct timespec tick = {0, ZK_MONITOR_TICK_NS};
    struct timespec idle = {1, 0};
    const struct timespec *ts = &tick;
    if (atomic_load_explicit(&s->nparked, memory_order_relaxed) >= s->nworkers) {
        atomic_store_explicit(&s->monitor_idle, 1, memory_order_seq_cst);
        /* Dekker pair with park(): a worker stores its unparked state, then
         * reads monitor_idle; we store monitor_idle, then re-read nparked. */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&s->nparked, memory_order_seq_cst) >= s->nworkers)
            ts = &idle;
    }
    if (!atomic_load_explicit(&s->stop, memory_order_acquire))
        futex_op(&s->monitor_seq, FUTEX_WAIT_PRIVATE, seq, ts);
    atomic_store_explicit(&s->monitor_idle, 0, memory_order_relaxed);
}

/* Has stuck worker w anything others could run?  Detached, no Python. */
static int stranded(zk_worker *w, uint64_t now_tick) {
    if (atomic_load_explicit(&w->lifo, memory_order_relaxed) != NULL)
        return 1;
    if (zk_local_len(&w->queue) > 0 && atomic_load_explicit(&w->sched->nparked, memory_order_relaxed) > 0)
        return 1;
    if (atomic_load_explicit(&w->m_timers_pending, memory_order_relaxed) > 0 &&
        next_timer_tick(w) <= now_tick)
        return 1;
    return 0;
}

/* Attached, on the monitor thread.  Wakes land in the inject queue (this is
 * no worker's thread) and notify a parked worker. */
static void rescue(zk_worker *w) {
    zk_sched *s = w->sched;
    uint64_t n = 0;
    zk_task *t = atomic_exchange_explicit(&w->lifo, NULL, memory_order_acq_rel);
    if (t != NULL) {
        zk_sched_schedule(s, t, 0);
        n++;
    }
    n += (uint64_t)fire_due_timers(w);
    if (zk_local_len(&w->queue) > 0)
        notify_parked(s);
    if (n > 0)
        atomic_fetch_add_explicit(&w->m_rescued, n, memory_order_relaxed);
}

static PyObject *sched_run_monitor(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->monitor_running, &expected, 1)) {
        PyErr_SetString(PyExc_RuntimeError, "this scheduler's monitor is already running");
        return NULL;
    }
    int n = s->nworkers;
    uint64_t *last_polls = PyMem_RawCalloc((size_t)n, sizeof(uint64_t));
    int *quiet_ticks = PyMem_RawCalloc((size_t)n, sizeof(int));
    if (last_polls == NULL || quiet_ticks == NULL) {
        PyMem_RawFree(last_polls);
        PyMem_RawFree(quiet_ticks);
        return PyErr_NoMemory();
    }
    PyThreadState *ts = PyEval_SaveThread();
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        monitor_sleep(s);
        uint64_t now_tick = ns_to_tick_floor(s, zk_monotonic_ns());
        for (int i = 0; i < n; i++) {
            zk_worker *w = &s->workers[i];
            uint64_t polls = atomic_load_explicit(&w->m_polls, memory_order_relaxed);
            if (!atomic_load_explicit(&w->polling, memory_order_relaxed) || polls != last_polls[i]) {
                last_polls[i] = polls;
                quiet_ticks[i] = 0;
                continue;
            }
            /* A poll longer than a tick: its worker adapts its fairness
             * interval when the poll ends (fair_hurry). */
            if (!atomic_load_explicit(&w->fair_hurry, memory_order_relaxed))
                atomic_store_explicit(&w->fair_hurry, 1, memory_order_relaxed);
            if (++quiet_ticks[i] < ZK_MONITOR_STUCK_TICKS || !stranded(w, now_tick))
                continue;
            PyEval_RestoreThread(ts);
            if (!atomic_load_explicit(&s->stop, memory_order_acquire))
                rescue(w);
            ts = PyEval_SaveThread();
        }
    }
    PyEval_RestoreThread(ts);
    PyMem_RawFree(last_polls);
    PyMem_RawFree(quiet_ticks);
    Py_RETURN_NONE;
}

static void park(zk_worker *w) {
    zk_sched *s = w->sched;
    int was_searching = w->searching;
    w->searching = 0;

    zk_mutex_lock(&s->idle_lock);
    s->parked_stack[s->parked_len++] = w->index;
    atomic_store_explicit(&s->nparked, s->parked_len, memory_order_relaxed);
    atomic_store_explicit(&w->parked, 1, memory_order_relaxed);
    if (was_searching)
        atomic_fetch_sub_explicit(&s->num_searching, 1, memory_order_relaxed);
    zk_mutex_unlock(&s->idle_lock);

    /* Re-check after registering (pairs with the fence in notify_parked):
     * a task queued before we were visible as parked is found here. */
    atomic_thread_fence(memory_order_seq_cst);
    if (work_available(s) || atomic_load_explicit(&w->lifo, memory_order_relaxed) != NULL ||
        zk_local_len(&w->queue) > 0)
        notify_parked(s);

    if (atomic_load_explicit(&w->parked, memory_order_relaxed) &&
        atomic_load_explicit(&w->mail_pending, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&w->release_head, memory_order_relaxed) == NULL &&
        !atomic_load_explicit(&s->stop, memory_order_acquire)) {
        int64_t timeout = -1;
        uint64_t next = next_timer_tick(w);
        uint64_t busy_next = busy_workers_next_tick(w);
        if (busy_next < next)
            next = busy_next;
        if (next != ZK_WHEEL_NEVER) {
            int64_t deadline = s->base_ns + (int64_t)next * ZK_TICK_NS;
            int64_t now = zk_monotonic_ns();
            timeout = deadline > now ? deadline - now : 0;
        }
        atomic_fetch_add_explicit(&w->m_parks, 1, memory_order_relaxed);
        Py_BEGIN_ALLOW_THREADS
        zk_port_wait(w->port, timeout);
        Py_END_ALLOW_THREADS
    }

    zk_mutex_lock(&s->idle_lock);
    if (atomic_load_explicit(&w->parked, memory_order_relaxed)) {
        /* Woken by a timer, I/O or our own re-check: leave the stack. */
        for (int i = 0; i < s->parked_len; i++) {
            if (s->parked_stack[i] == w->index) {
                s->parked_stack[i] = s->parked_stack[--s->parked_len];
                break;
            }
        }
        atomic_store_explicit(&s->nparked, s->parked_len, memory_order_relaxed);
        atomic_store_explicit(&w->parked, 0, memory_order_relaxed);
    } else {
        w->searching = 1;  /* notify_parked counted us as a searcher */
    }
    zk_mutex_unlock(&s->idle_lock);
    /* The monitor sleeps while every worker is parked: tell it one is not.
     * seq_cst pairs with the fence in monitor_sleep_while_idle(). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->monitor_idle, memory_order_relaxed))
        monitor_kick(s);

    drain_mailbox(w);
    drain_releases(w);
    w->collecting = 1;
    zk_port_process(w->port);
    fire_due_timers(w);
    help_busy_workers_timers(w);
    run_woken(w);
}

/* A fairness point: measure how long the last window's polls took, set the
 * next interval from it, and run the checks. */
static void fairness_point(zk_worker *w) {
    int64_t now = zk_monotonic_ns();
    uint32_t polls = w->fair_interval - w->fair_countdown;
    int64_t per_poll = (now - w->fair_since_ns) / (int64_t)(polls > 0 ? polls : 1);
    atomic_store_explicit(&w->fair_hurry, 0, memory_order_relaxed);
    /* moving average, weight 1/4 for the newest window */
    w->avg_poll_ns = w->avg_poll_ns == 0 ? per_poll : (3 * w->avg_poll_ns + per_poll) / 4;
    int64_t interval = w->avg_poll_ns > 0 ? ZK_FAIRNESS_TARGET_NS / w->avg_poll_ns : ZK_FAIRNESS_MAX;
    if (interval < ZK_FAIRNESS_MIN)
        interval = ZK_FAIRNESS_MIN;
    if (interval > ZK_FAIRNESS_MAX)
        interval = ZK_FAIRNESS_MAX;
    w->fair_interval = (uint32_t)interval;
    w->fair_countdown = w->fair_interval;
    w->fair_due = 1;
    maintenance(w);
    w->fair_since_ns = zk_monotonic_ns();
}

/* After a park: the window measures polling, not idle time. */
static void fairness_restart(zk_worker *w) {
    w->fair_countdown = w->fair_interval;
    w->fair_since_ns = zk_monotonic_ns();
}

static void worker_loop(zk_worker *w) {
    zk_sched *s = w->sched;
    w->fair_interval = ZK_FAIRNESS_MAX;
    fairness_restart(w);
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        w->tick++;
        if (--w->fair_countdown == 0 || atomic_load_explicit(&w->fair_hurry, memory_order_relaxed))
            fairness_point(w);
        zk_task *t = next_local_task(w);
        if (t == NULL) {
            if (maintenance(w) > 0)
                continue;
            t = steal_work(w, 1);
            if (t == NULL && w->searching && s->spin) {
                /* Spin detached: a stop-the-world pause (GC) must not wait
                 * for a thread that is only looking for work. */
                PyThreadState *ts = PyEval_SaveThread();
                for (int spin = 0; t == NULL && spin < ZK_SPIN_ROUNDS; spin++) {
                    for (int k = 0; k < ZK_SPIN_PAUSES; k++)
                        cpu_relax();
                    if (atomic_load_explicit(&s->stop, memory_order_relaxed))
                        break;
                    t = steal_work(w, ZK_SPIN_STEAL_MIN);  /* touches no Python object */
                }
                PyEval_RestoreThread(ts);
            }
        }
        if (t != NULL) {
            if (w->searching)
                transition_from_searching(w);
            atomic_fetch_add_explicit(&w->m_polls, 1, memory_order_relaxed);
            atomic_store_explicit(&w->polling, 1, memory_order_relaxed);
            zk_task_run(w, t);
            atomic_store_explicit(&w->polling, 0, memory_order_relaxed);
            continue;
        }
        zk_return_value_release();  /* don't keep the last value alive while idle */
        park(w);
        fairness_restart(w);
    }
    if (w->searching) {
        w->searching = 0;
        atomic_fetch_sub_explicit(&s->num_searching, 1, memory_order_relaxed);
    }
}

/* Worker exit, on its own thread: drop timers, cancel and drain I/O. */
static void worker_teardown(zk_worker *w) {
    zk_sched *s = w->sched;
    /* Wait (detached) until nobody can still be waking our port. */
    if (!atomic_load_explicit(&s->stop_done, memory_order_acquire) ||
        atomic_load_explicit(&s->wakers_active, memory_order_acquire) != 0) {
        Py_BEGIN_ALLOW_THREADS
        while (!atomic_load_explicit(&s->stop_done, memory_order_acquire) ||
               atomic_load_explicit(&s->wakers_active, memory_order_acquire) != 0)
            sched_yield();
        Py_END_ALLOW_THREADS
    }
    drain_releases(w);
    for (;;) {
        zk_mutex_lock(&w->wheel_lock);
        zk_timer_entry *e = zk_wheel_poll(&w->wheel, ZK_WHEEL_NEVER - 1);
        if (e != NULL)
            atomic_fetch_sub_explicit(&w->m_timers_pending, 1, memory_order_relaxed);
        zk_mutex_unlock(&w->wheel_lock);
        if (e == NULL)
            break;
        Py_DECREF(zk_timer_owner((zk_timer *)e));
    }
    drain_mailbox(w);
    if (w->port != NULL) {
        /* The kernel may take a while to give back cancelled ops (multishot
         * ACCEPTs end in slices): wait for that detached, so a
         * stop-the-world pause elsewhere never waits on this worker. */
        zk_port *port = w->port;
        Py_BEGIN_ALLOW_THREADS
        zk_port_drain(port);
        Py_END_ALLOW_THREADS
        zk_port_close(w->port);
        w->port = NULL;
    }
    zk_return_value_drop();
}

/* ---- Python type: Scheduler --------------------------------------------- */

static PyObject *sched_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"threads", "backend", "blocking_threads",
                             "blocking_keep_alive", "spawn_thread", NULL};
    int threads;
    const char *backend = "auto";
    Py_ssize_t blocking_threads = 512;
    double keep_alive = 10.0;
    PyObject *spawn_thread;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "isndO:Scheduler", kwlist, &threads,
                                     &backend, &blocking_threads, &keep_alive, &spawn_thread))
        return NULL;
    if (threads < 1 || threads > 1024) {
        PyErr_Format(PyExc_ValueError, "threads must be between 1 and 1024, got %d", threads);
        return NULL;
    }
    zk_backend b;
    if (strcmp(backend, "auto") == 0)
        b = ZK_BACKEND_AUTO;
    else if (strcmp(backend, "io_uring") == 0)
        b = ZK_BACKEND_URING;
    else if (strcmp(backend, "epoll") == 0)
        b = ZK_BACKEND_EPOLL;
    else {
        PyErr_Format(PyExc_ValueError,
                     "backend must be 'auto', 'io_uring' or 'epoll', got '%s'", backend);
        return NULL;
    }
    b = zk_port_resolve_backend(b);
    if (b == ZK_BACKEND_URING && !zk_port_uring_available()) {
        PyErr_SetString(PyExc_OSError, "the io_uring backend is not available on this system");
        return NULL;
    }
    if (blocking_threads < 1) {
        PyErr_SetString(PyExc_ValueError, "blocking_threads must be >= 1");
        return NULL;
    }
    if (!(keep_alive >= 0)) {
        PyErr_SetString(PyExc_ValueError, "blocking_keep_alive must be >= 0");
        return NULL;
    }
    zk_sched *s = (zk_sched *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->st = (zk_state *)PyType_GetModuleState(type);
    s->module = Py_NewRef(PyType_GetModule(type));
    s->nworkers = threads;
    s->backend = b;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    s->spin = getenv("ZOKIO_SPIN") ? atoi(getenv("ZOKIO_SPIN")) : (ncpu > 0 && threads <= ncpu);
    s->search_width = (ncpu > 0 && ncpu < threads) ? (int)ncpu : threads;
    s->base_ns = zk_monotonic_ns();
    atomic_init(&s->num_searching, 0);
    atomic_init(&s->nparked, 0);
    zk_mutex_init(&s->idle_lock);
    for (int i = 0; i < ZK_OWNED_SHARDS; i++) {
        zk_mutex_init(&s->owned[i].lock);
        s->owned[i].head = NULL;
        atomic_init(&s->owned[i].spawned, 0);
        atomic_init(&s->owned[i].completed, 0);
    }
    if (zk_inject_init(&s->inject) < 0) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    s->parked_stack = PyMem_RawCalloc((size_t)threads, sizeof(int));
    void *mem = NULL;
    if (posix_memalign(&mem, ZK_CACHELINE, sizeof(zk_worker) * (size_t)threads) != 0)
        mem = NULL;
    s->workers = mem;
    if (s->parked_stack == NULL || s->workers == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    memset(s->workers, 0, sizeof(zk_worker) * (size_t)threads);
    for (int i = 0; i < threads; i++) {
        zk_worker *w = &s->workers[i];
        zk_local_init(&w->queue, ZK_LOCAL_QUEUE_MAX);
        w->sched = s;
        w->index = i;
        w->rng = 0x9E3779B9u * (uint32_t)(i + 1);
        zk_mutex_init(&w->mail_lock);
        zk_mutex_init(&w->wheel_lock);
        zk_wheel_init(&w->wheel, 0);
    }
    s->pool = zk_blocking_pool_new(s->st, s, (size_t)blocking_threads, keep_alive, spawn_thread);
    if (s->pool == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

/* Empty every queue (entries are borrowed).  Only after all workers stopped. */
static void drain_all_queues(zk_sched *s) {
    for (int i = 0; i < s->nworkers; i++) {
        zk_worker *w = &s->workers[i];
        atomic_store_explicit(&w->lifo, NULL, memory_order_relaxed);
        while (zk_local_pop(&w->queue) != NULL)
            ;
    }
    while (zk_inject_pop(&s->inject) != NULL)
        ;
}

static void sched_dealloc(zk_sched *s) {
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    if (s->workers != NULL) {
        drain_all_queues(s);
        for (int i = 0; i < s->nworkers; i++)
            drain_releases(&s->workers[i]);
        for (int i = 0; i < s->nworkers; i++) {
            zk_worker *w = &s->workers[i];
            for (size_t k = 0; k < w->mail_len; k++)
                Py_DECREF(w->mail[k].obj);
            PyMem_RawFree(w->mail);
            PyMem_RawFree(w->woken);
        }
        free(s->workers);
    }
    if (s->pool != NULL)
        zk_blocking_pool_free(s->pool);
    zk_inject_destroy(&s->inject);
    PyMem_RawFree(s->parked_stack);
    Py_CLEAR(s->module);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static int sched_traverse(zk_sched *s, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->module);
    /* The pool's thread-starting callable is a bound method of the Runtime
     * that owns this scheduler: without this visit that cycle is invisible
     * to the collector and no Runtime is ever freed. */
    if (s->pool != NULL) {
        int r = zk_blocking_pool_traverse(s->pool, visit, arg);
        if (r != 0)
            return r;
    }
    return 0;
}

static int sched_clear(zk_sched *s) {
    /* Only reached for an unreachable scheduler: no worker, pool thread or
     * spawner can use the pool any more. */
    if (s->pool != NULL)
        zk_blocking_pool_clear(s->pool);
    return 0;
}

/* run_worker(index, started): body of worker thread `index`.  Calls
 * started(None) once its port is open (or started(exc) and returns). */
static PyObject *sched_run_worker(zk_sched *s, PyObject *args) {
    int index;
    PyObject *started;
    if (!PyArg_ParseTuple(args, "iO:run_worker", &index, &started))
        return NULL;
    if (index < 0 || index >= s->nworkers || s->workers[index].started) {
        PyErr_SetString(PyExc_ValueError, "invalid or already started worker index");
        return NULL;
    }
    if (zk_current_worker != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this thread already runs a zokio worker");
        return NULL;
    }
    zk_worker *w = &s->workers[index];
    w->started = 1;
    int err = 0;
    w->port = zk_port_open(s->backend, &err);
    if (w->port == NULL) {
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err,
                                              "cannot open the completion port");
        PyObject *r = exc ? PyObject_CallOneArg(started, exc) : NULL;
        Py_XDECREF(exc);
        Py_XDECREF(r);
        return NULL == r ? NULL : Py_NewRef(Py_None);
    }
    zk_current_worker = w;
    atomic_fetch_add(&s->workers_running, 1);
    PyObject *r = PyObject_CallOneArg(started, Py_None);
    if (r == NULL)
        PyErr_WriteUnraisable(started);
    Py_XDECREF(r);
    worker_loop(w);
    worker_teardown(w);
    zk_current_worker = NULL;
    atomic_fetch_sub(&s->workers_running, 1);
    Py_RETURN_NONE;
}

/* during_shutdown: the runtime's own clean-up tasks (async generators'
 * aclose) spawned after cancel_all(); refused only once stop() was called. */
static PyObject *do_spawn(zk_sched *s, PyObject *coro, PyObject *name, int during_shutdown) {
    int refuse = during_shutdown ? atomic_load_explicit(&s->stop, memory_order_acquire)
                                 : atomic_load_explicit(&s->closing, memory_order_acquire);
    if (refuse) {
        /* Close it: the error is the message, not a "never awaited" warning. */
        if (PyCoro_CheckExact(coro)) {
            PyObject *r = PyObject_CallMethodNoArgs(coro, s->st->str_close);
            if (r == NULL)
                PyErr_Clear();
            Py_XDECREF(r);
        }
        PyErr_SetString(PyExc_RuntimeError, "cannot spawn: the zokio runtime is shut down");
        return NULL;
    }
    zk_task *t = zk_task_new(s->st, s, coro, name);
    if (t == NULL)
        return NULL;
    zk_sched_task_started(s, t);
    /* Shutdown may have begun since the check above.  cancel_all() sets
     * `closing` before it snapshots the registry under the shard locks, and
     * we registered under one of them: either its snapshot holds this task
     * (it will be cancelled) or we see `closing` now.  Refuse it then --
     * never queued, so nobody else runs it -- rather than leave a task that
     * no cancel reaches. */
    if (!during_shutdown && atomic_load_explicit(&s->closing, memory_order_acquire)) {
        zk_task_refuse(t);
        Py_DECREF(t);
        PyErr_SetString(PyExc_RuntimeError, "cannot spawn: the zokio runtime is shut down");
        return NULL;
    }
    /* From a running task the new task takes the LIFO slot (Tokio does
     * the same): a spawned child usually matters to its parent, and the
     * slot is not stealable, so a chain of spawns stays on one worker. */
    zk_sched_schedule(s, t, zk_current_task != NULL);
    return (PyObject *)t;
}

PyObject *zk_sched_spawn(zk_sched *s, PyObject *coro, PyObject *name) {
    return do_spawn(s, coro, name, 0);
}

static PyObject *sched_spawn(zk_sched *s, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"coro", "name", "during_shutdown", NULL};
    PyObject *coro, *name = Py_None;
    int during_shutdown = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$p:spawn", kwlist, &coro, &name,
                                     &during_shutdown))
        return NULL;
    return do_spawn(s, coro, name, during_shutdown);
}

/* cancel_all(): refuse new spawns and cancel every live task. */
static PyObject *sched_cancel_all(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    atomic_store_explicit(&s->closing, 1, memory_order_release);
    PyObject *live = owned_snapshot(s);
    if (live == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(live);
    for (Py_ssize_t i = 0; i < n; i++)
        zk_task_cancel((zk_task *)PyList_GET_ITEM(live, i));
    Py_DECREF(live);
    return PyLong_FromSsize_t(n);
}

/* forget_fd(fd, dev, ino): every worker's port lets go of what it keeps
 * for that file (a multishot ACCEPT and its queued connections), as soon
 * as it next looks at its mailbox.  For a listener being closed: only the
 * port holding the record can end it, and it may be any worker's. */
static PyObject *sched_forget_fd(zk_sched *s, PyObject *args) {
    int fd;
    unsigned long long dev, ino;
    if (!PyArg_ParseTuple(args, "iKK:forget_fd", &fd, &dev, &ino))
        return NULL;
    for (int i = 0; i < s->nworkers; i++)
        mail_post_full(&s->workers[i], (zk_mail){.kind = MAIL_FORGET_FD, .obj = Py_None,
                                                 .fd = fd, .dev = dev, .ino = ino});
    Py_RETURN_NONE;
}

static PyObject *sched_live(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLongLong(atomic_load_explicit(&s->live, memory_order_acquire));
}

static PyObject *sched_stop(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    atomic_store_explicit(&s->closing, 1, memory_order_release);
    atomic_store_explicit(&s->stop, 1, memory_order_release);
    for (int i = 0; i < s->nworkers; i++)
        if (s->workers[i].port != NULL)
            zk_port_wake(s->workers[i].port);
    atomic_store_explicit(&s->stop_done, 1, memory_order_release);
    monitor_kick(s);
    Py_RETURN_NONE;
}

/* finalize(): after every worker thread exited -- drop queued references and
 * close the coroutines of tasks that never finished. */
static PyObject *sched_finalize(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    if (atomic_load(&s->workers_running) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "finalize() while workers still run");
        return NULL;
    }
    if (s->finalized)
        Py_RETURN_NONE;
    s->finalized = 1;
    drain_all_queues(s);
    for (int i = 0; i < s->nworkers; i++)
        drain_releases(&s->workers[i]);
    for (int i = 0; i < s->nworkers; i++) {
        zk_worker *w = &s->workers[i];
        zk_mutex_lock(&w->mail_lock);
        zk_mail *items = w->mail;
        size_t n = w->mail_len;
        w->mail = NULL;
        w->mail_len = w->mail_cap = 0;
        zk_mutex_unlock(&w->mail_lock);
        for (size_t k = 0; k < n; k++)
            Py_DECREF(items[k].obj);
        PyMem_RawFree(items);
    }
    PyObject *live = owned_snapshot(s);
    if (live == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(live);
    for (Py_ssize_t i = 0; i < n; i++)
        zk_task_abandon((zk_task *)PyList_GET_ITEM(live, i));
    Py_DECREF(live);
    drain_all_queues(s);  /* abandoning may have woken waiters */
    return PyLong_FromSsize_t(n);
}

static PyObject *sched_metrics(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    uint64_t polls = 0, steals = 0, parks = 0, fired = 0, ops = 0, rescued = 0, helped = 0;
    size_t timers = 0, local = 0;
    uint64_t spawned = 0, completed = 0;
    for (int sh = 0; sh < ZK_OWNED_SHARDS; sh++) {
        completed += atomic_load_explicit(&s->owned[sh].completed, memory_order_relaxed);
        spawned += atomic_load_explicit(&s->owned[sh].spawned, memory_order_relaxed);
    }
    PyObject *per = PyList_New(0);
    if (per == NULL)
        return NULL;
    for (int i = 0; i < s->nworkers; i++) {
        zk_worker *w = &s->workers[i];
        uint64_t p = atomic_load_explicit(&w->m_polls, memory_order_relaxed);
        uint64_t st = atomic_load_explicit(&w->m_steals, memory_order_relaxed);
        uint64_t pk = atomic_load_explicit(&w->m_parks, memory_order_relaxed);
        uint64_t f = atomic_load_explicit(&w->m_timers_fired, memory_order_relaxed);
        uint64_t o = atomic_load_explicit(&w->m_ops, memory_order_relaxed);
        size_t tp = atomic_load_explicit(&w->m_timers_pending, memory_order_relaxed);
        size_t lq = zk_local_len(&w->queue);
        uint64_t rs = atomic_load_explicit(&w->m_rescued, memory_order_relaxed);
        uint64_t th = atomic_load_explicit(&w->m_timers_helped, memory_order_relaxed);
        polls += p; steals += st; parks += pk; fired += f; ops += o; timers += tp; local += lq;
        rescued += rs;
        helped += th;
        PyObject *d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:n,s:n,s:K,s:K}", "polls", p, "steals", st,
                                    "parks", pk, "timers_fired", f, "ops_completed", o,
                                    "timers_pending", (Py_ssize_t)tp, "local_queue_depth",
                                    (Py_ssize_t)lq, "stranded_rescued", rs, "timers_helped", th);
        if (d == NULL || PyList_Append(per, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(per);
            return NULL;
        }
        Py_DECREF(d);
    }
    size_t bthreads = 0, bidle = 0, bqueued = 0;
    zk_blocking_pool_stats(s->pool, &bthreads, &bidle, &bqueued);
    PyObject *r = Py_BuildValue(
        "{s:i,s:s,s:K,s:K,s:L,s:K,s:K,s:K,s:n,s:n,s:n,s:K,s:K,s:n,s:n,s:n,s:O}",
        "workers", s->nworkers, "backend", zk_port_backend_name(s->backend),
        "tasks_spawned", (unsigned long long)spawned,
        "tasks_completed", (unsigned long long)completed,
        "tasks_live", (long long)atomic_load(&s->live),
        "polls", (unsigned long long)polls, "steals", (unsigned long long)steals,
        "parks", (unsigned long long)parks,
        "inject_queue_depth", (Py_ssize_t)zk_inject_len(&s->inject),
        "local_queue_depth", (Py_ssize_t)local,
        "timers_pending", (Py_ssize_t)timers,
        "timers_fired", (unsigned long long)fired, "ops_completed", (unsigned long long)ops,
        "blocking_threads", (Py_ssize_t)bthreads, "blocking_idle", (Py_ssize_t)bidle,
        "blocking_queue_depth", (Py_ssize_t)bqueued, "per_worker", per);
    if (r != NULL) {
        PyObject *v = PyLong_FromUnsignedLongLong(rescued);
        if (v == NULL || PyDict_SetItemString(r, "stranded_rescued", v) < 0)
            Py_CLEAR(r);
        Py_XDECREF(v);
    }
    if (r != NULL) {
        PyObject *v = PyLong_FromUnsignedLongLong(helped);
        if (v == NULL || PyDict_SetItemString(r, "timers_helped", v) < 0)
            Py_CLEAR(r);
        Py_XDECREF(v);
    }
    Py_DECREF(per);
    return r;
}

static PyObject *sched_blocking_thread_main(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    zk_blocking_pool_thread_main(s->pool);
    Py_RETURN_NONE;
}

static PyObject *sched_blocking_shutdown(zk_sched *s, PyObject *Py_UNUSED(ignored)) {
    zk_blocking_pool_shutdown(s->pool);
    Py_RETURN_NONE;
}

static PyObject *sched_blocking_join(zk_sched *s, PyObject *arg) {
    double timeout = -1;
    if (arg != Py_None) {
        timeout = PyFloat_AsDouble(arg);
        if (timeout == -1 && PyErr_Occurred())
            return NULL;
        if (timeout < 0)
            timeout = 0;
    }
    return PyBool_FromLong(zk_blocking_pool_join(s->pool, timeout));
}

PyObject *zk_sched_spawn_blocking(zk_sched *s, PyObject *fn, PyObject *args, PyObject *kwargs) {
    if (atomic_load_explicit(&s->closing, memory_order_acquire)) {
        PyErr_SetString(PyExc_RuntimeError, "cannot spawn_blocking: the zokio runtime is shut down");
        return NULL;
    }
    PyObject *leaf = PyObject_GC_New(PyObject, s->st->OneshotType);
    if (leaf == NULL)
        return NULL;
    zk_leaf *l = (zk_leaf *)leaf;
    zk_leaf_init(l);
    PyObject_GC_Track(leaf);
    if (zk_blocking_pool_submit(s->pool, fn, args, kwargs, l) < 0) {
        Py_DECREF(leaf);
        return NULL;
    }
    return leaf;
}

static PyObject *sched_get_backend(zk_sched *s, void *Py_UNUSED(c)) {
    return PyUnicode_FromString(zk_port_backend_name(s->backend));
}

static PyObject *sched_get_threads(zk_sched *s, void *Py_UNUSED(c)) {
    return PyLong_FromLong(s->nworkers);
}

static PyMethodDef sched_methods[] = {
    {"run_worker", (PyCFunction)sched_run_worker, METH_VARARGS, NULL},
    {"run_monitor", (PyCFunction)sched_run_monitor, METH_NOARGS,
     "Body of the monitor thread: takes over the due timers and the LIFO task "
     "of a worker stuck in one long poll.  Returns once stop() was called."},
    {"spawn", (PyCFunction)(void (*)(void))sched_spawn, METH_VARARGS | METH_KEYWORDS, NULL},
    {"cancel_all", (PyCFunction)sched_cancel_all, METH_NOARGS, NULL},
    {"live", (PyCFunction)sched_live, METH_NOARGS, NULL},
    {"forget_fd", (PyCFunction)sched_forget_fd, METH_VARARGS,
     "forget_fd(fd, dev, ino): every worker's port drops what it keeps for that "
     "file (a multishot ACCEPT and the connections it queued)."},
    {"stop", (PyCFunction)sched_stop, METH_NOARGS, NULL},
    {"finalize", (PyCFunction)sched_finalize, METH_NOARGS, NULL},
    {"metrics", (PyCFunction)sched_metrics, METH_NOARGS, NULL},
    {"blocking_thread_main", (PyCFunction)sched_blocking_thread_main, METH_NOARGS, NULL},
    {"blocking_shutdown", (PyCFunction)sched_blocking_shutdown, METH_NOARGS, NULL},
    {"blocking_join", (PyCFunction)sched_blocking_join, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sched_getset[] = {
    {"backend", (getter)sched_get_backend, NULL, NULL, NULL},
    {"threads", (getter)sched_get_threads, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sched_slots[] = {
    {Py_tp_new, sched_new},
    {Py_tp_dealloc, sched_dealloc},
    {Py_tp_traverse, sched_traverse},
    {Py_tp_clear, sched_clear},
    {Py_tp_methods, sched_methods},
    {Py_tp_getset, sched_getset},
    {0, NULL},
};

static PyType_Spec sched_spec = {
    .name = "zokio._native.Scheduler",
    .basicsize = sizeof(zk_sched),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sched_slots,
};

int zk_sched_type_init(PyObject *module, zk_state *st) {
    st->SchedulerType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sched_spec, NULL);
    if (st->SchedulerType == NULL)
        return -1;
    return PyModule_AddObjectRef(module, "Scheduler", (PyObject *)st->SchedulerType);
}

zk_sched *zk_current_sched(void) {
    return zk_current_worker ? zk_current_worker->sched : NULL;
}
