/* timer_wheel_testing.c -- _native_testing.TestTimerWheel, a test-only
 * wrapper that lets pytest drive a zk_timer_wheel against a model.
 *
 * The object owns one wheel and the entries currently linked in it, found by
 * an integer id through a small open-addressing hash table.  An entry lives
 * (and is allocated) exactly while it is linked: insert allocates it, remove
 * and poll free it, dealloc frees the rest.
 *
 * Locking: the wheel is single-threaded by design, but on a free-threaded
 * build a test may call one object from several threads, so every method
 * holds the object's zk_mutex around the C work.  Nothing touches Python
 * while the mutex is held (arguments are converted before, results built
 * after), so the pthread fallback cannot deadlock against the GIL.
 */
#include "core/compat.h"
#include "testing/testing.h"
#include "core/timer_wheel.h"

typedef struct {
    zk_timer_entry entry;   /* first member: entry pointer == tw_item pointer */
    long long id;
} tw_item;

typedef struct {
    PyObject_HEAD
    zk_mutex lock;
    zk_timer_wheel wheel;
    /* Hash table id -> item, linear probing, power-of-two capacity, deletion
     * by backward shift (so there are no tombstones to clean up). */
    tw_item **table;
    size_t cap;
    size_t used;
} TestTimerWheel;

/* ---- id table --------------------------------------------------------- */

static size_t tw_hash(long long id, size_t cap)
{
    /* Fibonacci hashing spreads sequential ids across the table. */
    uint64_t h = (uint64_t)id * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & (cap - 1);
}

static tw_item *tw_find(TestTimerWheel *self, long long id, size_t *pos)
{
    size_t i = tw_hash(id, self->cap);
    for (;;) {
        tw_item *it = self->table[i];
        if (it == NULL) {
            if (pos)
                *pos = i;
            return NULL;
        }
        if (it->id == id) {
            if (pos)
                *pos = i;
            return it;
        }
        i = (i + 1) & (self->cap - 1);
    }
}

/* Grow when more than half full so probe chains stay short.  Returns -1 on
 * allocation failure (no Python error set: the caller is under the lock). */
static int tw_reserve(TestTimerWheel *self)
{
    if ((self->used + 1) * 2 <= self->cap)
        return 0;
    size_t ncap = self->cap * 2;
    tw_item **nt = PyMem_RawCalloc(ncap, sizeof(*nt));
    if (nt == NULL)
        return -1;
    for (size_t i = 0; i < self->cap; i++) {
        tw_item *it = self->table[i];
        if (it == NULL)
            continue;
        size_t j = tw_hash(it->id, ncap);
        while (nt[j] != NULL)
            j = (j + 1) & (ncap - 1);
        nt[j] = it;
    }
    PyMem_RawFree(self->table);
    self->table = nt;
    self->cap = ncap;
    return 0;
}

static void tw_table_delete(TestTimerWheel *self, size_t hole)
{
    /* Backward-shift deletion: move later members of the probe run into the
     * hole whenever their home slot does not lie cyclically in (hole, j]. */
    size_t mask = self->cap - 1;
    size_t j = hole;
    self->table[hole] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        tw_item *it = self->table[j];
        if (it == NULL)
            break;
        size_t home = tw_hash(it->id, self->cap);
        int stays = hole <= j ? (hole < home && home <= j)
                              : (hole < home || home <= j);
        if (!stays) {
            self->table[hole] = it;
            self->table[j] = NULL;
            hole = j;
        }
    }
    self->used--;
}

static void tw_forget(TestTimerWheel *self, tw_item *it)
{
    size_t pos;
    tw_item *found = tw_find(self, it->id, &pos);
    if (found == it)
        tw_table_delete(self, pos);
}

/* ---- type ------------------------------------------------------------- */

static int parse_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_id(PyObject *o, long long *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static PyObject *u64_or_none(uint64_t v)
{
    if (v == ZK_WHEEL_NEVER)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *TestTimerWheel_new(PyTypeObject *type, PyObject *args,
                                    PyObject *kwds)
{
    static char *kwlist[] = {"now", NULL};
    PyObject *now_obj;
    uint64_t now;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:TestTimerWheel", kwlist,
                                     &now_obj))
        return NULL;
    if (parse_u64(now_obj, &now) < 0)
        return NULL;
    TestTimerWheel *self = (TestTimerWheel *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    zk_mutex_init(&self->lock);
    zk_wheel_init(&self->wheel, now);
    self->cap = 64;
    self->used = 0;
    self->table = PyMem_RawCalloc(self->cap, sizeof(*self->table));
    if (self->table == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void TestTimerWheel_dealloc(PyObject *op)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->table != NULL) {
        /* Every linked entry is in the table; the wheel dies with us, so
         * the entries need no unlinking. */
        for (size_t i = 0; i < self->cap; i++)
            PyMem_RawFree(self->table[i]);
        PyMem_RawFree(self->table);
        self->table = NULL;
    }
    zk_mutex_destroy(&self->lock);
    tp->tp_free(op);
    Py_DECREF(tp);   /* heap type instances own a reference to the type */
}

static PyObject *TestTimerWheel_insert(PyObject *op, PyObject *const *args,
                                       Py_ssize_t nargs)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    long long id;
    uint64_t deadline;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "insert(id, deadline) takes 2 arguments");
        return NULL;
    }
    if (parse_id(args[0], &id) < 0 || parse_u64(args[1], &deadline) < 0)
        return NULL;
    /* Allocate outside the lock; freed again if unused. */
    tw_item *it = PyMem_RawCalloc(1, sizeof(*it));
    if (it == NULL)
        return PyErr_NoMemory();
    it->id = id;
    it->entry.deadline = deadline;

    int result; /* 1 inserted, 0 already due, -1 duplicate, -2 no memory */
    zk_mutex_lock(&self->lock);
    size_t pos;
    if (tw_find(self, id, &pos) != NULL) {
        result = -1;
    } else if (!zk_wheel_insert(&self->wheel, &it->entry)) {
        result = 0;
    } else if (tw_reserve(self) < 0) {
        zk_wheel_remove(&self->wheel, &it->entry);
        result = -2;
    } else {
        tw_find(self, id, &pos);   /* the table may have been rebuilt */
        self->table[pos] = it;
        self->used++;
        result = 1;
    }
    zk_mutex_unlock(&self->lock);

    if (result != 1)
        PyMem_RawFree(it);
    if (result == -1) {
        PyErr_Format(PyExc_ValueError, "timer id %lld is already in the wheel", id);
        return NULL;
    }
    if (result == -2)
        return PyErr_NoMemory();
    return PyBool_FromLong(result);
}

static PyObject *TestTimerWheel_remove(PyObject *op, PyObject *arg)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    long long id;
    if (parse_id(arg, &id) < 0)
        return NULL;
    zk_mutex_lock(&self->lock);
    size_t pos;
    tw_item *it = tw_find(self, id, &pos);
    if (it != NULL) {
        zk_wheel_remove(&self->wheel, &it->entry);
        tw_table_delete(self, pos);
    }
    zk_mutex_unlock(&self->lock);
    PyMem_RawFree(it);
    return PyBool_FromLong(it != NULL);
}

typedef struct {
    long long id;
    uint64_t deadline;
} tw_fired;

/* Drain up to `limit` due entries into a freshly allocated array.  Returns
 * the count, or -1 on allocation failure (entries already taken are still
 * reported through *out). */
static Py_ssize_t drain(TestTimerWheel *self, uint64_t now, size_t limit,
                        tw_fired **out)
{
    size_t n = 0, cap = 0;
    tw_fired *buf = NULL;
    int oom = 0;
    zk_mutex_lock(&self->lock);
    while (n < limit) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            tw_fired *nb = PyMem_RawRealloc(buf, ncap * sizeof(*nb));
            if (nb == NULL) {
                oom = 1;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        zk_timer_entry *e = zk_wheel_poll(&self->wheel, now);
        if (e == NULL)
            break;
        tw_item *it = (tw_item *)e;
        buf[n].id = it->id;
        buf[n].deadline = e->deadline;
        n++;
        tw_forget(self, it);
        PyMem_RawFree(it);
    }
    zk_mutex_unlock(&self->lock);
    *out = buf;
    return oom ? -1 : (Py_ssize_t)n;
}

static PyObject *fired_tuple(const tw_fired *f)
{
    return Py_BuildValue("(LK)", f->id, (unsigned long long)f->deadline);
}

static PyObject *TestTimerWheel_poll(PyObject *op, PyObject *arg)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    uint64_t now;
    if (parse_u64(arg, &now) < 0)
        return NULL;
    tw_fired *buf;
    Py_ssize_t n = drain(self, now, SIZE_MAX, &buf);
    if (n < 0) {
        PyMem_RawFree(buf);
        return PyErr_NoMemory();
    }
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        PyObject *t = fired_tuple(&buf[i]);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    PyMem_RawFree(buf);
    return list;
}

/* One step of zk_wheel_poll: lets tests interleave inserts and removes with
 * a partially drained poll (entries on the wheel's pending list). */
static PyObject *TestTimerWheel_poll_one(PyObject *op, PyObject *arg)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    uint64_t now;
    if (parse_u64(arg, &now) < 0)
        return NULL;
    tw_fired *buf;
    Py_ssize_t n = drain(self, now, 1, &buf);
    PyObject *res;
    if (n < 0)
        res = PyErr_NoMemory();
    else if (n == 0)
        res = Py_NewRef(Py_None);
    else
        res = fired_tuple(&buf[0]);
    PyMem_RawFree(buf);
    return res;
}

static PyObject *TestTimerWheel_next_expiration(PyObject *op,
                                                PyObject *Py_UNUSED(ignored))
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    zk_mutex_lock(&self->lock);
    uint64_t v = zk_wheel_next_expiration(&self->wheel);
    zk_mutex_unlock(&self->lock);
    return u64_or_none(v);
}

static PyObject *TestTimerWheel_contains_id(PyObject *op, PyObject *arg)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    long long id;
    if (parse_id(arg, &id) < 0)
        return NULL;
    zk_mutex_lock(&self->lock);
    int found = tw_find(self, id, NULL) != NULL;
    zk_mutex_unlock(&self->lock);
    return PyBool_FromLong(found);
}

static PyObject *TestTimerWheel_get_elapsed(PyObject *op, void *Py_UNUSED(c))
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    zk_mutex_lock(&self->lock);
    uint64_t v = self->wheel.elapsed;
    zk_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(v);
}

static Py_ssize_t TestTimerWheel_len(PyObject *op)
{
    TestTimerWheel *self = (TestTimerWheel *)op;
    zk_mutex_lock(&self->lock);
    size_t n = self->wheel.count;
    zk_mutex_unlock(&self->lock);
    return (Py_ssize_t)n;
}

static PyMethodDef TestTimerWheel_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))TestTimerWheel_insert, METH_FASTCALL,
     "insert(id, deadline) -> bool: False (nothing stored) if already due."},
    {"remove", TestTimerWheel_remove, METH_O,
     "remove(id) -> bool: True if the id was in the wheel."},
    {"poll", TestTimerWheel_poll, METH_O,
     "poll(now) -> list of (id, deadline) due at now, in firing order."},
    {"poll_one", TestTimerWheel_poll_one, METH_O,
     "poll_one(now) -> (id, deadline) or None: a single zk_wheel_poll step."},
    {"next_expiration", TestTimerWheel_next_expiration, METH_NOARGS,
     "next_expiration() -> int or None."},
    {"contains", TestTimerWheel_contains_id, METH_O,
     "contains(id) -> bool: the id is linked in the wheel."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef TestTimerWheel_getset[] = {
    {"elapsed", TestTimerWheel_get_elapsed, NULL, "ticks processed so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot TestTimerWheel_slots[] = {
    {Py_tp_new, TestTimerWheel_new},
    {Py_tp_dealloc, TestTimerWheel_dealloc},
    {Py_tp_methods, TestTimerWheel_methods},
    {Py_tp_getset, TestTimerWheel_getset},
    {Py_sq_length, TestTimerWheel_len},
    {Py_tp_doc, "TestTimerWheel(now): test wrapper around zk_timer_wheel."},
    {0, NULL},
};

static PyType_Spec TestTimerWheel_spec = {
    .name = "zokio._native_testing.TestTimerWheel",
    .basicsize = sizeof(TestTimerWheel),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = TestTimerWheel_slots,
};

int zk_timer_wheel_testing_add(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &TestTimerWheel_spec, NULL);
    if (type == NULL)
        return -1;
    int rc = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return rc;
}
