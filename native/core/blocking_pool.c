/* blocking_pool.c -- threads for spawn_blocking (after Tokio runtime/blocking).
 *
 * Jobs go into an unbounded FIFO.  A new thread is started only when no
 * thread is idle and the cap is not reached; an idle thread exits after
 * keep_alive seconds without work.  Threads are Python threads (started
 * through the `spawn_thread` callable the Python layer supplies) so each has
 * one PyThreadState for its life; they wait on a pthread condition variable
 * with the thread state detached.  The job's result completes a Oneshot leaf,
 * which wakes the awaiting task through the ordinary waker path.
 */
#include "core/blocking_pool.h"
#include "core/leaf.h"
#include <pthread.h>
#include <time.h>
#include <errno.h>

typedef struct zk_job {
    struct zk_job *next;
    PyObject *fn;
    PyObject *args;
    PyObject *kwargs;   /* or NULL */
    PyObject *context;  /* the submitter's contextvars, copied (as asyncio.to_thread) */
    zk_leaf *leaf;      /* strong */
} zk_job;

struct zk_blocking_pool {
    zk_state *st;
    pthread_mutex_t lock;
    pthread_cond_t work_cond;    /* signalled when a job arrives / shutdown */
    pthread_cond_t exit_cond;    /* signalled when a thread exits */
    zk_job *head, *tail;
    size_t queued;
    size_t threads;              /* started and not yet exited */
    size_t idle;                 /* waiting for work */
    size_t wakeups_pending;      /* signals sent not yet consumed */
    size_t finishing;            /* threads handing back a result; each will
                                    look at the queue before it waits */
    size_t cap;
    double keep_alive;
    int shutdown;
    PyObject *spawn_thread;      /* callable(target) starting a thread */
};

zk_blocking_pool *zk_blocking_pool_new(zk_state *st, zk_sched *s, size_t cap,
                                       double keep_alive, PyObject *spawn_thread) {
    ZK_UNUSED(s);
    if (!PyCallable_Check(spawn_thread)) {
        PyErr_SetString(PyExc_TypeError, "spawn_thread must be callable");
        return NULL;
    }
    zk_blocking_pool *p = PyMem_RawCalloc(1, sizeof(*p));
    if (p == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    p->st = st;
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->work_cond, &ca);
    pthread_cond_init(&p->exit_cond, &ca);
    pthread_condattr_destroy(&ca);
    p->cap = cap;
    p->keep_alive = keep_alive;
    p->spawn_thread = Py_NewRef(spawn_thread);
    return p;
}

/* Lock without stalling the interpreter: a contended wait is detached. */
static void pool_lock(zk_blocking_pool *p) {
    if (pthread_mutex_trylock(&p->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->lock);
    Py_END_ALLOW_THREADS
}

/* Longer than this is no end: converting inf or 1e300 to time_t is
 * undefined (it came out INT64_MIN, a deadline in the past that
 * pthread_cond_timedwait refused with EINVAL, so the idle loop spun). */
#define POOL_WAIT_FOREVER_SECONDS 9.0e9

/* Fill *ts with now + seconds (CLOCK_MONOTONIC).  Returns 0 when the wait
 * has no end (seconds infinite, NaN or beyond ~285 years): wait untimed. */
static int deadline_after(struct timespec *ts, double seconds) {
    if (!(seconds < POOL_WAIT_FOREVER_SECONDS))
        return 0;
    if (seconds < 0)
        seconds = 0;
    clock_gettime(CLOCK_MONOTONIC, ts);
    double whole = (double)(time_t)seconds;
    ts->tv_sec += (time_t)seconds;
    ts->tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
    return 1;
}

int zk_blocking_pool_submit(zk_blocking_pool *p, PyObject *fn, PyObject *args,
                            PyObject *kwargs, zk_leaf *leaf) {
    zk_job *job = PyMem_RawMalloc(sizeof(*job));
    if (job == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    job->context = PyContext_CopyCurrent();
    if (job->context == NULL) {
        PyMem_RawFree(job);
        return -1;
    }
    job->next = NULL;
    job->fn = Py_NewRef(fn);
    job->args = Py_NewRef(args);
    job->kwargs = (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) ? Py_NewRef(kwargs) : NULL;
    job->leaf = (zk_leaf *)Py_NewRef((PyObject *)leaf);

    int start_thread = 0;
    pool_lock(p);
    if (p->shutdown) {
        pthread_mutex_unlock(&p->lock);
        Py_DECREF(job->fn);
        Py_DECREF(job->args);
        Py_XDECREF(job->kwargs);
        Py_DECREF(job->context);
        Py_DECREF((PyObject *)job->leaf);
        PyMem_RawFree(job);
        PyErr_SetString(PyExc_RuntimeError, "the blocking pool is shut down");
        return -1;
    }
    if (p->tail)
        p->tail->next = job;
    else
        p->head = job;
    p->tail = job;
    p->queued++;
    if (p->idle > p->wakeups_pending) {
        p->wakeups_pending++;
        pthread_cond_signal(&p->work_cond);
    } else if (p->queued <= p->finishing) {
        /* A thread that is completing a job takes this one next: the
         * awaiting task often submits again before that thread got back to
         * the queue, and a new thread would be wasted. */
    } else if (p->threads < p->cap) {
        p->threads++;
        start_thread = 1;
    }
    pthread_mutex_unlock(&p->lock);

    if (start_thread) {
        PyObject *r = p->spawn_thread != NULL ? PyObject_CallNoArgs(p->spawn_thread) : NULL;
        if (r == NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "the blocking pool cannot start threads");
        if (r == NULL) {
            /* The job stays queued for the threads we have. */
            pool_lock(p);
            p->threads--;
            int none_left = p->threads == 0;
            pthread_cond_broadcast(&p->exit_cond);
            pthread_mutex_unlock(&p->lock);
            if (none_left)
                return -1;  /* nobody will ever run it: report */
            PyErr_WriteUnraisable(p->spawn_thread);
        } else {
            Py_DECREF(r);
        }
    }
    return 0;
}

/* The exception a job raised, as the awaiting task will see it.  A
 * StopIteration raised out of `await` would look like the awaitable
 * returning (its value would become the await's result): turn it into a
 * RuntimeError, as PEP 479 does for generators. */
static PyObject *job_exception(zk_job *job) {
    PyObject *exc = zk_fetch_exception();
    if (exc == NULL || !PyErr_GivenExceptionMatches(exc, PyExc_StopIteration))
        return exc;
    PyErr_Format(PyExc_RuntimeError, "spawn_blocking: %R raised StopIteration", job->fn);
    PyObject *wrapped = zk_fetch_exception();
    if (wrapped == NULL)
        return exc;
    PyException_SetCause(wrapped, Py_NewRef(exc));
    PyException_SetContext(wrapped, exc);  /* steals */
    return wrapped;
}

static void run_job(zk_blocking_pool *p, zk_job *job) {
    PyObject *r = NULL, *exc = NULL;
    /* The job's own copy of the context: nobody else can have it entered. */
    if (PyContext_Enter(job->context) < 0) {
        exc = zk_fetch_exception();
    } else {
        r = job->kwargs ? PyObject_Call(job->fn, job->args, job->kwargs)
                        : PyObject_Call(job->fn, job->args, NULL);
        if (r == NULL)
            exc = job_exception(job);   /* taken before the exit below */
        if (PyContext_Exit(job->context) < 0)  /* entered just above: cannot fail */
            PyErr_WriteUnraisable(job->fn);
    }
    pool_lock(p);
    p->finishing++;
    pthread_mutex_unlock(&p->lock);
    if (r != NULL)
        zk_leaf_complete(p->st, job->leaf, r, NULL);
    else
        zk_leaf_complete(p->st, job->leaf, NULL, exc);
    Py_DECREF(job->fn);
    Py_DECREF(job->args);
    Py_XDECREF(job->kwargs);
    Py_DECREF(job->context);
    Py_DECREF((PyObject *)job->leaf);
    PyMem_RawFree(job);
}

/* Locking rule (both pool mutex paths):
 *   - an attached thread takes the mutex with pool_lock(): try, and if it is
 *     held, wait for it detached;
 *   - a pool thread waits for work, and re-takes the mutex after running a
 *     job, entirely detached, and releases it before re-attaching.
 * So no thread ever holds the mutex while it waits to attach (for the GIL on
 * GIL builds, for the end of a stop-the-world pause such as a GC on 3.13t),
 * and no attached thread ever blocks on the mutex.  Either half alone
 * deadlocks: metrics() polling the pool while jobs run hung within seconds
 * when both were missing. */
void zk_blocking_pool_thread_main(zk_blocking_pool *p) {
    int returning_from_job = 0;
    for (;;) {
        zk_job *job = NULL;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&p->lock);
        if (returning_from_job)
            p->finishing--;
        for (;;) {
            if (p->head != NULL) {
                job = p->head;
                p->head = job->next;
                if (p->head == NULL)
                    p->tail = NULL;
                p->queued--;
                break;
            }
            if (p->shutdown)
                break;
            p->idle++;
            struct timespec ts;
            int timed = deadline_after(&ts, p->keep_alive);
            int rc = 0;
            while (p->head == NULL && !p->shutdown && p->wakeups_pending == 0 && rc != ETIMEDOUT)
                rc = timed ? pthread_cond_timedwait(&p->work_cond, &p->lock, &ts)
                           : pthread_cond_wait(&p->work_cond, &p->lock);
            p->idle--;
            if (p->wakeups_pending > 0)
                p->wakeups_pending--;
            if (rc == ETIMEDOUT && p->head == NULL)
                break;  /* idle past keep-alive */
        }
        if (job == NULL) {
            p->threads--;
            pthread_cond_broadcast(&p->exit_cond);
        }
        pthread_mutex_unlock(&p->lock);
        Py_END_ALLOW_THREADS
        if (job == NULL)
            return;  /* the pool may be freed from here on: touch nothing */
        run_job(p, job);
        returning_from_job = 1;
    }
}

void zk_blocking_pool_shutdown(zk_blocking_pool *p) {
    pool_lock(p);
    p->shutdown = 1;
    zk_job *jobs = p->head;
    p->head = p->tail = NULL;
    p->queued = 0;
    pthread_cond_broadcast(&p->work_cond);
    pthread_mutex_unlock(&p->lock);
    while (jobs != NULL) {
        zk_job *next = jobs->next;
        PyObject *exc = PyObject_CallOneArg(p->st->Cancelled, Py_None);
        if (exc == NULL)
            exc = zk_fetch_exception();
        zk_leaf_complete(p->st, jobs->leaf, NULL, exc);
        Py_DECREF(jobs->fn);
        Py_DECREF(jobs->args);
        Py_XDECREF(jobs->kwargs);
        Py_DECREF(jobs->context);
        Py_DECREF((PyObject *)jobs->leaf);
        PyMem_RawFree(jobs);
        jobs = next;
    }
}

int zk_blocking_pool_join(zk_blocking_pool *p, double timeout) {
    struct timespec ts;
    int timed = timeout >= 0 && deadline_after(&ts, timeout);
    int all_exited;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    while (p->threads > 0 && rc != ETIMEDOUT) {
        if (timed)
            rc = pthread_cond_timedwait(&p->exit_cond, &p->lock, &ts);
        else
            rc = pthread_cond_wait(&p->exit_cond, &p->lock);
    }
    all_exited = p->threads == 0;
    pthread_mutex_unlock(&p->lock);
    Py_END_ALLOW_THREADS
    return all_exited;
}

void zk_blocking_pool_stats(zk_blocking_pool *p, size_t *threads, size_t *idle, size_t *queued) {
    pool_lock(p);
    *threads = p->threads;
    *idle = p->idle;
    *queued = p->queued;
    pthread_mutex_unlock(&p->lock);
}

int zk_blocking_pool_traverse(zk_blocking_pool *p, visitproc visit, void *arg) {
    Py_VISIT(p->spawn_thread);
    return 0;
}

void zk_blocking_pool_clear(zk_blocking_pool *p) {
    Py_CLEAR(p->spawn_thread);
}

void zk_blocking_pool_free(zk_blocking_pool *p) {
    /* Only once no thread can touch the pool (all exited or never started). */
    zk_job *j = p->head;
    while (j != NULL) {
        zk_job *next = j->next;
        Py_DECREF(j->fn);
        Py_DECREF(j->args);
        Py_XDECREF(j->kwargs);
        Py_DECREF((PyObject *)j->leaf);
        PyMem_RawFree(j);
        j = next;
    }
    Py_CLEAR(p->spawn_thread);
    pthread_cond_destroy(&p->work_cond);
    pthread_cond_destroy(&p->exit_cond);
    pthread_mutex_destroy(&p->lock);
    PyMem_RawFree(p);
}
