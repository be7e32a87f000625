/* notify.c -- Notify and Event, each one wait list and one mutex.
 *
 * Notify (Tokio's): notified() parks at the tail unless a stored permit is
 * there to take; notify_one() wakes the head or, with nobody waiting, stores
 * one permit (at most one); notify_waiters() wakes every waiter parked at
 * that moment and stores nothing; notify(n) wakes up to n and stores
 * nothing (Condition's).  A waiter parks when notified() is called, not
 * when it is first awaited, so `n = notify.notified()` taken before a check
 * cannot miss a notify_waiters() that follows the check.
 *
 * A notify_one() grant is marked got = 1.  If it never reaches its task (the
 * waiter is dropped unconsumed, or its coroutine is closed), give_back
 * passes it on with notify_one(), so a notification is never lost; a
 * cancel that arrives with the grant lets the task resume with it first
 * (waitlist.h).  notify_waiters()/notify(n) grants carry nothing back.
 *
 * Event: set() stores the flag and wakes every waiter; wait() returns at
 * once while the flag is set; clear() resets it.
 */
#include "sync/waitlist.h"
#include "core/task.h"
#include "core/timeout_arg.h"
#include <sched.h>

typedef struct {
    PyObject_HEAD
    zk_mutex lock;
    zk_waitlist wl;
    int permit;             /* Notify: a stored notify_one(); Event: the flag */
    PyObject *weakreflist;
} zk_notify;

static PyObject *ready_none_obj;  /* the shared Ready(None), immortal */

static PyObject *notify_new(PyTypeObject *type, PyObject *args, PyObject *kwds);

/* Pass an unconsumed notify_one() grant on. */
static void notify_one_impl(zk_notify *s);

static void notify_give_back(PyObject *owner, zk_waiter *w) {
    if (w->got > 0)
        notify_one_impl((zk_notify *)owner);
}

/* Pop up to n waiters (n < 0: all) under the mutex, wake them after. */
static Py_ssize_t wake_n(zk_notify *s, Py_ssize_t n, int store_if_none, int set_flag,
                         Py_ssize_t got) {
    zk_waiter *chain = NULL, **tail = &chain, *w;
    Py_ssize_t woken = 0;
    zk_mutex_lock(&s->lock);
    if (set_flag)
        s->permit = 1;
    while ((n < 0 || woken < n) && (w = zk_waitlist_pop_locked(&s->wl)) != NULL) {
        w->got = got;
        w->next = NULL;
        *tail = w;
        tail = &w->next;
        woken++;
    }
    if (woken == 0 && store_if_none)
        s->permit = 1;
    zk_mutex_unlock(&s->lock);
    while (chain != NULL) {
        w = chain;
        chain = w->next;
        w->next = NULL;
        zk_waiter_complete(w, NULL, NULL);
    }
    return woken;
}

static void notify_one_impl(zk_notify *s) {
    wake_n(s, 1, 1, 0, 1);
}

/* notified() / wait(): Ready if the permit (flag) is there, else a Waiter. */
static PyObject *park(zk_notify *s, int take_permit) {
    zk_mutex_lock(&s->lock);
    if (s->permit) {
        if (take_permit)
            s->permit = 0;
        zk_mutex_unlock(&s->lock);
        return Py_NewRef(ready_none_obj);
    }
    zk_mutex_unlock(&s->lock);
    zk_waiter *w = zk_waiter_new(1, 0);
    if (w == NULL)
        return NULL;
    zk_mutex_lock(&s->lock);
    if (s->permit) {
        if (take_permit)
            s->permit = 0;
        zk_mutex_unlock(&s->lock);
        Py_DECREF(w);
        return Py_NewRef(ready_none_obj);
    }
    zk_waitlist_push_locked(&s->wl, w);
    zk_mutex_unlock(&s->lock);
    return (PyObject *)w;
}

/* wait_blocking(timeout=None) for plain threads: True if woken. */
static PyObject *block_on_park(zk_notify *s, PyObject *args, PyObject *kwds, int take_permit) {
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:wait_blocking", kwlist, &timeout))
        return NULL;
    int64_t tns;
    if (zk_timeout_arg_ns(timeout, &tns) < 0)
        return NULL;
    if (zk_current_worker != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a blocking wait would block a zokio worker: use await");
        return NULL;
    }
    PyObject *r = park(s, take_permit);
    if (r == NULL)
        return NULL;
    if (r == ready_none_obj) {
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    zk_waiter *w = (zk_waiter *)r;
    int got = zk_waiter_block(w, tns);
    if (got != 1) {
        zk_mutex_lock(&s->lock);
        zk_waiter *removed = zk_waitlist_remove_locked(&s->wl, w);
        zk_mutex_unlock(&s->lock);
        if (removed != NULL) {
            Py_DECREF(removed);
            Py_DECREF(w);
            if (got < 0)
                return NULL;
            Py_RETURN_FALSE;
        }
        /* Woken meanwhile: the completion follows the unlock. */
        while (!zk_leaf_is_done(&w->leaf)) {
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
        }
        if (got < 0) {
            Py_DECREF(w);  /* unconsumed: a notify_one grant is passed on */
            return NULL;
        }
    }
    atomic_store_explicit(&w->consumed, 1, memory_order_release);
    Py_DECREF(w);
    Py_RETURN_TRUE;
}

static PyObject *n_notified(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    return park(s, 1);
}

static PyObject *n_notify_one(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    notify_one_impl(s);
    Py_RETURN_NONE;
}

static PyObject *n_notify_waiters(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(wake_n(s, -1, 0, 0, 0));
}

/* notify(n) -> how many were woken; stores nothing (Condition). */
static PyObject *n_notify(zk_notify *s, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n <= 0)
        return PyLong_FromLong(0);
    return PyLong_FromSsize_t(wake_n(s, n, 0, 0, 0));
}

static PyObject *n_wait_blocking(zk_notify *s, PyObject *args, PyObject *kwds) {
    return block_on_park(s, args, kwds, 1);
}

static PyObject *n_get_waiting(zk_notify *s, void *Py_UNUSED(c)) {
    zk_mutex_lock(&s->lock);
    Py_ssize_t n = s->wl.length;
    zk_mutex_unlock(&s->lock);
    return PyLong_FromSsize_t(n);
}

static PyObject *n_get_permit(zk_notify *s, void *Py_UNUSED(c)) {
    zk_mutex_lock(&s->lock);
    int p = s->permit;
    zk_mutex_unlock(&s->lock);
    return PyBool_FromLong(p);
}

/* ---- Event ------------------------------------------------------------------ */

static PyObject *e_set(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    wake_n(s, -1, 0, 1, 0);
    Py_RETURN_NONE;
}

static PyObject *e_clear(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    zk_mutex_lock(&s->lock);
    s->permit = 0;
    zk_mutex_unlock(&s->lock);
    Py_RETURN_NONE;
}

static PyObject *e_is_set(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    return n_get_permit(s, NULL);
}

static PyObject *e_wait(zk_notify *s, PyObject *Py_UNUSED(ignored)) {
    return park(s, 0);
}

static PyObject *e_wait_blocking(zk_notify *s, PyObject *args, PyObject *kwds) {
    return block_on_park(s, args, kwds, 0);
}

/* ---- shared type plumbing ------------------------------------------------------ */

static PyObject *notify_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", type->tp_name);
        return NULL;
    }
    zk_notify *s = (zk_notify *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    zk_mutex_init(&s->lock);
    s->permit = 0;
    s->weakreflist = NULL;
    zk_waitlist_init(&s->wl, &s->lock, (PyObject *)s, notify_give_back);
    return (PyObject *)s;
}

static int notify_traverse(zk_notify *s, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(s));
    for (zk_waiter *w = s->wl.head; w != NULL; w = w->next)
        Py_VISIT((PyObject *)w);
    return 0;
}

static int notify_clear(zk_notify *s) {
    zk_waiter *chain = NULL, *w;
    zk_mutex_lock(&s->lock);
    while ((w = zk_waitlist_head_locked(&s->wl)) != NULL) {
        zk_waitlist_remove_locked(&s->wl, w);
        w->next = chain;
        chain = w;
    }
    zk_mutex_unlock(&s->lock);
    while (chain != NULL) {
        w = chain;
        chain = w->next;
        w->next = NULL;
        Py_DECREF(w);
    }
    return 0;
}

static void notify_dealloc(zk_notify *s) {
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    if (s->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)s);
    notify_clear(s);
    zk_mutex_destroy(&s->lock);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static PyObject *notify_repr(zk_notify *s) {
    return PyUnicode_FromFormat("<zokio.sync.%s %s waiting=%zd>",
                                strrchr(Py_TYPE(s)->tp_name, '.') + 1,
                                s->permit ? "set" : "unset", s->wl.length);
}

#include <structmember.h>
static PyMemberDef notify_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(zk_notify, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef n_methods[] = {
    {"notified", (PyCFunction)n_notified, METH_NOARGS,
     "notified() -> awaitable: parks now; completes on a notification (takes a "
     "stored permit at once)."},
    {"notify_one", (PyCFunction)n_notify_one, METH_NOARGS,
     "Wake the first waiter, or store one permit if nobody waits.  Any thread."},
    {"notify_waiters", (PyCFunction)n_notify_waiters, METH_NOARGS,
     "Wake every current waiter; stores nothing.  Any thread.  Returns how many."},
    {"notify", (PyCFunction)n_notify, METH_O,
     "notify(n) -> int: wake up to n waiters; stores nothing."},
    {"wait_blocking", (PyCFunction)(void (*)(void))n_wait_blocking, METH_VARARGS | METH_KEYWORDS,
     "wait_blocking(timeout=None) -> bool: notified() for a plain thread."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef n_getset[] = {
    {"waiting", (getter)n_get_waiting, NULL, NULL, NULL},
    {"has_permit", (getter)n_get_permit, NULL, "a notify_one() is stored", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot n_slots[] = {
    {Py_tp_new, notify_new},
    {Py_tp_dealloc, notify_dealloc},
    {Py_tp_traverse, notify_traverse},
    {Py_tp_clear, notify_clear},
    {Py_tp_methods, n_methods},
    {Py_tp_getset, n_getset},
    {Py_tp_members, notify_members},
    {Py_tp_repr, notify_repr},
    {Py_tp_doc, "Notify(): wake one task or all of them (Tokio's Notify).  Any thread may notify."},
    {0, NULL},
};

static PyType_Spec n_spec = {
    .name = "zokio.sync.Notify",
    .basicsize = sizeof(zk_notify),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = n_slots,
};

static PyMethodDef e_methods[] = {
    {"set", (PyCFunction)e_set, METH_NOARGS, "Set the flag and wake every waiter.  Any thread."},
    {"clear", (PyCFunction)e_clear, METH_NOARGS, NULL},
    {"is_set", (PyCFunction)e_is_set, METH_NOARGS, NULL},
    {"wait", (PyCFunction)e_wait, METH_NOARGS, "wait() -> awaitable: returns once the flag is set."},
    {"wait_blocking", (PyCFunction)(void (*)(void))e_wait_blocking, METH_VARARGS | METH_KEYWORDS,
     "wait_blocking(timeout=None) -> bool: wait() for a plain thread."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef e_getset[] = {
    {"waiting", (getter)n_get_waiting, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot e_slots[] = {
    {Py_tp_new, notify_new},
    {Py_tp_dealloc, notify_dealloc},
    {Py_tp_traverse, notify_traverse},
    {Py_tp_clear, notify_clear},
    {Py_tp_methods, e_methods},
    {Py_tp_getset, e_getset},
    {Py_tp_members, notify_members},
    {Py_tp_repr, notify_repr},
    {Py_tp_doc, "Event(): a flag tasks wait for; set() from any thread."},
    {0, NULL},
};

static PyType_Spec e_spec = {
    .name = "zokio.sync.Event",
    .basicsize = sizeof(zk_notify),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = e_slots,
};

int zk_notify_types_init(PyObject *module, zk_state *st) {
    ZK_UNUSED(st);
    ready_none_obj = zk_sync_ready(Py_None);  /* immortal */
    if (ready_none_obj == NULL)
        return -1;
    PyObject *n = PyType_FromModuleAndSpec(module, &n_spec, NULL);
    if (n == NULL)
        return -1;
    int r = PyModule_AddObjectRef(module, "Notify", n);
    Py_DECREF(n);
    PyObject *e = PyType_FromModuleAndSpec(module, &e_spec, NULL);
    if (r < 0 || e == NULL) {
        Py_XDECREF(e);
        return -1;
    }
    r = PyModule_AddObjectRef(module, "Event", e);
    Py_DECREF(e);
    return r;
}
