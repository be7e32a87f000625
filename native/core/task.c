/* task.c -- the Task type (exposed as zokio.JoinHandle) and the poll step.
 *
 * A task is polled by zk_task_run() on a worker.  The coroutine either
 * returns (the task completes), raises (completes with the exception) or
 * yields a zokio leaf, with which the task registers itself as the waker.
 * Awaiting a Task from another task makes the awaiter a waiter of the task.
 */
#include "core/task.h"
#include "core/leaf.h"
#include "core/sched.h"
#include "core/timeout_arg.h"

#include <pthread.h>
#include <string.h>

ZK_TLS zk_worker *zk_current_worker = NULL;
ZK_TLS zk_task *zk_current_task = NULL;
ZK_TLS int zk_coop_budget = 0;
ZK_TLS int zk_abandoning = 0;
ZK_TLS int zk_worker_before_fork = 0;
ZK_TLS PyObject *zk_suspending = NULL;

/* A coroutine yielded `obj` without obj's own __next__ having just
 * suspended (zk_suspending): a bare `yield` from a generator-based
 * coroutine.  A zokio awaitable reached this way would resume its task
 * with None instead of its result: refused with a TypeError, as is anything
 * that is not a zokio awaitable.  Returns -1 with the exception set. */
static int yielded_bare(zk_state *st, PyObject *obj) {
    if (zk_leaf_ops_of(st, obj) == NULL)
        return zk_awaitable_foreign(obj);
    PyErr_Format(PyExc_TypeError,
                 "%R was yielded by a bare 'yield' (a generator-based coroutine?); "
                 "zokio awaitables must be awaited ('await x' or 'yield from "
                 "x.__await__()'), or their result is lost", obj);
    return -1;
}

/* fork() from inside a task (multiprocessing's "fork" start method, or
 * os.fork() in a coroutine): the child's one thread is a copy of a worker in
 * the middle of a poll, but no other thread of that runtime exists there.
 * The child forgets that this thread is a worker, as asyncio forgets its
 * running loop, so a new Runtime works in the child (block_on, result(),
 * blocking waits no longer see "a worker") and zokio.spawn() and the like
 * say why they cannot use the old one.  Plain stores to this thread's own
 * TLS: safe in an atfork child handler. */
static void forget_worker_in_child(void) {
    zk_worker_before_fork = zk_current_worker != NULL;
    zk_current_worker = NULL;
    zk_current_task = NULL;
    zk_coop_budget = 0;
    zk_abandoning = 0;
}

static void install_fork_hook(void) {
    pthread_atfork(NULL, NULL, forget_worker_in_child);
}

/* ---- one runner per coroutine ---------------------------------------------
 *
 * The state word guarantees that one worker at a time polls a *task*.  But a
 * coroutine object can be reached by other paths: the user spawns the same
 * coroutine twice, or spawns it and also awaits it directly from another
 * task.  On 3.13t two threads sending into one coroutine can crash the
 * interpreter (gh-120321: the "already executing" check in genobject.c is
 * not atomic).
 *
 * So a task that owns a coroutine changes the coroutine's type, for as long
 * as it owns it, to OwnedCoroutine: the same object layout and the same
 * traverse/dealloc/repr/attributes, but its __await__, send(), throw() and
 * close() raise RuntimeError, and it is not the exact coroutine type that
 * the interpreter's SEND fast path and GET_AWAITABLE accept.  Every other
 * runner -- `await coro` in another task, coro.send() from a plain thread,
 * a second spawn -- tests the type first and is refused, on every thread,
 * at every moment, including while the owner is inside the coroutine.  The
 * owner drives it through the coroutine type's own send/throw functions.
 * spawn claims the coroutine with one CAS on its type pointer.
 *
 * The frame state is held too, for the claim: an intruder that had already
 * passed the type test when spawn swapped the type must not find the frame
 * enterable.  While a task owns a coroutine and is not polling it, the
 * coroutine's frame state holds a value of our own, FS_HELD (2: between CPython's
 * COMPLETED = 1 and CLEARED = 4, a value CPython never stores).  Every path
 * into a coroutine tests the state first, and FS_HELD reads as "finished"
 * (>= COMPLETED) to all of them: send()/throw() and the SEND of `await coro`
 * raise RuntimeError ("cannot reuse already awaited coroutine"), close()
 * returns without touching the frame, frame.clear() leaves it alone, and
 * the GC and dealloc still see a live frame (< CLEARED).  spawn claims a
 * fresh coroutine with one CAS (CREATED -> FS_HELD), so spawning it twice is
 * refused with a clear error (CREATED is never seen again after a claim:
 * see coro_unhold).
 *
 * Why not hold it as EXECUTING: an intruder that slips into the coroutine
 * in the gap below also marks it EXECUTING, and our next restore (a plain
 * EXECUTING -> SUSPENDED) could not tell its own hold from the intruder's
 * run: two threads ended up in one frame (the await-owned storm crashed 3.13t
 * in 2 of 3 runs that way).  With a value of our own, the restore is a CAS
 * from FS_HELD, which fails while anyone else is inside.
 *
 * The poller restores the real state just before its send/throw and
 * re-holds it with a CAS right after; if either CAS fails, someone who got
 * past the type test before the claim entered the coroutine, and the task
 * fails at its next poll (ZK_CORO_LOST) rather than sending into it again.
 * The frame state alone did not suffice: an `await coro` that passed
 * GET_AWAITABLE while the owner ran the frame could enter it at SEND in the
 * instant the owner's YIELD_VALUE had stored SUSPENDED but not yet finished
 * unlinking the frame (the await-owned storm crashed 3.13t that way).
 *
 * The frame state field is in the public (non-limited) PyCoroObject layout
 * of 3.11-3.13; its values are CPython's PyFrameState. */
/* What an intruder is told: the coroutine belongs to a zokio task. */
static void owned_coro_error(PyObject *coro, const char *what) {
    PyErr_Format(PyExc_RuntimeError,
                 "cannot %s %R: it is owned by a zokio task (it was spawned); a coroutine "
                 "object can be spawned or awaited only once -- await the JoinHandle that "
                 "spawn() returned, or call the async function again for a new coroutine",
                 what, coro);
}

/* The coroutine's type back to the exact coroutine type.  Owner only. */
static inline void coro_untype(zk_task *t) {
    if (t->coro_typed) {
        __atomic_store_n(&t->coro->ob_type, &PyCoro_Type, __ATOMIC_RELEASE);
        t->coro_typed = 0;
    }
}

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define ZK_CORO_HOLD 1
#if PY_VERSION_HEX >= 0x030D0000
enum { FS_CREATED = -3, FS_SUSPENDED = -2, FS_SUSPENDED_YIELD_FROM = -1 };
#else
enum { FS_CREATED = -2, FS_SUSPENDED = -1, FS_SUSPENDED_YIELD_FROM = -1 };
#endif
enum { FS_EXECUTING = 0, FS_COMPLETED = 1, FS_HELD = 2, FS_CLEARED = 4 };

/* coro_saved values: what to restore before the next send. */
enum { ZK_CORO_NOT_HELD = 0, ZK_CORO_CREATED = 1, ZK_CORO_SUSPENDED = 2,
       ZK_CORO_SUSPENDED_YF = 3 };

static inline int8_t *coro_frame_state(PyObject *coro) {
    return &((PyCoroObject *)coro)->cr_frame_state;
}

static int8_t saved_to_frame_state(unsigned saved) {
    return saved == ZK_CORO_CREATED ? FS_CREATED
           : saved == ZK_CORO_SUSPENDED ? FS_SUSPENDED : FS_SUSPENDED_YIELD_FROM;
}

/* spawn: take a fresh coroutine.  Returns 0, or -1 with RuntimeError naming
 * the mistake. */
static int coro_claim(zk_task *t, PyObject *coro) {
    PyTypeObject *expected_type = &PyCoro_Type;
    if (!__atomic_compare_exchange_n(&coro->ob_type, &expected_type, t->st->OwnedCoroType, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        owned_coro_error(coro, "spawn");
        return -1;
    }
    int8_t expected = FS_CREATED;
    if (__atomic_compare_exchange_n(coro_frame_state(coro), &expected, FS_HELD, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        t->coro_saved = ZK_CORO_CREATED;
        t->coro_typed = 1;
        return 0;
    }
    __atomic_store_n(&coro->ob_type, &PyCoro_Type, __ATOMIC_RELEASE);
    if (expected == FS_HELD || expected == FS_EXECUTING)
        PyErr_Format(PyExc_RuntimeError,
                     "cannot spawn %R: it is already being run by another zokio task "
                     "(or is executing right now); a coroutine object can be spawned or "
                     "awaited only once -- call the async function again for a new one",
                     coro);
    else if (expected >= FS_COMPLETED)
        PyErr_Format(PyExc_RuntimeError,
                     "cannot spawn %R: it has already finished; a coroutine object can "
                     "be spawned or awaited only once", coro);
    else
        PyErr_Format(PyExc_RuntimeError,
                     "cannot spawn %R: it was already started (awaited or spawned "
                     "elsewhere); a coroutine object can be spawned or awaited only once",
                     coro);
    return -1;
}

/* Before a send/throw by the task's runner.  A coroutine that never ran is
 * let through as SUSPENDED, not CREATED: CREATED must never be seen again
 * once a task claimed it, or a second spawn's claim CAS could succeed in the
 * gap before genobject.c marks it executing.  For a coroutine whose frame
 * has not started, SUSPENDED and CREATED differ in genobject.c only by the
 * refusal to send a non-None value, and we send None (or throw). */
static inline int coro_unhold(zk_task *t) {
    if (t->coro_saved == ZK_CORO_NOT_HELD)
        return 0;
    int8_t fs = t->coro_saved == ZK_CORO_CREATED ? (int8_t)FS_SUSPENDED
                                                 : saved_to_frame_state(t->coro_saved);
    int8_t held = FS_HELD;
    if (__atomic_compare_exchange_n(coro_frame_state(t->coro), &held, fs, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 0;
    /* Someone is inside it (or finished it) though we held it: only a
     * runner that passed the type test before our claim can be.  It is
     * theirs now: never send again. */
    t->coro_saved = ZK_CORO_NOT_HELD;
    coro_untype(t);
    return -1;
}

/* After a send/throw that suspended the coroutine.  Returns 0, or -1 if
 * someone else entered it in the gap (it is not held then). */
static inline int coro_rehold(zk_task *t) {
    int8_t cur = __atomic_load_n(coro_frame_state(t->coro), __ATOMIC_ACQUIRE);
    if (cur == FS_SUSPENDED || cur == FS_SUSPENDED_YIELD_FROM) {
        unsigned saved = cur == FS_SUSPENDED ? ZK_CORO_SUSPENDED : ZK_CORO_SUSPENDED_YF;
        if (__atomic_compare_exchange_n(coro_frame_state(t->coro), &cur, FS_HELD, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            t->coro_saved = saved;
            return 0;
        }
    }
    t->coro_saved = ZK_CORO_NOT_HELD;
    coro_untype(t);
    return -1;
}

/* Give the coroutine back its real state (its task is done with it): a
 * coroutine that never ran is CREATED again, so close() finishes it without
 * running it. */
static inline void coro_release(zk_task *t) {
    if (t->coro_saved != ZK_CORO_NOT_HELD) {
        int8_t held = FS_HELD;
        /* A failed CAS leaves the state to whoever is inside. */
        __atomic_compare_exchange_n(coro_frame_state(t->coro), &held,
                                    saved_to_frame_state(t->coro_saved), 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    t->coro_saved = ZK_CORO_NOT_HELD;
    coro_untype(t);  /* after the state: an ordinary coroutine again */
}

/* A coroutine that refused to close (it swallowed GeneratorExit and awaited
 * again) is marked finished, so that its finalizer does not run it again:
 * its frame is cleared, without running, when it is freed. */
static inline void coro_kill(PyObject *coro) {
    int8_t cur = __atomic_load_n(coro_frame_state(coro), __ATOMIC_ACQUIRE);
    if (cur < FS_COMPLETED)
        __atomic_store_n(coro_frame_state(coro), (int8_t)FS_COMPLETED, __ATOMIC_RELEASE);
}
#else
/* 3.14+: the frame state is not in the public layout; only the type is
 * held. */
#define ZK_CORO_NOT_HELD 0
static int coro_claim(zk_task *t, PyObject *coro) {
    PyTypeObject *expected_type = &PyCoro_Type;
    if (!__atomic_compare_exchange_n(&coro->ob_type, &expected_type, t->st->OwnedCoroType, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        owned_coro_error(coro, "spawn");
        return -1;
    }
    t->coro_typed = 1;
    return 0;
}
static inline int coro_unhold(zk_task *t) { (void)t; return 0; }
static inline int coro_rehold(zk_task *t) { (void)t; return 0; }
static inline void coro_release(zk_task *t) { coro_untype(t); }
static inline void coro_kill(PyObject *coro) { (void)coro; }
#endif

/* The outcome split by kind; only meaningful once complete. */
int zk_task_is_complete(zk_task *t) {
    /* acquire: pairs with the release in transition_to_complete, so result
     * and exception are visible once COMPLETE is seen. */
    return (atomic_load_explicit(&t->state, memory_order_acquire) & ZK_COMPLETE) != 0;
}

static zk_task *task_new_from_coro(zk_state *st, zk_sched *s, PyObject *coro, PyObject *name);

/* Awaitable but not a coroutine (an Op such as stream.read(), a sync
 * primitive's wait, a Oneshot, a JoinHandle...): the task awaits it in a
 * small coroutine of its own (zokio._api._await_one), as asyncio's
 * ensure_future does. */
static int is_wrappable_awaitable(zk_state *st, PyObject *obj) {
    PyTypeObject *tp = Py_TYPE(obj);
    return st->await_one != NULL && tp->tp_as_async != NULL && tp->tp_as_async->am_await != NULL &&
           !PyCoro_CheckExact(obj) && !Py_IS_TYPE(obj, st->OwnedCoroType);
}

zk_task *zk_task_new(zk_state *st, zk_sched *s, PyObject *coro, PyObject *name) {
    if (!PyCoro_CheckExact(coro) && is_wrappable_awaitable(st, coro)) {
        PyObject *wrapped = PyObject_CallOneArg(st->await_one, coro);
        if (wrapped == NULL)
            return NULL;
        zk_task *t = task_new_from_coro(st, s, wrapped, name);
        Py_DECREF(wrapped);
        return t;
    }
    return task_new_from_coro(st, s, coro, name);
}

static zk_task *task_new_from_coro(zk_state *st, zk_sched *s, PyObject *coro, PyObject *name) {
    if (Py_IS_TYPE(coro, st->OwnedCoroType)) {
        owned_coro_error(coro, "spawn");
        return NULL;
    }
    if (!PyCoro_CheckExact(coro)) {
        PyErr_Format(PyExc_TypeError,
                     "zokio can only spawn a coroutine object, not %R "
                     "(did you forget to call the async function?)", coro);
        return NULL;
    }
    if (name != NULL && name != Py_None && !PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "task name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    PyObject *ctx = PyContext_CopyCurrent();
    if (ctx == NULL)
        return NULL;
    zk_task *t = PyObject_GC_New(zk_task, st->TaskType);
    if (t == NULL) {
        Py_DECREF(ctx);
        return NULL;
    }
    /* Born NOTIFIED: the spawner queues it right away. */
    atomic_init(&t->state, ZK_NOTIFIED);
    t->failed = 0;
    t->yield_resume = 0;
    t->coro_saved = ZK_CORO_NOT_HELD;
    t->coro_typed = 0;
    t->coro = NULL;
    t->context = ctx;
    t->name = (name != NULL && name != Py_None) ? Py_NewRef(name) : NULL;
    t->outcome = NULL;
    t->waiting_on = NULL;
    t->st = st;
    t->sched = s;
    zk_mutex_init(&t->lock);
    t->waiters = NULL;
    t->interrupt = NULL;
    t->owned_prev = t->owned_next = NULL;
    if (coro_claim(t, coro) < 0) {
        /* Not tracked yet, holds no coroutine: a plain free. */
        atomic_store_explicit(&t->state, ZK_COMPLETE, memory_order_relaxed);
        Py_DECREF(t);
        return NULL;
    }
    t->coro = Py_NewRef(coro);
    /* Not tracked by the collector while it runs: a live task is always
     * reachable (the live-task registry owns it), so a collection could only
     * spend time on it; bursts of tasks made those stop-the-world pauses the
     * largest part of timer lateness.  What it references is still found
     * through other paths or kept alive by it.  task_complete() starts
     * tracking it, and from then on cycles through the finished task (its
     * exception's traceback, its coroutine's frame) are collectable. */
    return t;
}

void zk_task_wake(zk_task *t) {
    if (zk_transition_to_notified(t) == ZK_WAKE_SUBMIT) {
        /* Queue entries borrow the task: see zk_sched_schedule. */
        /* On a worker, a woken task runs next (LIFO slot): it is cache-hot
         * and is usually what the waker's progress was waiting for. */
        zk_sched_schedule(t->sched, t, 1);
    }
}

/* ---- waiters ------------------------------------------------------------ */

int zk_task_add_waiter(zk_task *t, PyObject *waiter) {
    /* Nothing that can allocate a GC object (and so, on GIL builds, run a
     * collection and arbitrary finalizers) happens under the lock: a second
     * waiter's list is made before taking it. */
    PyObject *spare = NULL;
    for (;;) {
        int added = 1, need_list = 0;
        zk_mutex_lock(&t->lock);
        if (zk_task_is_complete(t)) {
            added = 0;
        } else if (t->waiters == NULL) {
            t->waiters = Py_NewRef(waiter);
        } else if (PyList_CheckExact(t->waiters)) {
            /* Resizing a list only reallocates its item array. */
            if (PyList_Append(t->waiters, waiter) < 0)
                added = -1;
        } else if (spare != NULL) {
            PyList_SET_ITEM(spare, 0, t->waiters);  /* moves our reference */
            PyList_SET_ITEM(spare, 1, Py_NewRef(waiter));
            t->waiters = spare;
            spare = NULL;
        } else {
            need_list = 1;
        }
        zk_mutex_unlock(&t->lock);
        if (!need_list) {
            Py_XDECREF(spare);
            return added;
        }
        spare = PyList_New(2);
        if (spare == NULL)
            return -1;
    }
}

void zk_task_remove_waiter(zk_task *t, PyObject *waiter) {
    PyObject *drop = NULL;
    zk_mutex_lock(&t->lock);
    if (t->waiters == waiter) {
        drop = t->waiters;
        t->waiters = NULL;
    } else if (t->waiters != NULL && PyList_CheckExact(t->waiters)) {
        Py_ssize_t n = PyList_GET_SIZE(t->waiters);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyList_GET_ITEM(t->waiters, i) == waiter) {
                drop = Py_NewRef(waiter);
                PyList_SetSlice(t->waiters, i, i + 1, NULL);
                break;
            }
        }
    }
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(drop);  /* outside the lock: may run arbitrary code */
}

static void notify_waiter(zk_state *st, PyObject *waiter) {
    if (Py_TYPE(waiter) == st->TaskType) {
        zk_task_wake((zk_task *)waiter);
    } else {
        PyObject *r = PyObject_CallNoArgs(waiter);
        if (r == NULL)
            PyErr_WriteUnraisable(waiter);
        Py_XDECREF(r);
    }
}

/* ---- completion ----------------------------------------------------------- */

/* Steals result and exc.  Runs on the thread that holds RUNNING (or on the
 * shutdown thread for an abandoned task). */
static void task_complete(zk_task *t, PyObject *result, PyObject *exc) {
    zk_state *st = t->st;
    t->failed = exc != NULL;
    if (exc != NULL) {
        /* Keep the traceback the task ended with beside the exception: the
         * exception's own __traceback__ grows every time it is raised. */
        PyObject *tb = PyException_GetTraceback(exc);
        PyObject *pair = PyTuple_Pack(2, exc, tb ? tb : Py_None);
        Py_XDECREF(tb);
        if (pair == NULL) {
            PyErr_WriteUnraisable((PyObject *)t);
            pair = PyTuple_Pack(2, exc, Py_None);  /* cannot fail twice in practice */
        }
        Py_DECREF(exc);
        t->outcome = pair;
    } else {
        t->outcome = result;
    }
    /* The finished coroutine (its frame already cleared on return) stays
     * until the handle itself dies: it was created by the spawner's thread,
     * which usually drops the handle too, so freeing it there avoids a
     * cross-thread free (a trip through CPython's biased-refcount queue,
     * whose lock the two threads then fight over). */
    PyObject *waiting = t->waiting_on;
    t->waiting_on = NULL;
    zk_transition_to_complete(t);
    PyObject_GC_Track((PyObject *)t);  /* see zk_task_new */

    zk_mutex_lock(&t->lock);
    PyObject *waiters = t->waiters;
    PyObject *interrupt = t->interrupt;
    t->waiters = NULL;
    t->interrupt = NULL;
    atomic_fetch_and_explicit(&t->state, ~ZK_INTERRUPT, memory_order_relaxed);
    zk_mutex_unlock(&t->lock);

    Py_XDECREF(waiting);
    Py_XDECREF(interrupt);
    if (waiters != NULL) {
        if (PyList_CheckExact(waiters)) {
            Py_ssize_t n = PyList_GET_SIZE(waiters);
            for (Py_ssize_t i = 0; i < n; i++)
                notify_waiter(st, PyList_GET_ITEM(waiters, i));
        } else {
            notify_waiter(st, waiters);
        }
        Py_DECREF(waiters);
    }
    zk_sched_task_finished(t->sched, t);
}

/* ---- the poll step ------------------------------------------------------ */

typedef enum { STEP_YIELDED, STEP_RETURNED, STEP_RAISED } step_result;

/* Throw `exc` (borrowed) into the coroutine.  Stores the yielded or returned
 * object in *out (new reference). */
/* coroutine.throw of the exact coroutine type, found once at module init:
 * the owner calls it directly, whatever the coroutine's type is now. */
static PyMethodDef *coro_throw_def = NULL;
typedef PyObject *(*zk_fastcall_fn)(PyObject *, PyObject *const *, Py_ssize_t);

static PyObject *coro_call_throw(PyObject *coro, PyObject *exc) {
    int flags = coro_throw_def->ml_flags & (METH_VARARGS | METH_FASTCALL | METH_NOARGS | METH_O | METH_KEYWORDS);
    if (flags == METH_FASTCALL)
        return ((zk_fastcall_fn)(void (*)(void))coro_throw_def->ml_meth)(coro, &exc, 1);
    if (flags == METH_O)
        return coro_throw_def->ml_meth(coro, exc);
    PyObject *args = PyTuple_Pack(1, exc);
    if (args == NULL)
        return NULL;
    PyObject *r = flags & METH_KEYWORDS
        ? ((PyCFunctionWithKeywords)(void (*)(void))coro_throw_def->ml_meth)(coro, args, NULL)
        : coro_throw_def->ml_meth(coro, args);
    Py_DECREF(args);
    return r;
}

static step_result throw_into(zk_state *st, PyObject *coro, PyObject *exc, PyObject **out) {
    ZK_UNUSED(st);
    PyObject *r = coro_call_throw(coro, exc);
    if (r != NULL) {
        *out = r;
        return STEP_YIELDED;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *stop = zk_fetch_exception();
        PyObject *value = PyObject_GetAttrString(stop, "value");
        Py_DECREF(stop);
        if (value == NULL)
            return STEP_RAISED;
        *out = value;
        return STEP_RETURNED;
    }
    *out = NULL;
    return STEP_RAISED;
}

static step_result send_into(PyObject *coro, PyObject **out) {
    /* The exact coroutine type's am_send: the coroutine's own type may be
     * OwnedCoroutine now, whose am_send refuses. */
    PySendResult r = PyCoro_Type.tp_as_async->am_send(coro, Py_None, out);
    if (r == PYGEN_NEXT)
        return STEP_YIELDED;
    if (r == PYGEN_RETURN)
        return STEP_RETURNED;
    return STEP_RAISED;
}

static int scoped_interrupt_due(zk_worker *w, zk_task *t, zk_timeout_scope *inner);
static PyObject *take_scoped_interrupt(zk_task *t, zk_timeout_scope *inner);
static zk_timeout_scope *innermost_scope(zk_task *t);
static void recheck_after_throw(zk_task *t);

void zk_task_run(zk_worker *w, zk_task *t) {
    zk_sched *s = t->sched;
    zk_state *st = t->st;
    if (zk_transition_to_running(t) == ZK_RUN_DONE)
        return;

    PyObject *interrupt = NULL;
    int resumed = 0;
    uint32_t state_now = atomic_load_explicit(&t->state, memory_order_acquire);
    if (state_now & ZK_CORO_LOST) {
        Py_CLEAR(t->waiting_on);
        PyErr_Format(PyExc_RuntimeError,
                     "the coroutine of %R was resumed by someone else (awaited directly "
                     "or sent into) while this task owned it; a coroutine object can be "
                     "spawned or awaited only once", (PyObject *)t);
        task_complete(t, NULL, zk_fetch_exception());  /* may free t */
        return;
    }
    int interrupted = (state_now & ZK_INTERRUPT) != 0;
    zk_timeout_scope *inner = NULL;
    if (interrupted && (state_now & ZK_SCOPED)) {
        /* Cancel scopes decide what is due (maybe nothing: a shield). */
        inner = innermost_scope(t);
        interrupted = scoped_interrupt_due(w, t, inner);
    }
    if (interrupted && t->waiting_on != NULL) {
        switch (zk_awaitable_interrupt_mode(st, w, t->waiting_on)) {
        case ZK_INTERRUPT_WAIT:
            Py_XDECREF(inner);
            goto idle;            /* the op's completion wakes us again */
        case ZK_INTERRUPT_LATER:
            interrupted = 0;      /* resume with the op's result first */
            break;
        default:
            break;
        }
    }
    if (interrupted) {
        if (state_now & ZK_SCOPED) {
            interrupt = take_scoped_interrupt(t, inner);
        } else {
            zk_mutex_lock(&t->lock);
            interrupt = t->interrupt;
            t->interrupt = NULL;
            atomic_fetch_and_explicit(&t->state, ~ZK_INTERRUPT, memory_order_relaxed);
            zk_mutex_unlock(&t->lock);
        }
    }
    Py_XDECREF(inner);

    if (t->waiting_on != NULL) {
        if (interrupt != NULL) {
            zk_awaitable_unregister(st, w, t, t->waiting_on);
        } else if (!zk_awaitable_ready(st, t->waiting_on)) {
            /* A spurious wake (a stale waker, a cancelled leaf): the
             * coroutine cannot make progress, so do not resume it. */
            goto idle;
        }
        Py_CLEAR(t->waiting_on);
    }

    if (PyContext_Enter(t->context) < 0) {
        /* Only fails if the context is entered elsewhere, which our one-
         * runner rule excludes; report and treat as a task failure. */
        Py_XDECREF(interrupt);
        task_complete(t, NULL, zk_fetch_exception());  /* may free t */
        return;
    }
    zk_current_task = t;
    zk_coop_budget = ZK_COOP_BUDGET;
    resumed = 1;

    PyObject *out = NULL;
    step_result step;
    int threw = interrupt != NULL;
    if (coro_unhold(t) < 0) {
        /* Someone else is inside the coroutine: never send into it. */
        zk_current_task = NULL;
        Py_XDECREF(interrupt);
        if (PyContext_Exit(t->context) < 0)
            PyErr_WriteUnraisable((PyObject *)t);
        Py_CLEAR(t->waiting_on);
        PyErr_Format(PyExc_RuntimeError,
                     "the coroutine of %R was resumed by someone else (awaited directly "
                     "or sent into) while this task owned it; a coroutine object can be "
                     "spawned or awaited only once", (PyObject *)t);
        task_complete(t, NULL, zk_fetch_exception());  /* may free t */
        return;
    }
    zk_suspending = NULL;
    if (interrupt != NULL) {
        step = throw_into(st, t->coro, interrupt, &out);
        Py_CLEAR(interrupt);
    } else {
        step = send_into(t->coro, &out);
    }
    while (step == STEP_YIELDED) {
        int registered = out == zk_suspending ? zk_awaitable_register(st, w, t, out)
                                              : yielded_bare(st, out);
        if (registered == 0) {
            t->waiting_on = out;  /* owns the reference */
            break;
        }
        /* Not a zokio awaitable, or one yielded bare: throw the TypeError
         * into the coroutine so the await fails loudly instead of hanging
         * or losing its result. */
        PyObject *err = zk_fetch_exception();
        Py_DECREF(out);
        out = NULL;
        zk_suspending = NULL;
        step = throw_into(st, t->coro, err, &out);
        Py_DECREF(err);
    }

    zk_current_task = NULL;
    if (step == STEP_YIELDED) {
        if (coro_rehold(t) < 0) {
            /* Poll again at once: that poll fails the task. */
            atomic_fetch_or_explicit(&t->state, ZK_CORO_LOST, memory_order_relaxed);
            zk_task_wake(t);
        }
    } else {
        t->coro_saved = ZK_CORO_NOT_HELD;  /* finished: nothing to hold */
        coro_untype(t);
    }
    if (PyContext_Exit(t->context) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    /* Thrown at, and suspended again: still inside a cancelled scope? */
    if (threw && step == STEP_YIELDED &&
        (atomic_load_explicit(&t->state, memory_order_relaxed) & ZK_SCOPED))
        recheck_after_throw(t);

    if (step == STEP_RETURNED) {
        task_complete(t, out, NULL);  /* may free t */
        return;
    }
    if (step == STEP_RAISED) {
        task_complete(t, NULL, zk_fetch_exception());  /* may free t */
        return;
    }

idle:
    /* An interrupt deferred past an op's completion (ZK_INTERRUPT_LATER) is
     * still pending: make sure the task is polled again to deliver it. */
    if (resumed && (atomic_load_explicit(&t->state, memory_order_acquire) & ZK_INTERRUPT))
        zk_task_wake(t);
    if (zk_transition_to_idle(t) == ZK_IDLE_REQUEUE)
        zk_sched_schedule_yield(s, t);
}

/* ---- interrupts (cancel, timeout) ---------------------------------------- */

/* Place `exc` as the pending interrupt.  replace: overwrite a pending one
 * (cancellation wins over a timeout).  Returns 1 if placed. */
static int place_interrupt(zk_task *t, PyObject *exc, int replace) {
    PyObject *old = NULL;
    int placed = 0;
    zk_mutex_lock(&t->lock);
    if (!zk_task_is_complete(t) && (t->interrupt == NULL || replace)) {
        old = t->interrupt;
        t->interrupt = Py_NewRef(exc);
        atomic_fetch_or_explicit(&t->state, ZK_INTERRUPT, memory_order_release);
        placed = 1;
    }
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(old);
    if (placed)
        zk_task_wake(t);
    return placed;
}

int zk_task_cancel(zk_task *t) {
    if (zk_task_is_complete(t))
        return 0;
    zk_state *st = t->st;
    /* Cancellation is delivered once: a second cancel() must not interrupt
     * the cleanup (finally blocks that await) of the first. */
    uint32_t prev = atomic_fetch_or_explicit(&t->state, ZK_CANCELLED, memory_order_acq_rel);
    if (prev & (ZK_CANCELLED | ZK_COMPLETE))
        return 0;
    PyObject *exc = PyObject_CallOneArg(st->Cancelled,
                                        t->name ? t->name : Py_None);
    if (exc == NULL) {
        PyErr_WriteUnraisable((PyObject *)t);
        return 0;
    }
    int placed = place_interrupt(t, exc, 1);
    Py_DECREF(exc);
    return placed;
}

/* ---- cancel scopes -------------------------------------------------------
 *
 * The scopes a task has entered form a chain: each links to the scope that
 * enclosed it when it was entered (`outer`), and the task's context holds
 * the innermost one (zk_state.scope_var).  A spawned child inherits its
 * parent's context, so a chain may continue into another task's scopes:
 * the walk ends at the first scope that is not the task's.
 *
 * Two kinds of interruption can be pending: the task's own cancellation
 * (JoinHandle.cancel(): a Cancelled instance in `interrupt`, delivered
 * once) and cancelled scopes (FIRED, or ARMED with a deadline that has
 * passed though its timer has not fired yet: the wheel has millisecond
 * ticks).  A scope stays cancelled until it exits.  Firing a scope only
 * marks it, sets ZK_INTERRUPT and, if the slot is empty, puts the scope
 * there as a hint; what is delivered is decided by the task's runner at
 * its next poll, walking the chain from the innermost scope outward
 * (pick_interrupt):
 *   - a shielded scope ends the walk: what lies outside it (outer scopes,
 *     the task's own cancellation) stays pending, with ZK_INTERRUPT clear,
 *     until the shield exits or is turned off (then it is re-evaluated);
 *   - of what remains, the outermost wins: the task's own cancellation,
 *     else the outermost cancelled scope.  An inner scope's exit lets an
 *     outer scope's Cancelled through, so catching an inner scope's
 *     Cancelled (or TimeoutError) can never outlive an outer cancellation.
 * A scope is delivered as a fresh Cancelled whose `_zokio_scope` attribute
 * names it, so the scope's exit catches exactly its own.  A coroutine that
 * suspends again right after an interrupt was thrown into it (it caught the
 * Cancelled, or awaits in a finally block) is re-evaluated at once: inside
 * a cancelled scope, that suspension is interrupted too, and so on until
 * the scope exits.
 *
 * The decision runs before interrupt_mode: an I/O op is cancelled only for
 * an interrupt that is deliverable, never for one a shield defers.  None of
 * this runs unless an interrupt is pending and the task has entered a scope
 * (ZK_SCOPED): polls, wakes and spawns pay nothing for it. */

static inline int64_t scope_deadline_ns(zk_timeout_scope *sc) {
    return __atomic_load_n(&sc->timer.deadline_ns, __ATOMIC_RELAXED);
}

static inline zk_task *scope_task(zk_timeout_scope *sc) {
    return atomic_load_explicit(&sc->task, memory_order_acquire);
}

/* The innermost scope in t's context if it is one of t's (new reference),
 * else NULL.  Runner only, attached. */
static zk_timeout_scope *innermost_scope(zk_task *t) {
    PyObject *v = PyObject_GetItem(t->context, t->st->scope_var);
    if (v == NULL) {
        PyErr_Clear();  /* KeyError: never set in this context */
        return NULL;
    }
    if (Py_TYPE(v) != t->st->TimeoutScopeType || scope_task((zk_timeout_scope *)v) != t) {
        Py_DECREF(v);
        return NULL;
    }
    return (zk_timeout_scope *)v;
}

/* Where the walk starts: the innermost scope, or else the hint in the slot.
 * Under t->lock. */
static inline zk_timeout_scope *walk_start(zk_task *t, zk_timeout_scope *inner) {
    if (inner != NULL)
        return inner;
    PyObject *slot = t->interrupt;
    if (slot != NULL && Py_TYPE(slot) == t->st->TimeoutScopeType &&
        scope_task((zk_timeout_scope *)slot) == t)
        return (zk_timeout_scope *)slot;
    return NULL;
}

enum { PICK_NONE = 0, PICK_TASK = 1, PICK_SCOPE = 2 };

/* What is due, walking t's scopes outward from `start`.  Under t->lock.
 * *scope (PICK_SCOPE): the scope to deliver, borrowed.  *rearm: a scope on
 * the walk waits for its runner to file its timer. */
static int pick_interrupt(zk_task *t, zk_timeout_scope *start, int64_t now,
                          zk_timeout_scope **scope, int *rearm) {
    zk_timeout_scope *winner = NULL;
    int shielded = 0;
    for (zk_timeout_scope *sc = start; sc != NULL; sc = (zk_timeout_scope *)sc->outer) {
        if (scope_task(sc) != t)
            break;
        if (sc->scope_state != ZK_SCOPE_ARMED && sc->scope_state != ZK_SCOPE_FIRED)
            continue;  /* exited out of order: not part of the region */
        if (rearm != NULL && atomic_load_explicit(&sc->rearm, memory_order_relaxed))
            *rearm = 1;
        if (sc->scope_state == ZK_SCOPE_FIRED || scope_deadline_ns(sc) <= now)
            winner = sc;
        if (sc->shield) {
            shielded = 1;
            break;
        }
    }
    PyObject *slot = t->interrupt;
    if (!shielded && slot != NULL && Py_TYPE(slot) != t->st->TimeoutScopeType)
        return PICK_TASK;
    if (winner != NULL) {
        *scope = winner;
        return PICK_SCOPE;
    }
    return PICK_NONE;
}

/* File the timers of scopes whose deadline moved on a thread that could not
 * (zk_task_scope_changed with rearm).  Runner, before taking t->lock. */
static void rearm_scopes(zk_worker *w, zk_task *t, zk_timeout_scope *inner) {
    for (zk_timeout_scope *sc = inner; sc != NULL; sc = (zk_timeout_scope *)sc->outer) {
        if (scope_task(sc) != t)
            break;
        if (atomic_load_explicit(&sc->rearm, memory_order_relaxed) &&
            atomic_exchange_explicit(&sc->rearm, 0, memory_order_acq_rel)) {
            if (zk_scope_file_timer(w, sc))
                zk_task_fire_scope(t, sc);  /* already due */
        }
    }
}

/* ZK_INTERRUPT is set: is anything deliverable now?  If not, the bit is
 * cleared (a shield defers what is pending) and scope hints are dropped.
 * Runner only. */
static int scoped_interrupt_due(zk_worker *w, zk_task *t, zk_timeout_scope *inner) {
    rearm_scopes(w, t, inner);
    int64_t now = zk_monotonic_ns();
    zk_timeout_scope *winner = NULL;
    int rearm = 0, wake = 0;
    PyObject *drop = NULL;
    zk_mutex_lock(&t->lock);
    int r = pick_interrupt(t, walk_start(t, inner), now, &winner, &rearm);
    if (r == PICK_NONE) {
        if (rearm) {
            wake = 1;  /* a deadline moved meanwhile: poll again to file it */
        } else {
            atomic_fetch_and_explicit(&t->state, ~ZK_INTERRUPT, memory_order_relaxed);
            if (t->interrupt != NULL && Py_TYPE(t->interrupt) == t->st->TimeoutScopeType) {
                drop = t->interrupt;
                t->interrupt = NULL;
            }
        }
    }
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(drop);
    if (wake)
        zk_task_wake(t);
    return r != PICK_NONE;
}

/* Take the due interruption: a new reference to the exception to throw, or
 * NULL if nothing is due any more.  Runner only. */
static PyObject *take_scoped_interrupt(zk_task *t, zk_timeout_scope *inner) {
    zk_state *st = t->st;
    int64_t now = zk_monotonic_ns();
    zk_timeout_scope *winner = NULL;
    PyObject *exc = NULL, *drop = NULL, *scope = NULL;
    zk_mutex_lock(&t->lock);
    int r = pick_interrupt(t, walk_start(t, inner), now, &winner, NULL);
    PyObject *slot = t->interrupt;
    if (r == PICK_TASK) {
        exc = slot;  /* the slot's reference */
        t->interrupt = NULL;
    } else {
        if (slot != NULL && Py_TYPE(slot) == st->TimeoutScopeType) {
            drop = slot;
            t->interrupt = NULL;
        }
        if (r == PICK_SCOPE) {
            winner->scope_state = ZK_SCOPE_FIRED;  /* its timer is a no-op now */
            scope = Py_NewRef((PyObject *)winner);
        }
    }
    /* A task cancellation a shield defers stays in the slot, unflagged. */
    atomic_fetch_and_explicit(&t->state, ~ZK_INTERRUPT, memory_order_relaxed);
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(drop);
    if (scope != NULL) {
        static const char msg[] = "cancelled by a cancel scope";
        PyObject *text = PyUnicode_FromString(msg);
        exc = text != NULL ? PyObject_CallOneArg(st->Cancelled, text) : NULL;
        Py_XDECREF(text);
        if (exc == NULL || PyObject_SetAttr(exc, st->str_scope_attr, scope) < 0) {
            /* No memory: throw that instead (it unwinds the scope too). */
            Py_XDECREF(exc);
            exc = zk_fetch_exception();
        }
        Py_DECREF(scope);
    }
    return exc;
}

/* After an interrupt was thrown, the coroutine suspended again: if it is
 * still inside a cancelled scope (and no shield defers it), that suspension
 * is interrupted too.  Runner only, before the task goes idle (the idle
 * path re-queues a task whose ZK_INTERRUPT is set). */
static void recheck_after_throw(zk_task *t) {
    zk_timeout_scope *inner = innermost_scope(t);
    zk_timeout_scope *winner = NULL;
    int64_t now = zk_monotonic_ns();
    zk_mutex_lock(&t->lock);
    if (pick_interrupt(t, walk_start(t, inner), now, &winner, NULL) != PICK_NONE)
        atomic_fetch_or_explicit(&t->state, ZK_INTERRUPT, memory_order_release);
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(inner);
}

int zk_task_fire_scope(zk_task *t, zk_timeout_scope *scope) {
    int fired = 0, placed = 0;
    zk_mutex_lock(&t->lock);
    if (scope->scope_state == ZK_SCOPE_ARMED) {
        scope->scope_state = ZK_SCOPE_FIRED;
        fired = 1;
        if (!zk_task_is_complete(t)) {
            if (t->interrupt == NULL)
                t->interrupt = Py_NewRef((PyObject *)scope);  /* a hint */
            atomic_fetch_or_explicit(&t->state, ZK_INTERRUPT, memory_order_release);
            placed = 1;
        }
    }
    zk_mutex_unlock(&t->lock);
    if (placed)
        zk_task_wake(t);
    return fired;
}

void zk_task_scope_changed(zk_task *t, zk_timeout_scope *scope, int rearm) {
    int placed = 0;
    zk_mutex_lock(&t->lock);
    if ((scope->scope_state == ZK_SCOPE_ARMED || scope->scope_state == ZK_SCOPE_FIRED) &&
        !zk_task_is_complete(t)) {
        if (rearm)
            atomic_store_explicit(&scope->rearm, 1, memory_order_relaxed);
        if (t->interrupt == NULL)
            t->interrupt = Py_NewRef((PyObject *)scope);
        atomic_fetch_or_explicit(&t->state, ZK_INTERRUPT, memory_order_release);
        placed = 1;
    }
    zk_mutex_unlock(&t->lock);
    if (placed)
        zk_task_wake(t);
}

int zk_task_disarm_scope(zk_task *t, zk_timeout_scope *scope) {
    int fired, due = 0;
    PyObject *drop = NULL;
    zk_mutex_lock(&t->lock);
    fired = scope->scope_state == ZK_SCOPE_FIRED;
    int was_active = scope->scope_state == ZK_SCOPE_ARMED || fired;
    scope->scope_state = ZK_SCOPE_DISARMED;
    if (t->interrupt == (PyObject *)scope) {
        /* Fired but never delivered: the body finished first. */
        drop = t->interrupt;
        t->interrupt = NULL;
    }
    if (was_active && scope->shield && !zk_task_is_complete(t)) {
        /* The shield ends: what it deferred is due at the next suspension. */
        zk_timeout_scope *winner = NULL;
        int64_t now = zk_monotonic_ns();
        if (pick_interrupt(t, (zk_timeout_scope *)scope->outer, now, &winner, NULL) != PICK_NONE) {
            atomic_fetch_or_explicit(&t->state, ZK_INTERRUPT, memory_order_release);
            due = 1;
        }
    }
    zk_mutex_unlock(&t->lock);
    Py_XDECREF(drop);
    if (due)
        zk_task_wake(t);
    return fired;
}

/* Close the coroutine of a task that will never be polled again.  A
 * coroutine that swallows GeneratorExit and awaits again cannot be closed:
 * while we close it, zokio awaitables suspend it (zk_abandoning) instead of
 * raising -- a raise would be swallowed too, and the coroutine could loop
 * forever -- so close() returns with "coroutine ignored GeneratorExit",
 * which is reported, and the coroutine is marked finished so that its
 * finalizer does not run it again. */
static void close_abandoned(zk_task *t) {
    zk_state *st = t->st;
    if (t->coro == NULL)
        return;
    coro_release(t);
    zk_abandoning++;
    PyObject *r = PyObject_CallMethodNoArgs(t->coro, st->str_close);
    zk_abandoning--;
    if (r == NULL) {
        PyErr_WriteUnraisable(t->coro);
        coro_kill(t->coro);
    }
    Py_XDECREF(r);
}

void zk_task_abandon(zk_task *t) {
    if (zk_task_is_complete(t))
        return;
    zk_state *st = t->st;
    atomic_fetch_or_explicit(&t->state, ZK_RUNNING | ZK_CANCELLED, memory_order_acq_rel);
    close_abandoned(t);
    PyObject *exc = PyObject_CallOneArg(st->Cancelled,
                                        t->name ? t->name : Py_None);
    if (exc == NULL)
        exc = zk_fetch_exception();
    task_complete(t, NULL, exc);
}

int zk_task_refuse(zk_task *t) {
    /* Never queued, never polled: nobody else can be running it. */
    atomic_fetch_or_explicit(&t->state, ZK_RUNNING | ZK_CANCELLED, memory_order_acq_rel);
    coro_release(t);
    if (t->coro != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(t->coro, t->st->str_close);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    PyObject *exc = PyObject_CallOneArg(t->st->Cancelled, t->name ? t->name : Py_None);
    if (exc == NULL)
        exc = zk_fetch_exception();
    task_complete(t, NULL, exc);
    /* Nobody will ever retrieve it: no "never retrieved" log. */
    atomic_fetch_or_explicit(&t->state, ZK_EXC_RETRIEVED, memory_order_relaxed);
    return 0;
}

/* ---- Python type: JoinHandle ------------------------------------------- */

/* The exception a failed task ended with (borrowed); NULL unless failed. */
static inline PyObject *task_exc(zk_task *t) {
    return t->failed && t->outcome != NULL ? PyTuple_GET_ITEM(t->outcome, 0) : NULL;
}

static int is_cancelled_exc(zk_task *t) {
    PyObject *exc = task_exc(t);
    return exc != NULL && PyObject_TypeCheck(exc, (PyTypeObject *)t->st->Cancelled);
}

/* The nearest built-in (static) type at or above tp: its tp_init parses the
 * arguments into the C fields of built-in exceptions (errno, filename,
 * lineno...) without running user code. */
static PyTypeObject *builtin_base(PyTypeObject *tp) {
    while (tp != NULL && (tp->tp_flags & Py_TPFLAGS_HEAPTYPE))
        tp = tp->tp_base;
    return tp;
}

/* A copy of `exc` for one more joiner: same type, args, attributes
 * (__dict__, notes included), cause and context, with traceback `tb`.
 * NULL with no error set if the type cannot be rebuilt from its args. */
static PyObject *copy_exception(PyObject *exc, PyObject *tb) {
    PyTypeObject *tp = Py_TYPE(exc);
    PyObject *args = PyObject_GetAttrString(exc, "args");
    if (args == NULL || !PyTuple_Check(args)) {
        Py_XDECREF(args);
        PyErr_Clear();
        return NULL;
    }
    PyTypeObject *base = builtin_base(tp);
    PyObject *copy = tp->tp_new(tp, args, NULL);
    if (copy == NULL && base != NULL && base != tp && base->tp_new != NULL) {
        /* A __new__ that cannot be called again with just args (keyword-only
         * parameters, say): build it with the built-in base's tp_new, which
         * runs no user code; its attributes come back with __dict__ below. */
        PyErr_Clear();
        copy = base->tp_new(tp, args, NULL);
    }
    if (copy == NULL || !PyExceptionInstance_Check(copy)) {
        Py_XDECREF(copy);
        Py_DECREF(args);
        PyErr_Clear();
        return NULL;
    }
    if (base != NULL && base->tp_init != NULL && base->tp_init(copy, args, NULL) < 0)
        PyErr_Clear();  /* the fields stay as tp_new left them */
    Py_DECREF(args);
    PyObject *dict = PyObject_GetAttrString(exc, "__dict__");
    if (dict != NULL && PyDict_Check(dict) && PyDict_GET_SIZE(dict) > 0) {
        PyObject *cdict = PyObject_GetAttrString(copy, "__dict__");
        if (cdict == NULL || !PyDict_Check(cdict) || PyDict_Update(cdict, dict) < 0)
            PyErr_Clear();
        Py_XDECREF(cdict);
    }
    Py_XDECREF(dict);
    PyErr_Clear();
    /* Fields of built-in exceptions that their args do not carry (they are
     * keyword arguments or set apart from args). */
    static const char *const kw_fields[] = {"filename", "filename2", "name", "path",
                                            "obj", NULL};
    for (int i = 0; kw_fields[i] != NULL; i++) {
        PyObject *v = PyObject_GetAttrString(exc, kw_fields[i]);
        if (v != NULL && v != Py_None)
            (void)PyObject_SetAttrString(copy, kw_fields[i], v);
        Py_XDECREF(v);
        PyErr_Clear();
    }
    PyException_SetCause(copy, PyException_GetCause(exc));      /* steals */
    PyException_SetContext(copy, PyException_GetContext(exc));  /* steals */
    PyObject *suppress = PyObject_GetAttrString(exc, "__suppress_context__");
    if (suppress == NULL || PyObject_SetAttrString(copy, "__suppress_context__", suppress) < 0)
        PyErr_Clear();
    Py_XDECREF(suppress);
    if (PyException_SetTraceback(copy, tb) < 0)
        PyErr_Clear();
    return copy;
}

/* Raise a failed task's exception to one joiner.  Precondition: complete
 * and failed.
 *
 * Joiners may be many, on several threads at once, and a raised exception
 * is not read-only: each frame it unwinds through prepends a traceback entry
 * to its __traceback__.  One object unwinding on two threads at once ends
 * with a corrupt (even cyclic) traceback, and one object raised again and
 * again grows without bound.  So the first joiner gets the exception object
 * itself, with the traceback the task ended with; every later joiner gets a
 * copy (copy_exception) carrying that same traceback.  Only a type that
 * cannot be rebuilt from its args falls back to the object itself, with its
 * traceback reset. */
static void raise_task_exception(zk_task *t) {
    PyObject *exc = PyTuple_GET_ITEM(t->outcome, 0);
    PyObject *tb = PyTuple_GET_ITEM(t->outcome, 1);
    uint32_t prev = atomic_fetch_or_explicit(&t->state, ZK_EXC_RETRIEVED | ZK_EXC_RAISED,
                                             memory_order_acq_rel);
    if (prev & ZK_EXC_RAISED) {
        PyObject *copy = copy_exception(exc, tb);
        if (copy != NULL) {
            zk_raise_instance(copy);
            Py_DECREF(copy);
            return;
        }
        if (PyException_SetTraceback(exc, tb) < 0)
            PyErr_Clear();
    }
    zk_raise_instance(exc);
}

/* Produce the task's outcome as a return value or raised exception.
 * Precondition: complete. */
static PyObject *task_outcome(zk_task *t) {
    if (t->failed) {
        raise_task_exception(t);
        return NULL;
    }
    return Py_NewRef(t->outcome ? t->outcome : Py_None);
}

/* __next__ of `await handle`: the result once complete, else yield the handle
 * itself so the worker registers the awaiter as a waiter. */
static PyObject *task_iternext(zk_task *self) {
    if (zk_current_task == NULL) {
        if (zk_abandoning)
            return Py_NewRef(self);  /* closing an abandoned task: suspend */
        PyErr_Format(PyExc_RuntimeError,
                     "%R must be awaited inside a zokio task (no zokio runtime is "
                     "running this coroutine); from a plain thread use "
                     "JoinHandle.result()", (PyObject *)self);
        return NULL;
    }
    if (zk_task_is_complete(self) && zk_coop_budget-- > 0) {
        if (self->failed) {
            raise_task_exception(self);
            return NULL;
        }
        PyObject *r = self->outcome;
        if (r == NULL || r == Py_None)
            return NULL;  /* StopIteration(None) */
        return zk_return_value(Py_NewRef(r));
    }
    if (zk_current_task == self) {
        PyErr_SetString(PyExc_RuntimeError, "a task cannot await its own JoinHandle");
        return NULL;
    }
    zk_suspending = (PyObject *)self;
    return Py_NewRef(self);
}

static PyObject *task_await(zk_task *self) {
    return Py_NewRef(self);
}

static PyObject *task_cancel(zk_task *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(zk_task_cancel(self));
}

static PyObject *task_done(zk_task *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(zk_task_is_complete(self));
}

static PyObject *task_cancelled(zk_task *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(zk_task_is_complete(self) && is_cancelled_exc(self));
}

static PyObject *task_add_done_callback(zk_task *self, PyObject *fn) {
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    int r = zk_task_add_waiter(self, fn);
    if (r < 0)
        return NULL;
    if (r == 0) {  /* already complete: call now */
        PyObject *res = PyObject_CallNoArgs(fn);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
    }
    Py_RETURN_NONE;
}

static PyObject *task_remove_done_callback(zk_task *self, PyObject *fn) {
    zk_task_remove_waiter(self, fn);
    Py_RETURN_NONE;
}

/* result(timeout=None): block a plain thread until the task completes. */
static PyObject *task_result(zk_task *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:result", kwlist, &timeout))
        return NULL;
    int64_t timeout_ns;
    if (zk_timeout_arg_ns(timeout, &timeout_ns) < 0)
        return NULL;
    if (zk_current_worker != NULL && !zk_task_is_complete(self)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "JoinHandle.result() would block a zokio worker; "
                        "use 'await handle' inside the runtime");
        return NULL;
    }
    if (!zk_task_is_complete(self)) {
        PyObject *threading = PyImport_ImportModule("threading");
        if (threading == NULL)
            return NULL;
        PyObject *event = PyObject_CallMethod(threading, "Event", NULL);
        Py_DECREF(threading);
        if (event == NULL)
            return NULL;
        PyObject *set = PyObject_GetAttrString(event, "set");
        if (set == NULL) {
            Py_DECREF(event);
            return NULL;
        }
        int added = zk_task_add_waiter(self, set);
        if (added < 0) {
            Py_DECREF(set);
            Py_DECREF(event);
            return NULL;
        }
        if (added == 1) {
            /* threading.Event.wait() refuses what it cannot represent:
             * hand it the normalised value (None for no end). */
            PyObject *ok = timeout_ns < 0
                ? PyObject_CallMethod(event, "wait", NULL)
                : PyObject_CallMethod(event, "wait", "d", (double)timeout_ns / 1e9);
            if (ok == NULL) {  /* e.g. KeyboardInterrupt */
                zk_task_remove_waiter(self, set);
                Py_DECREF(set);
                Py_DECREF(event);
                return NULL;
            }
            int finished = PyObject_IsTrue(ok);
            Py_DECREF(ok);
            if (!finished) {
                zk_task_remove_waiter(self, set);
                Py_DECREF(set);
                Py_DECREF(event);
                PyErr_SetString(PyExc_TimeoutError, "the task did not finish in time");
                return NULL;
            }
        }
        Py_DECREF(set);
        Py_DECREF(event);
    }
    return task_outcome(self);
}

static PyObject *task_exception(zk_task *self, PyObject *Py_UNUSED(ignored)) {
    if (!zk_task_is_complete(self)) {
        PyErr_SetString(PyExc_RuntimeError, "the task has not finished");
        return NULL;
    }
    if (!self->failed)
        Py_RETURN_NONE;
    atomic_fetch_or_explicit(&self->state, ZK_EXC_RETRIEVED, memory_order_relaxed);
    return Py_NewRef(task_exc(self));
}

static PyObject *task_get_name(zk_task *self, void *Py_UNUSED(closure)) {
    if (self->name != NULL)
        return Py_NewRef(self->name);
    return PyUnicode_FromFormat("Task-%p", (void *)self);
}

static PyObject *task_repr(zk_task *self) {
    uint32_t s = atomic_load_explicit(&self->state, memory_order_acquire);
    const char *what = (s & ZK_COMPLETE)
                           ? (is_cancelled_exc(self) ? "cancelled"
                              : self->failed ? "failed" : "finished")
                       : (s & ZK_RUNNING) ? "running" : "pending";
    PyObject *name = task_get_name(self, NULL);
    if (name == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("<zokio.JoinHandle %U %s>", name, what);
    Py_DECREF(name);
    return r;
}

static int task_traverse(zk_task *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->coro);
    Py_VISIT(self->context);
    Py_VISIT(self->outcome);
    Py_VISIT(self->waiting_on);
    Py_VISIT(self->waiters);
    Py_VISIT(self->interrupt);
    return 0;
}

static int task_clear(zk_task *self) {
    if (self->coro != NULL)
        coro_release(self);
    Py_CLEAR(self->coro);
    Py_CLEAR(self->context);
    Py_CLEAR(self->outcome);
    Py_CLEAR(self->waiting_on);
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->interrupt);
    Py_CLEAR(self->name);
    return 0;
}

/* An exception nobody awaited is logged when its task is dropped. */
static void task_finalize(zk_task *self) {
    if (!self->failed || is_cancelled_exc(self) ||
        (atomic_load_explicit(&self->state, memory_order_acquire) & ZK_EXC_RETRIEVED))
        return;
    PyObject *saved = zk_fetch_exception();
    int logged = -1;
    PyObject *name = PyUnicode_FromString("logging");
    PyObject *logging = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    PyErr_Clear();
    if (logging != NULL) {
        PyObject *logger = PyObject_CallMethod(logging, "getLogger", "s", "zokio");
        PyObject *msg = PyUnicode_FromFormat("Task exception was never retrieved: %R",
                                             (PyObject *)self);
        PyObject *kw = Py_BuildValue("{s:O}", "exc_info", task_exc(self));
        PyObject *meth = logger ? PyObject_GetAttrString(logger, "error") : NULL;
        if (msg && kw && meth) {
            PyObject *a = PyTuple_Pack(1, msg);
            if (a != NULL) {
                PyObject *r = PyObject_Call(meth, a, kw);
                logged = r != NULL ? 0 : -1;
                Py_XDECREF(r);
                Py_DECREF(a);
            }
        }
        Py_XDECREF(meth);
        Py_XDECREF(kw);
        Py_XDECREF(msg);
        Py_XDECREF(logger);
        Py_DECREF(logging);
        PyErr_Clear();
    }
    if (logged < 0) {
        /* No logging (not imported, or the interpreter is shutting down):
         * print the task's own exception and traceback to stderr. */
        PyObject *exc = task_exc(self);
        PyObject *tb = PyTuple_GET_ITEM(self->outcome, 1);
        if (tb != Py_None && PyException_SetTraceback(exc, tb) < 0)
            PyErr_Clear();
        zk_raise_instance(exc);
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (saved != NULL)
        zk_raise_instance(saved), Py_DECREF(saved);
}

static void task_dealloc(zk_task *self) {
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return;  /* resurrected */
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* A result may be another handle whose result is another (a chain of
     * tasks each returning the previous one's handle): the trashcan keeps
     * freeing the chain from recursing once per link (see zk_leaf_dealloc). */
    Py_TRASHCAN_BEGIN(self, task_dealloc)
    task_clear(self);
    zk_mutex_destroy(&self->lock);
    tp->tp_free(self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyMethodDef task_methods[] = {
    {"cancel", (PyCFunction)task_cancel, METH_NOARGS,
     "Request cancellation: zokio.Cancelled is raised in the task at its "
     "current or next suspension point, once.  Returns False if the task "
     "already finished or was already cancelled."},
    {"done", (PyCFunction)task_done, METH_NOARGS, "True once the task finished."},
    {"cancelled", (PyCFunction)task_cancelled, METH_NOARGS,
     "True if the task finished by cancellation."},
    {"result", (PyCFunction)(void (*)(void))task_result, METH_VARARGS | METH_KEYWORDS,
     "Block this (non-worker) thread until the task finishes; return its "
     "result or raise its exception.  TimeoutError after `timeout` seconds."},
    {"exception", (PyCFunction)task_exception, METH_NOARGS,
     "The exception the task finished with, or None."},
    {"add_done_callback", (PyCFunction)task_add_done_callback, METH_O,
     "Call fn() (no arguments) once the task finishes, on the finishing thread."},
    {"remove_done_callback", (PyCFunction)task_remove_done_callback, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef task_getset[] = {
    {"name", (getter)task_get_name, NULL, "The task's name.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot task_slots[] = {
    {Py_tp_doc, "Handle of a spawned task: awaitable, cancellable."},
    {Py_tp_dealloc, task_dealloc},
    {Py_tp_finalize, task_finalize},
    {Py_tp_traverse, task_traverse},
    {Py_tp_clear, task_clear},
    {Py_tp_repr, task_repr},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, task_iternext},
    {Py_am_await, task_await},
    {Py_tp_methods, task_methods},
    {Py_tp_getset, task_getset},
    {0, NULL},
};

static PyType_Spec task_spec = {
    .name = "zokio.JoinHandle",
    .basicsize = sizeof(zk_task),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = task_slots,
};

/* ---- the JoinHandle as an awaitable kind (leaf.h) ---------------------------- */

static int task_ready(PyObject *obj) {
    return zk_task_is_complete((zk_task *)obj);
}

/* The awaiting task becomes a waiter of the awaited one. */
static int task_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w);
    int r = zk_task_add_waiter((zk_task *)obj, (PyObject *)task);
    if (r < 0)
        return -1;
    if (r == 0)
        zk_task_wake(task);  /* already complete */
    return 0;
}

static void task_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(w);
    zk_task_remove_waiter((zk_task *)obj, (PyObject *)task);
}

static const zk_leaf_ops task_leaf_ops = {
    .ready = task_ready,
    .register_waker = task_register,
    .unregister = task_unregister,
};

/* ---- OwnedCoroutine ---------------------------------------------------------- */

static PyObject *owned_refuse_o(PyObject *self, PyObject *arg) {
    ZK_UNUSED(arg);
    owned_coro_error(self, "send into");
    return NULL;
}

static PyObject *owned_refuse_throw(PyObject *self, PyObject *args) {
    ZK_UNUSED(args);
    owned_coro_error(self, "throw into");
    return NULL;
}

static PyObject *owned_refuse_close(PyObject *self, PyObject *unused) {
    ZK_UNUSED(unused);
    owned_coro_error(self, "close");
    return NULL;
}

static PyObject *owned_refuse_await(PyObject *self) {
    owned_coro_error(self, "await");
    return NULL;
}

static PySendResult owned_refuse_send(PyObject *self, PyObject *arg, PyObject **result) {
    ZK_UNUSED(arg);
    *result = NULL;
    owned_coro_error(self, "send into");
    return PYGEN_ERROR;
}

static PyMethodDef owned_coro_methods[] = {
    {"send", owned_refuse_o, METH_O, NULL},
    {"throw", owned_refuse_throw, METH_VARARGS, NULL},
    {"close", owned_refuse_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* The type a spawned coroutine has while its task owns it ("one runner per
 * coroutine" above).  Its layout and its object-level behaviour (traverse,
 * dealloc, finalize, repr, cr_* attributes) are the coroutine type's own,
 * taken from PyCoro_Type at run time; only the ways in are refused. */
static int owned_coro_type_init(PyObject *module, zk_state *st) {
    for (PyMethodDef *m = PyCoro_Type.tp_methods; m != NULL && m->ml_name != NULL; m++)
        if (strcmp(m->ml_name, "throw") == 0)
            coro_throw_def = m;
    if (coro_throw_def == NULL || PyCoro_Type.tp_as_async == NULL ||
        PyCoro_Type.tp_as_async->am_send == NULL) {
        PyErr_SetString(PyExc_ImportError, "zokio: this CPython's coroutine type has no throw/am_send");
        return -1;
    }
    PyType_Slot slots[12];
    int n = 0;
    slots[n++] = (PyType_Slot){Py_tp_dealloc, (void *)PyCoro_Type.tp_dealloc};
    slots[n++] = (PyType_Slot){Py_tp_traverse, (void *)PyCoro_Type.tp_traverse};
    if (PyCoro_Type.tp_finalize)
        slots[n++] = (PyType_Slot){Py_tp_finalize, (void *)PyCoro_Type.tp_finalize};
    if (PyCoro_Type.tp_clear)
        slots[n++] = (PyType_Slot){Py_tp_clear, (void *)PyCoro_Type.tp_clear};
    slots[n++] = (PyType_Slot){Py_tp_repr, (void *)PyCoro_Type.tp_repr};
    if (PyCoro_Type.tp_getset)
        slots[n++] = (PyType_Slot){Py_tp_getset, (void *)PyCoro_Type.tp_getset};
    if (PyCoro_Type.tp_members)
        slots[n++] = (PyType_Slot){Py_tp_members, (void *)PyCoro_Type.tp_members};
    slots[n++] = (PyType_Slot){Py_tp_methods, owned_coro_methods};
    slots[n++] = (PyType_Slot){Py_am_await, (void *)owned_refuse_await};
    slots[n++] = (PyType_Slot){Py_am_send, (void *)owned_refuse_send};
    slots[n++] = (PyType_Slot){0, NULL};
    PyType_Spec spec = {
        .name = "zokio._native.OwnedCoroutine",
        .basicsize = (int)PyCoro_Type.tp_basicsize,
        .itemsize = (int)PyCoro_Type.tp_itemsize,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
                 Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = slots,
    };
    st->OwnedCoroType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);
    if (st->OwnedCoroType == NULL)
        return -1;
    st->OwnedCoroType->tp_weaklistoffset = PyCoro_Type.tp_weaklistoffset;
    /* Coroutines switched to it hold no reference to it. */
    zk_immortalize((PyObject *)st->OwnedCoroType);
    return 0;
}

int zk_task_type_init(PyObject *module, zk_state *st) {
    static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;
    pthread_once(&fork_hook_once, install_fork_hook);
    if (owned_coro_type_init(module, st) < 0)
        return -1;
    st->TaskType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &task_spec, NULL);
    if (st->TaskType == NULL)
        return -1;
    /* The first kind: awaiting a JoinHandle is the most common suspension. */
    if (zk_leaf_kind_add(st, st->TaskType, &task_leaf_ops) < 0)
        return -1;
    zk_immortalize((PyObject *)st->TaskType);
    return PyModule_AddObjectRef(module, "JoinHandle", (PyObject *)st->TaskType);
}
