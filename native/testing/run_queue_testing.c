/* run_queue_testing.c -- test-only Python types around run_queue.c.
 *
 *   _native_testing.TestInjectQueue()
 *       push(v), push_batch(list), pop() -> int | None,
 *       pop_batch(max) -> list, len()
 *   _native_testing.TestLocalQueue(capacity, inject, start=0)
 *       push(v)            push_back, overflowing into `inject`
 *       pop() -> int | None
 *       steal_into(dst) -> int | None
 *       len(), remaining(), capacity (attribute), inject (attribute)
 *       start: initial value of the free-running indices (tests use values
 *              near 2**32 to exercise wrap-around)
 *   _native_testing.TestLocalQueue.stress(threads, items, capacity, seed=1,
 *                                         timeout=30.0) -> dict
 *       (static method)
 *       A real concurrent run in C with pthreads, detached from Python: one
 *       owner thread pushes/pops items 1..items (overflowing into a shared
 *       inject queue), `threads` stealer threads steal from the owner and from
 *       each other, re-push some of what they take and pop their own; every
 *       thread also drains the inject queue.  At the end every item must have
 *       been consumed exactly once; otherwise AssertionError with detail.
 *
 * Items are Python ints >= 0 stored as tagged non-NULL pointers (v << 1 | 1).
 * The objects are not thread-safe for concurrent Python use (test-only).
 */
#include "core/run_queue.h"
#include "testing/testing.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* item tagging                                                             */
/* ------------------------------------------------------------------------ */

static inline void *
rq_tag(size_t v)
{
    return (void *)(uintptr_t)(((uintptr_t)v << 1) | 1u);
}

static inline size_t
rq_untag(void *p)
{
    return (size_t)((uintptr_t)p >> 1);
}

/* Python int -> tagged item; -1 with an exception on error. */
static int
rq_item_from_py(PyObject *o, void **out)
{
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "item must be >= 0");
        return -1;
    }
    *out = rq_tag((size_t)v);
    return 0;
}

static PyObject *
rq_item_to_py(void *p)
{
    if (p == NULL) {
        Py_RETURN_NONE;
    }
    if (((uintptr_t)p & 1u) == 0) {
        PyErr_SetString(PyExc_SystemError, "run queue returned an untagged item");
        return NULL;
    }
    return PyLong_FromSize_t(rq_untag(p));
}

/* ------------------------------------------------------------------------ */
/* TestInjectQueue                                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    zk_inject_queue q;
    int initialized;
} TestInjectObject;

static void TestInject_dealloc(PyObject *self);

static int
is_test_inject(PyObject *o)
{
    return Py_TYPE(o)->tp_dealloc == TestInject_dealloc;
}

static PyObject *
TestInject_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":TestInjectQueue", kwlist)) {
        return NULL;
    }
    TestInjectObject *self = (TestInjectObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (zk_inject_init(&self->q) < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->initialized = 1;
    return (PyObject *)self;
}

static void
TestInject_dealloc(PyObject *op)
{
    TestInjectObject *self = (TestInjectObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->initialized) {
        zk_inject_destroy(&self->q);
        self->initialized = 0;
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
TestInject_push(PyObject *op, PyObject *arg)
{
    TestInjectObject *self = (TestInjectObject *)op;
    void *item;
    if (rq_item_from_py(arg, &item) < 0) {
        return NULL;
    }
    if (zk_inject_push(&self->q, item) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *
TestInject_push_batch(PyObject *op, PyObject *arg)
{
    TestInjectObject *self = (TestInjectObject *)op;
    PyObject *seq = PySequence_Fast(arg, "push_batch() expects a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    void **items = (void **)PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(void *));
    if (items == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rq_item_from_py(PySequence_Fast_GET_ITEM(seq, i), &items[i]) < 0) {
            PyMem_Free(items);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    int r = zk_inject_push_batch(&self->q, items, (size_t)n);
    PyMem_Free(items);
    if (r < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *
TestInject_pop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TestInjectObject *self = (TestInjectObject *)op;
    return rq_item_to_py(zk_inject_pop(&self->q));
}

static PyObject *
TestInject_pop_batch(PyObject *op, PyObject *arg)
{
    TestInjectObject *self = (TestInjectObject *)op;
    Py_ssize_t max = PyLong_AsSsize_t(arg);
    if (max == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max < 0) {
        PyErr_SetString(PyExc_ValueError, "max must be >= 0");
        return NULL;
    }
    void **out = (void **)PyMem_Malloc((size_t)(max > 0 ? max : 1) * sizeof(void *));
    if (out == NULL) {
        return PyErr_NoMemory();
    }
    size_t n = zk_inject_pop_batch(&self->q, out, (size_t)max);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        PyMem_Free(out);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *v = rq_item_to_py(out[i]);
        if (v == NULL) {
            PyMem_Free(out);
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    PyMem_Free(out);
    return list;
}

static PyObject *
TestInject_len(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TestInjectObject *self = (TestInjectObject *)op;
    return PyLong_FromSize_t(zk_inject_len(&self->q));
}

static PyMethodDef TestInject_methods[] = {
    {"push", TestInject_push, METH_O, "push(v): append one item"},
    {"push_batch", TestInject_push_batch, METH_O,
     "push_batch(list): append items in order"},
    {"pop", TestInject_pop, METH_NOARGS, "pop() -> int or None"},
    {"pop_batch", TestInject_pop_batch, METH_O,
     "pop_batch(max) -> list of up to max items, oldest first"},
    {"len", TestInject_len, METH_NOARGS, "len() -> number of items"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot TestInject_slots[] = {
    {Py_tp_new, (void *)TestInject_new},
    {Py_tp_dealloc, (void *)TestInject_dealloc},
    {Py_tp_methods, (void *)TestInject_methods},
    {Py_tp_doc, (void *)"TestInjectQueue(): test wrapper of zk_inject_queue"},
    {0, NULL},
};

static PyType_Spec TestInject_spec = {
    .name = "zokio._native_testing.TestInjectQueue",
    .basicsize = sizeof(TestInjectObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = TestInject_slots,
};

/* ------------------------------------------------------------------------ */
/* TestLocalQueue                                                           */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *inject;   /* strong ref to a TestInjectQueue */
    zk_local_queue *q;  /* separately allocated (large) */
} TestLocalObject;

static void TestLocal_dealloc(PyObject *self);

static int
is_test_local(PyObject *o)
{
    return Py_TYPE(o)->tp_dealloc == TestLocal_dealloc;
}

/* Test hook: start the free-running indices at `start`. */
static void
rq_local_set_start(zk_local_queue *q, uint32_t start)
{
    atomic_store_explicit(&q->head, ((uint64_t)start << 32) | start,
                          memory_order_relaxed);
    atomic_store_explicit(&q->tail, start, memory_order_relaxed);
}

static PyObject *
TestLocal_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "inject", "start", NULL};
    Py_ssize_t capacity;
    PyObject *inject;
    unsigned long long start = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nO|K:TestLocalQueue", kwlist,
                                     &capacity, &inject, &start)) {
        return NULL;
    }
    if (capacity < 2 || capacity > ZK_LOCAL_QUEUE_MAX ||
        (capacity & (capacity - 1)) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "capacity must be a power of two in [2, %d]",
                     ZK_LOCAL_QUEUE_MAX);
        return NULL;
    }
    if (!is_test_inject(inject)) {
        PyErr_SetString(PyExc_TypeError, "inject must be a TestInjectQueue");
        return NULL;
    }
    if (start > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "start must be < 2**32");
        return NULL;
    }
    TestLocalObject *self = (TestLocalObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->q = (zk_local_queue *)PyMem_Malloc(sizeof(zk_local_queue));
    if (self->q == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    zk_local_init(self->q, (uint32_t)capacity);
    rq_local_set_start(self->q, (uint32_t)start);
    self->inject = Py_NewRef(inject);
    return (PyObject *)self;
}

static void
TestLocal_dealloc(PyObject *op)
{
    TestLocalObject *self = (TestLocalObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyMem_Free(self->q);
    self->q = NULL;
    Py_CLEAR(self->inject);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
TestLocal_push(PyObject *op, PyObject *arg)
{
    TestLocalObject *self = (TestLocalObject *)op;
    void *item;
    if (rq_item_from_py(arg, &item) < 0) {
        return NULL;
    }
    TestInjectObject *inj = (TestInjectObject *)self->inject;
    if (zk_local_push_back(self->q, item, &inj->q) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *
TestLocal_pop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TestLocalObject *self = (TestLocalObject *)op;
    return rq_item_to_py(zk_local_pop(self->q));
}

static PyObject *
TestLocal_steal_into(PyObject *op, PyObject *arg)
{
    TestLocalObject *self = (TestLocalObject *)op;
    if (!is_test_local(arg)) {
        PyErr_SetString(PyExc_TypeError, "dst must be a TestLocalQueue");
        return NULL;
    }
    if (arg == op) {
        PyErr_SetString(PyExc_ValueError, "cannot steal into the same queue");
        return NULL;
    }
    TestLocalObject *dst = (TestLocalObject *)arg;
    return rq_item_to_py(zk_local_steal_into(self->q, dst->q));
}

static PyObject *
TestLocal_len(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TestLocalObject *self = (TestLocalObject *)op;
    return PyLong_FromSize_t(zk_local_len(self->q));
}

static PyObject *
TestLocal_remaining(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TestLocalObject *self = (TestLocalObject *)op;
    return PyLong_FromSize_t(zk_local_remaining(self->q));
}

static PyObject *
TestLocal_get_capacity(PyObject *op, void *Py_UNUSED(closure))
{
    TestLocalObject *self = (TestLocalObject *)op;
    return PyLong_FromUnsignedLong(self->q->capacity);
}

static PyObject *
TestLocal_get_inject(PyObject *op, void *Py_UNUSED(closure))
{
    TestLocalObject *self = (TestLocalObject *)op;
    return Py_NewRef(self->inject);
}

/* ---- the C stress ------------------------------------------------------ */

typedef struct rq_stress rq_stress;

typedef struct {
    rq_stress *st;
    int index;              /* 0 = owner, 1.. = stealers */
    zk_local_queue *q;      /* this thread's own queue */
    uint64_t rng;
    /* results (read after join) */
    size_t consumed;
    size_t from_local;
    size_t from_steal;
    size_t from_inject;
    size_t repushed;
    size_t steal_calls;
    size_t steal_hits;
    size_t bad_item;        /* value out of range or untagged; 0 if none */
} rq_worker;

struct rq_stress {
    size_t items;
    int nstealers;
    int nthreads;
    zk_inject_queue inject;
    rq_worker *workers;
    zk_local_queue **queues;        /* queues[i] belongs to workers[i] */
    _Atomic uint32_t *counts;       /* counts[v] for v in 1..items */
    _Atomic size_t consumed;        /* total consumed so far */
    _Atomic int abort;              /* set on timeout or bad item */
    _Atomic int started;            /* start barrier */
    double deadline;                /* CLOCK_MONOTONIC seconds */
    _Atomic int overflow_failed;    /* push_back ran out of memory */
};

static double
rq_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t
rq_rand(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Consume one item: count it.  Returns 0, or -1 on a bad item. */
static int
rq_consume(rq_worker *w, void *p)
{
    rq_stress *st = w->st;
    size_t v = rq_untag(p);
    if (((uintptr_t)p & 1u) == 0 || v == 0 || v > st->items) {
        w->bad_item = (size_t)(uintptr_t)p;
        atomic_store_explicit(&st->abort, 1, memory_order_relaxed);
        return -1;
    }
    /* Relaxed: counts are only read after the threads are joined. */
    atomic_fetch_add_explicit(&st->counts[v], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->consumed, 1, memory_order_relaxed);
    w->consumed++;
    return 0;
}

/* A stealer either consumes what it got or (sometimes) pushes it back to
 * its own queue, so that stealer queues also fill, overflow and get stolen
 * from while other threads steal into them. */
static int
rq_handle(rq_worker *w, void *p)
{
    if (w->index != 0 && (rq_rand(&w->rng) & 3) == 0) {
        if (zk_local_push_back(w->q, p, &w->st->inject) < 0) {
            atomic_store(&w->st->overflow_failed, 1);
            atomic_store_explicit(&w->st->abort, 1, memory_order_relaxed);
            return -1;
        }
        w->repushed++;
        return 0;
    }
    return rq_consume(w, p);
}

static int
rq_done(rq_stress *st)
{
    return atomic_load_explicit(&st->consumed, memory_order_relaxed) >= st->items ||
           atomic_load_explicit(&st->abort, memory_order_relaxed);
}

/* One round of "find work" for any thread.  Returns 1 if it did something. */
static int
rq_find_work(rq_worker *w)
{
    rq_stress *st = w->st;
    void *p = zk_local_pop(w->q);
    if (p != NULL) {
        w->from_local++;
        rq_handle(w, p);
        return 1;
    }
    /* Steal from a random victim (the owner most of the time). */
    if (st->nthreads > 1) {
        uint64_t r = rq_rand(&w->rng);
        int victim = (r & 1) ? 0 : (int)((r >> 8) % (uint64_t)st->nthreads);
        if (victim == w->index) {
            victim = (victim + 1) % st->nthreads;
        }
        w->steal_calls++;
        p = zk_local_steal_into(st->queues[victim], w->q);
        if (p != NULL) {
            w->steal_hits++;
            w->from_steal++;
            rq_handle(w, p);
            return 1;
        }
    }
    /* Inject queue: single pops and small batches. */
    if (rq_rand(&w->rng) & 1) {
        p = zk_inject_pop(&st->inject);
        if (p != NULL) {
            w->from_inject++;
            rq_handle(w, p);
            return 1;
        }
    } else {
        void *batch[8];
        size_t n = zk_inject_pop_batch(&st->inject, batch, 8);
        for (size_t i = 0; i < n; i++) {
            w->from_inject++;
            rq_handle(w, batch[i]);
        }
        if (n > 0) {
            return 1;
        }
    }
    return 0;
}

static void
rq_wait_start(rq_stress *st)
{
    atomic_fetch_add_explicit(&st->started, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&st->started, memory_order_acquire) < st->nthreads) {
        sched_yield();
    }
}

static void *
rq_worker_main(void *arg)
{
    rq_worker *w = (rq_worker *)arg;
    rq_stress *st = w->st;
    rq_wait_start(st);

    if (w->index == 0) {
        /* Owner: push 1..items, popping now and then (about one pop per
         * three pushes, in bursts, so the ring fills and overflows). */
        for (size_t v = 1; v <= st->items; v++) {
            if (atomic_load_explicit(&st->abort, memory_order_relaxed)) {
                return NULL;
            }
            if (zk_local_push_back(w->q, rq_tag(v), &st->inject) < 0) {
                atomic_store(&st->overflow_failed, 1);
                atomic_store_explicit(&st->abort, 1, memory_order_relaxed);
                return NULL;
            }
            uint64_t r = rq_rand(&w->rng);
            if ((r & 3) == 0) {
                int pops = 1 + (int)((r >> 8) & 3);
                for (int i = 0; i < pops; i++) {
                    void *p = zk_local_pop(w->q);
                    if (p == NULL) {
                        break;
                    }
                    w->from_local++;
                    rq_consume(w, p);
                }
            }
            if ((r >> 16) % 64 == 0) {
                sched_yield();  /* let stealers in on small machines */
            }
        }
    }
    unsigned idle = 0;
    while (!rq_done(st)) {
        if (rq_find_work(w)) {
            idle = 0;
            continue;
        }
        if (++idle % 64 == 0) {
            if (rq_now() > st->deadline) {
                atomic_store_explicit(&st->abort, 1, memory_order_relaxed);
                break;
            }
            sched_yield();
        }
    }
    return NULL;
}

/* Outcome of a run, computed without the GIL. */
typedef struct {
    int timed_out;
    int spawn_failed;
    size_t missing;         /* items with count 0 */
    size_t doubled;         /* items with count > 1 */
    size_t first_missing[8];
    size_t first_doubled[8];
    uint32_t first_doubled_count[8];
    size_t leftover_local;  /* items still in local queues at the end */
    size_t leftover_inject;
    size_t bad_item;
} rq_outcome;

static int
rq_stress_run(size_t items, int nstealers, uint32_t capacity, uint64_t seed,
              double timeout, rq_stress *st, rq_outcome *out)
{
    memset(out, 0, sizeof(*out));
    st->items = items;
    st->nstealers = nstealers;
    st->nthreads = nstealers + 1;
    atomic_init(&st->overflow_failed, 0);
    if (zk_inject_init(&st->inject) < 0) {
        return -1;
    }
    st->workers = (rq_worker *)calloc((size_t)st->nthreads, sizeof(rq_worker));
    st->queues = (zk_local_queue **)calloc((size_t)st->nthreads,
                                           sizeof(zk_local_queue *));
    st->counts = (_Atomic uint32_t *)calloc(items + 1, sizeof(_Atomic uint32_t));
    pthread_t *tids = (pthread_t *)calloc((size_t)st->nthreads, sizeof(pthread_t));
    int rc = -1;
    int nstarted = 0;
    if (!st->workers || !st->queues || !st->counts || !tids) {
        goto done;
    }
    for (int i = 0; i < st->nthreads; i++) {
        st->queues[i] = (zk_local_queue *)malloc(sizeof(zk_local_queue));
        if (st->queues[i] == NULL) {
            goto done;
        }
        zk_local_init(st->queues[i], capacity);
        /* Start stealer queues near the 32-bit wrap point. */
        if (i % 2 == 1) {
            rq_local_set_start(st->queues[i], 0xFFFFFFFFu - (uint32_t)(i * 7));
        }
    }
    for (size_t v = 0; v <= items; v++) {
        atomic_init(&st->counts[v], 0);
    }
    atomic_init(&st->consumed, 0);
    atomic_init(&st->abort, 0);
    atomic_init(&st->started, 0);
    st->deadline = rq_now() + timeout;
    for (int i = 0; i < st->nthreads; i++) {
        rq_worker *w = &st->workers[i];
        w->st = st;
        w->index = i;
        w->q = st->queues[i];
        w->rng = (seed + 1) * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL;
        if (w->rng == 0) {
            w->rng = 1;
        }
    }
    for (int i = 0; i < st->nthreads; i++) {
        if (pthread_create(&tids[i], NULL, rq_worker_main, &st->workers[i]) != 0) {
            out->spawn_failed = 1;
            /* Release the threads already waiting at the start barrier. */
            atomic_store_explicit(&st->abort, 1, memory_order_relaxed);
            atomic_store_explicit(&st->started, st->nthreads, memory_order_release);
            break;
        }
        nstarted++;
    }
    for (int i = 0; i < nstarted; i++) {
        pthread_join(tids[i], NULL);
    }
    if (out->spawn_failed) {
        rc = 0;
        goto done;
    }

    /* Everything below runs after join: plain reads are fine. */
    out->timed_out = atomic_load(&st->abort) && !atomic_load(&st->overflow_failed);
    for (int i = 0; i < st->nthreads; i++) {
        if (st->workers[i].bad_item) {
            out->bad_item = st->workers[i].bad_item;
            out->timed_out = 0;
        }
        out->leftover_local += zk_local_len(st->queues[i]);
    }
    out->leftover_inject = zk_inject_len(&st->inject);
    for (size_t v = 1; v <= items; v++) {
        uint32_t c = atomic_load_explicit(&st->counts[v], memory_order_relaxed);
        if (c == 0) {
            if (out->missing < 8) {
                out->first_missing[out->missing] = v;
            }
            out->missing++;
        } else if (c > 1) {
            if (out->doubled < 8) {
                out->first_doubled[out->doubled] = v;
                out->first_doubled_count[out->doubled] = c;
            }
            out->doubled++;
        }
    }
    rc = 0;
done:
    free(tids);
    return rc;
}

static void
rq_stress_free(rq_stress *st)
{
    if (st->queues) {
        for (int i = 0; i < st->nthreads; i++) {
            free(st->queues[i]);
        }
    }
    free(st->queues);
    free(st->workers);
    free((void *)st->counts);
    zk_inject_destroy(&st->inject);
}

static PyObject *
rq_size_list(const size_t *v, size_t n)
{
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (l == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *x = PyLong_FromSize_t(v[i]);
        if (x == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, x);
    }
    return l;
}

static int
rq_dict_set_size(PyObject *d, const char *key, size_t v)
{
    PyObject *x = PyLong_FromSize_t(v);
    if (x == NULL) {
        return -1;
    }
    int r = PyDict_SetItemString(d, key, x);
    Py_DECREF(x);
    return r;
}

static PyObject *
TestLocal_stress(PyObject *Py_UNUSED(cls), PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"threads", "items", "capacity", "seed", "timeout",
                             NULL};
    int threads;
    Py_ssize_t items;
    Py_ssize_t capacity;
    unsigned long long seed = 1;
    double timeout = 30.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "inn|Kd:stress", kwlist,
                                     &threads, &items, &capacity, &seed,
                                     &timeout)) {
        return NULL;
    }
    if (threads < 0 || threads > 256) {
        PyErr_SetString(PyExc_ValueError, "threads (stealers) must be in [0, 256]");
        return NULL;
    }
    if (items < 1 || (size_t)items > ((size_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "items must be >= 1");
        return NULL;
    }
    if (capacity < 2 || capacity > ZK_LOCAL_QUEUE_MAX ||
        (capacity & (capacity - 1)) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "capacity must be a power of two in [2, %d]",
                     ZK_LOCAL_QUEUE_MAX);
        return NULL;
    }
    if (!(timeout > 0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be > 0");
        return NULL;
    }

    rq_stress st;
    memset(&st, 0, sizeof(st));
    rq_outcome out;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rq_stress_run((size_t)items, threads, (uint32_t)capacity,
                       (uint64_t)seed, timeout, &st, &out);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rq_stress_free(&st);
        return PyErr_NoMemory();
    }
    if (out.spawn_failed) {
        rq_stress_free(&st);
        PyErr_SetString(PyExc_RuntimeError, "pthread_create failed");
        return NULL;
    }
    if (atomic_load(&st.overflow_failed)) {
        rq_stress_free(&st);
        return PyErr_NoMemory();
    }

    if (out.bad_item || out.timed_out || out.missing || out.doubled ||
        out.leftover_local || out.leftover_inject) {
        char missing[256] = "", doubled[256] = "";
        size_t off = 0;
        for (size_t i = 0; i < out.missing && i < 8; i++) {
            off += (size_t)snprintf(missing + off, sizeof(missing) - off, "%zu ",
                                    out.first_missing[i]);
        }
        off = 0;
        for (size_t i = 0; i < out.doubled && i < 8; i++) {
            off += (size_t)snprintf(doubled + off, sizeof(doubled) - off,
                                    "%zu(x%u) ", out.first_doubled[i],
                                    (unsigned)out.first_doubled_count[i]);
        }
        PyErr_Format(PyExc_AssertionError,
                     "run queue stress failed (stealers=%d items=%zd "
                     "capacity=%zd seed=%llu): timed_out=%d bad_item=%zu "
                     "missing=%zu [%s] doubled=%zu [%s] leftover_local=%zu "
                     "leftover_inject=%zu consumed=%zu",
                     threads, items, capacity, seed, out.timed_out,
                     out.bad_item, out.missing, missing, out.doubled, doubled,
                     out.leftover_local, out.leftover_inject,
                     atomic_load(&st.consumed));
        rq_stress_free(&st);
        return NULL;
    }

    size_t total_local = 0, total_steal = 0, total_inject = 0, total_repush = 0,
           total_steal_calls = 0;
    size_t *per_thread = (size_t *)PyMem_Calloc((size_t)st.nthreads, sizeof(size_t));
    if (per_thread == NULL) {
        rq_stress_free(&st);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < st.nthreads; i++) {
        rq_worker *w = &st.workers[i];
        total_local += w->from_local;
        total_steal += w->from_steal;
        total_inject += w->from_inject;
        total_repush += w->repushed;
        total_steal_calls += w->steal_calls;
        per_thread[i] = w->consumed;
    }
    PyObject *d = PyDict_New();
    PyObject *pt = rq_size_list(per_thread, (size_t)st.nthreads);
    PyMem_Free(per_thread);
    if (d == NULL || pt == NULL || PyDict_SetItemString(d, "consumed_per_thread", pt) < 0 ||
        rq_dict_set_size(d, "items", (size_t)items) < 0 ||
        rq_dict_set_size(d, "consumed", atomic_load(&st.consumed)) < 0 ||
        rq_dict_set_size(d, "from_local", total_local) < 0 ||
        rq_dict_set_size(d, "from_steal", total_steal) < 0 ||
        rq_dict_set_size(d, "from_inject", total_inject) < 0 ||
        rq_dict_set_size(d, "repushed", total_repush) < 0 ||
        rq_dict_set_size(d, "steal_calls", total_steal_calls) < 0 ||
        rq_dict_set_size(d, "missing", out.missing) < 0 ||
        rq_dict_set_size(d, "doubled", out.doubled) < 0) {
        Py_XDECREF(d);
        Py_XDECREF(pt);
        rq_stress_free(&st);
        return NULL;
    }
    Py_DECREF(pt);
    rq_stress_free(&st);
    return d;
}

static PyMethodDef TestLocal_methods[] = {
    {"push", TestLocal_push, METH_O,
     "push(v): push_back, overflowing half the queue + v into inject"},
    {"pop", TestLocal_pop, METH_NOARGS, "pop() -> int or None"},
    {"steal_into", TestLocal_steal_into, METH_O,
     "steal_into(dst) -> int or None: steal half into dst, return one"},
    {"len", TestLocal_len, METH_NOARGS, "len() -> number of items"},
    {"remaining", TestLocal_remaining, METH_NOARGS,
     "remaining() -> number of free slots"},
    {"stress", (PyCFunction)(void (*)(void))TestLocal_stress,
     METH_VARARGS | METH_KEYWORDS | METH_STATIC,
     "stress(threads, items, capacity, seed=1, timeout=30.0) -> dict\n"
     "Concurrent C stress: one owner + `threads` stealer pthreads; raises\n"
     "AssertionError if any item is lost or taken twice."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef TestLocal_getset[] = {
    {"capacity", TestLocal_get_capacity, NULL, "ring capacity", NULL},
    {"inject", TestLocal_get_inject, NULL, "the overflow TestInjectQueue", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot TestLocal_slots[] = {
    {Py_tp_new, (void *)TestLocal_new},
    {Py_tp_dealloc, (void *)TestLocal_dealloc},
    {Py_tp_methods, (void *)TestLocal_methods},
    {Py_tp_getset, (void *)TestLocal_getset},
    {Py_tp_doc, (void *)"TestLocalQueue(capacity, inject, start=0): test wrapper "
                        "of zk_local_queue"},
    {0, NULL},
};

static PyType_Spec TestLocal_spec = {
    .name = "zokio._native_testing.TestLocalQueue",
    .basicsize = sizeof(TestLocalObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = TestLocal_slots,
};

/* ------------------------------------------------------------------------ */

int
zk_run_queue_testing_add(PyObject *module)
{
    PyObject *inject = PyType_FromModuleAndSpec(module, &TestInject_spec, NULL);
    if (inject == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "TestInjectQueue", inject) < 0) {
        Py_DECREF(inject);
        return -1;
    }
    Py_DECREF(inject);
    PyObject *local = PyType_FromModuleAndSpec(module, &TestLocal_spec, NULL);
    if (local == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "TestLocalQueue", local) < 0) {
        Py_DECREF(local);
        return -1;
    }
    Py_DECREF(local);
    return 0;
}
