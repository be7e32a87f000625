/* channel.c -- the mpsc channel: bounded and unbounded, many senders on any
 * thread, one receiver.
 *
 * One Channel object (not exposed) holds, under ONE zk_mutex:
 *   buf      a ring of strong references (power-of-two size, grows; a
 *            bounded channel's logical limit is `bound`, the ring may exceed
 *            it only by items given back by cancelled receivers)
 *   recvq    receivers parked on an empty channel (wait list, waitlist.h)
 *   sendq    senders parked on a full channel; each parks its item on its
 *            Waiter (`item`)
 *   senders  live Sender objects; 0 ends the channel
 *   rx_closed  the receiver closed or dropped: sends are refused
 * Invariants (under the mutex): recvq non-empty => buffer empty; sendq
 * non-empty => buffer at (or above) bound.  So a sender never overtakes a
 * parked sender and a receiver never overtakes a parked receiver: FIFO.
 *
 * Who moves what, always decided under the mutex and completed after it:
 *   send, a receiver parked   pop the head receiver, hand it the item
 *                             (its Waiter's `item` keeps a second reference
 *                             until it is consumed, for give_back)
 *   send, room, nobody parked item to the back of the ring; returns the
 *                             shared SendDone object (no allocation)
 *   send, full                park: the item rides on the sender's Waiter
 *   recv, items buffered      take the front; if a sender is parked, move
 *                             its item to the back and grant it (its send
 *                             is done).  Returns a Ready holding the item
 *   recv, empty               park on recvq
 * A cancel that reaches a LINKED waiter removes it (waitlist.c): a sender's
 * parked item goes nowhere, a receiver loses nothing.  A cancel that reaches
 * a GRANTED waiter resumes the task with its outcome first (the send is
 * done / the message is the receiver's).  A granted receiver Waiter or a
 * Ready that dies unconsumed gives its item back to the FRONT of the ring
 * (or straight to the next parked receiver).
 *
 * The coroutine budget (state.h): when the running task's budget is spent,
 * send/recv still do their work at once but hand out a Waiter already
 * granted and completed, which the task yields once (a cancel landing in
 * that yield is deferred past it, as for any granted waiter).
 *
 * Locking (brief §7): nothing inside the critical sections calls Python,
 * frees, or allocates; references to release and waiters to complete are
 * collected and acted on after unlocking.  Ring growth allocates unlocked
 * and retries.
 */
#include "sync/channel.h"
#include "core/task.h"
#include "core/timeout_arg.h"

enum { CHAN_SEND = 1, CHAN_RECV = 2, CHAN_RECV_ITER = 3 };

typedef struct zk_chan {
    PyObject_HEAD
    zk_mutex lock;
    zk_state *st;
    PyObject **buf;         /* ring, `cap` slots (power of two) */
    Py_ssize_t cap;
    Py_ssize_t head;        /* index of the front item */
    Py_ssize_t len;         /* items in the ring */
    Py_ssize_t bound;       /* capacity; PY_SSIZE_T_MAX: unbounded */
    Py_ssize_t senders;     /* live, unclosed Sender objects */
    int rx_closed;          /* receiver closed: sends refused */
    int rx_dropped;         /* receiver gone: buffered items dropped too */
    zk_waitlist recvq;
    zk_waitlist sendq;
} zk_chan;

typedef struct {
    PyObject_HEAD
    zk_chan *chan;          /* strong; NULL after tp_clear */
    _Atomic int closed;     /* this sender was closed (counted out) */
    PyObject *weakrefs;
} zk_chan_sender;

typedef struct {
    PyObject_HEAD
    zk_chan *chan;
    _Atomic int closed;
    PyObject *weakrefs;
} zk_chan_receiver;

#include <structmember.h>
static PyMemberDef sender_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(zk_chan_sender, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};
static PyMemberDef receiver_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(zk_chan_receiver, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* A received item not yet awaited: the fast path of recv. */
typedef struct {
    PyObject_HEAD
    _Atomic(PyObject *) value;
    zk_chan *chan;          /* strong: give the item back if never awaited */
} zk_chan_ready;

static inline Py_ssize_t ring_idx(zk_chan *c, Py_ssize_t i) {
    return (c->head + i) & (c->cap - 1);
}

/* Under the lock; the ring has room (len < cap). */
static inline void ring_push_back(zk_chan *c, PyObject *item) {
    c->buf[ring_idx(c, c->len)] = item;
    c->len++;
}

static inline void ring_push_front(zk_chan *c, PyObject *item) {
    c->head = (c->head - 1) & (c->cap - 1);
    c->buf[c->head] = item;
    c->len++;
}

static inline PyObject *ring_pop_front(zk_chan *c) {
    PyObject *item = c->buf[c->head];
    c->buf[c->head] = NULL;
    c->head = (c->head + 1) & (c->cap - 1);
    c->len--;
    return item;
}

/* Lock NOT held.  Make the ring at least `want` slots (a power of two). */
static int chan_grow(zk_chan *c, Py_ssize_t want) {
    PyObject **nb = PyMem_Malloc((size_t)want * sizeof(PyObject *));
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject **old = NULL;
    zk_mutex_lock(&c->lock);
    if (c->cap < want) {
        for (Py_ssize_t i = 0; i < c->len; i++)
            nb[i] = c->buf[ring_idx(c, i)];
        for (Py_ssize_t i = c->len; i < want; i++)
            nb[i] = NULL;
        old = c->buf;
        c->buf = nb;
        c->cap = want;
        c->head = 0;
        nb = NULL;
    }
    zk_mutex_unlock(&c->lock);
    PyMem_Free(nb);
    PyMem_Free(old);
    return 0;
}

static PyObject *new_error(PyObject *cls, const char *msg, PyObject *item) {
    if (cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "zokio.sync channel errors are not registered");
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(cls, "s", msg);
    if (exc == NULL)
        return NULL;
    if (item != NULL && PyObject_SetAttrString(exc, "item", item) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static PyObject *raise_error(PyObject *cls, const char *msg, PyObject *item) {
    PyObject *exc = new_error(cls, msg, item);
    if (exc != NULL) {
        zk_raise_instance(exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The exception a receiver gets when the channel ended. */
static PyObject *closed_exc_for(zk_chan *c, int kind) {
    if (kind == CHAN_RECV_ITER)
        return PyObject_CallNoArgs(PyExc_StopAsyncIteration);
    return new_error(c->st->ChannelClosed, "channel closed: every sender is gone", NULL);
}

static void complete_or_report(zk_waiter *w, PyObject *value, PyObject *exc) {
    if (value == NULL && exc == NULL) {
        /* Could not build the exception: wake with what is raised. */
        exc = zk_fetch_exception();
        if (exc == NULL)
            exc = PyObject_CallNoArgs(PyExc_MemoryError);
    }
    zk_waiter_complete(w, value, exc);
}

/* Wake a batch of popped receivers with the end-of-channel error. */
static void fail_receivers(zk_chan *c, zk_waiter *first) {
    while (first != NULL) {
        zk_waiter *next = first->next;
        first->next = NULL;
        complete_or_report(first, NULL, closed_exc_for(c, first->kind));
        first = next;
    }
}

/* Under the lock: pop every parked receiver, chained through `next`. */
static zk_waiter *pop_all_locked(zk_waitlist *wl) {
    zk_waiter *first = NULL, *last = NULL, *w;
    while ((w = zk_waitlist_pop_locked(wl)) != NULL) {
        w->next = NULL;
        if (last)
            last->next = w;
        else
            first = w;
        last = w;
    }
    return first;
}

/* give_back (waitlist.h) and the Ready's dealloc: return an item to the
 * front of the ring, or hand it to the next parked receiver.  Lock NOT
 * held; steals `item`. */
static void chan_return_item(zk_chan *c, PyObject *item) {
    for (;;) {
        zk_mutex_lock(&c->lock);
        if (c->rx_dropped) {
            zk_mutex_unlock(&c->lock);
            Py_DECREF(item);
            return;
        }
        zk_waiter *r = zk_waitlist_pop_locked(&c->recvq);
        if (r != NULL) {
            r->item = Py_NewRef(item);
            zk_mutex_unlock(&c->lock);
            zk_waiter_complete(r, item, NULL);
            return;
        }
        if (c->len < c->cap) {
            ring_push_front(c, item);
            zk_mutex_unlock(&c->lock);
            return;
        }
        Py_ssize_t want = c->cap * 2;
        zk_mutex_unlock(&c->lock);
        if (chan_grow(c, want) < 0) {
            PyErr_WriteUnraisable((PyObject *)c);
            Py_DECREF(item);
            return;
        }
    }
}

static void chan_give_back(PyObject *owner, zk_waiter *w) {
    if (w->kind != CHAN_RECV && w->kind != CHAN_RECV_ITER)
        return;  /* a sender's grant carries nothing back */
    PyObject *item = w->item;
    if (item == NULL)
        return;
    w->item = NULL;
    chan_return_item((zk_chan *)owner, item);
}

/* ---- the Channel object -------------------------------------------------- */

static int chan_traverse(zk_chan *c, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(c));
    /* The world is stopped (3.13t) or the GIL held by the collector, and no
     * critical section of ours runs Python, so nothing is mid-change. */
    for (Py_ssize_t i = 0; i < c->len; i++)
        Py_VISIT(c->buf[ring_idx(c, i)]);
    for (zk_waiter *w = c->recvq.head; w != NULL; w = w->next)
        Py_VISIT((PyObject *)w);
    for (zk_waiter *w = c->sendq.head; w != NULL; w = w->next)
        Py_VISIT((PyObject *)w);
    return 0;
}

/* Unlink everything; the lists' references and the items are released
 * after unlocking. */
static int chan_clear(zk_chan *c) {
    zk_mutex_lock(&c->lock);
    c->rx_closed = 1;
    c->rx_dropped = 1;
    zk_waiter *rs = pop_all_locked(&c->recvq);
    zk_waiter *ss = pop_all_locked(&c->sendq);
    Py_ssize_t n = c->len;
    PyObject **items = NULL;
    if (n > 0) {
        /* Move the ring out whole: freeing happens below. */
        items = c->buf;
        Py_ssize_t head = c->head, cap = c->cap;
        c->buf = NULL;
        c->cap = 0;
        c->len = 0;
        c->head = 0;
        zk_mutex_unlock(&c->lock);
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(items[(head + i) & (cap - 1)]);
        PyMem_Free(items);
    } else {
        zk_mutex_unlock(&c->lock);
    }
    /* Waiters popped here: complete them so that nothing waits on a dead
     * channel (a sender's item goes back to it in the error). */
    fail_receivers(c, rs);
    while (ss != NULL) {
        zk_waiter *next = ss->next;
        ss->next = NULL;
        complete_or_report(ss, NULL, new_error(c->st->ChannelClosed,
                                               "channel closed: the receiver is gone",
                                               ss->item));
        ss = next;
    }
    return 0;
}

static void chan_dealloc(zk_chan *c) {
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    chan_clear(c);
    PyMem_Free(c->buf);
    zk_mutex_destroy(&c->lock);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static zk_chan *chan_new(zk_state *st, Py_ssize_t bound) {
    zk_chan *c = PyObject_GC_New(zk_chan, st->ChanType);
    if (c == NULL)
        return NULL;
    zk_mutex_init(&c->lock);
    c->st = st;
    Py_ssize_t cap = 16;
    while (cap < bound && cap < 1024)
        cap *= 2;
    c->buf = PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    c->cap = cap;
    c->head = 0;
    c->len = 0;
    c->bound = bound;
    c->senders = 1;
    c->rx_closed = 0;
    c->rx_dropped = 0;
    zk_waitlist_init(&c->recvq, &c->lock, (PyObject *)c, chan_give_back);
    zk_waitlist_init(&c->sendq, &c->lock, (PyObject *)c, NULL);
    PyObject_GC_Track(c);
    if (c->buf == NULL) {
        Py_DECREF(c);
        PyErr_NoMemory();
        return NULL;
    }
    return c;
}

/* ---- shared parts of send and recv ------------------------------------- */

/* Is the running task's coroutine budget spent?  (Consumes one unit.) */
static inline int budget_spent(void) {
    return zk_current_task != NULL && zk_coop_budget-- <= 0;
}

/* The budget is spent and an interrupt (cancel, timeout) waits for the
 * task's next suspension.  The forced yield of a spent budget resumes with
 * its grant before an interrupt (LATER), so a task that never waits for
 * anything else -- a producer on an unbounded channel, a consumer of an
 * endless stream -- would never see its cancel.  Such a send or recv
 * returns a Retry instead (below): it yields once with nothing done, so the
 * interrupt is thrown there, and does the operation only if the task is
 * resumed normally (a cancel scope's shield may defer the interrupt). */
static inline int interrupt_pending(void) {
    zk_task *t = zk_current_task;
    return t != NULL &&
           (atomic_load_explicit(&t->state, memory_order_acquire) & ZK_INTERRUPT) != 0;
}

/* Under the lock: make `w` a waiter granted at once (it was never parked),
 * so that completing it hands the outcome over like any grant. */
static inline void grant_now_locked(zk_waitlist *wl, zk_waiter *w) {
    zk_waitlist_push_locked(wl, w);
    zk_waiter *t = zk_waitlist_take_locked(wl, w);
    (void)t;  /* the list's reference: consumed by zk_waiter_complete */
}

static PyObject *retry_new(zk_chan *c, PyObject *item, int kind);

/* send(item) for async code.  Returns the shared SendDone, a Waiter (parked,
 * or granted when the budget is spent), or NULL with ChannelClosed. */
static PyObject *chan_send(zk_chan *c, PyObject *item, int park, int *would_block) {
    zk_state *st = c->st;
    zk_waiter *w = NULL;
    int spent = park && budget_spent();
    if (spent) {
        if (interrupt_pending())
            return retry_new(c, item, CHAN_SEND);
        w = zk_waiter_new(1, CHAN_SEND);
        if (w == NULL)
            return NULL;
    }
    for (;;) {
        zk_mutex_lock(&c->lock);
        if (c->rx_closed) {
            zk_mutex_unlock(&c->lock);
            Py_XDECREF(w);
            return raise_error(st->ChannelClosed, "channel closed: the receiver is gone", item);
        }
        zk_waiter *r = zk_waitlist_pop_locked(&c->recvq);
        if (r != NULL) {
            /* A receiver waits on an empty channel: hand the item over. */
            r->item = Py_NewRef(item);
            if (w != NULL)
                grant_now_locked(&c->sendq, w);
            zk_mutex_unlock(&c->lock);
            zk_waiter_complete(r, Py_NewRef(item), NULL);
            if (w != NULL) {
                zk_waiter_complete(w, NULL, NULL);
                return (PyObject *)w;
            }
            return Py_NewRef(st->chan_send_done);
        }
        if (c->len < c->bound && c->sendq.head == NULL) {
            if (c->len == c->cap) {
                Py_ssize_t want = c->cap * 2;
                zk_mutex_unlock(&c->lock);
                if (chan_grow(c, want) < 0) {
                    Py_XDECREF(w);
                    return NULL;
                }
                continue;
            }
            ring_push_back(c, Py_NewRef(item));
            if (w != NULL)
                grant_now_locked(&c->sendq, w);
            zk_mutex_unlock(&c->lock);
            if (w != NULL) {
                zk_waiter_complete(w, NULL, NULL);
                return (PyObject *)w;
            }
            return Py_NewRef(st->chan_send_done);
        }
        /* Full (or senders already parked ahead of us). */
        if (!park) {
            zk_mutex_unlock(&c->lock);
            *would_block = 1;
            return NULL;
        }
        if (w != NULL) {
            w->item = Py_NewRef(item);
            zk_waitlist_push_locked(&c->sendq, w);
            zk_mutex_unlock(&c->lock);
            return (PyObject *)w;  /* our reference goes to the caller */
        }
        zk_mutex_unlock(&c->lock);
        w = zk_waiter_new(1, CHAN_SEND);
        if (w == NULL)
            return NULL;
    }
}

static PyObject *ready_new(zk_chan *c, PyObject *item);

/* recv for async code.  kind: CHAN_RECV or CHAN_RECV_ITER.  Returns a Ready
 * (holding the front item), a Waiter (parked, or granted when the budget is
 * spent), or NULL with ChannelClosed (StopAsyncIteration for iteration) or,
 * when !park, NULL with *would_block set. */
static PyObject *chan_recv(zk_chan *c, int kind, int park, int *would_block) {
    zk_waiter *w = NULL;
    int spent = park && budget_spent();
    if (spent) {
        if (interrupt_pending())
            return retry_new(c, NULL, kind);
        w = zk_waiter_new(1, kind);
        if (w == NULL)
            return NULL;
    }
    for (;;) {
        zk_mutex_lock(&c->lock);
        if (c->len > 0) {
            PyObject *item = ring_pop_front(c);
            zk_waiter *s = NULL;
            if (c->sendq.head != NULL && c->len < c->bound) {
                /* A slot is free: the head sender's item moves in (the ring
                 * had room for it a moment ago). */
                s = zk_waitlist_pop_locked(&c->sendq);
                ring_push_back(c, s->item);
                s->item = NULL;
            }
            if (w != NULL) {
                grant_now_locked(&c->recvq, w);
                w->item = Py_NewRef(item);
            }
            zk_mutex_unlock(&c->lock);
            if (s != NULL)
                zk_waiter_complete(s, NULL, NULL);
            if (w != NULL) {
                zk_waiter_complete(w, item, NULL);
                return (PyObject *)w;
            }
            if (!park)
                return item;
            PyObject *r = ready_new(c, item);
            if (r == NULL)
                chan_return_item(c, item);  /* keeps the MemoryError */
            return r;
        }
        if (c->senders == 0 || c->rx_closed) {
            zk_mutex_unlock(&c->lock);
            Py_XDECREF(w);
            if (kind == CHAN_RECV_ITER) {
                PyErr_SetNone(PyExc_StopAsyncIteration);
                return NULL;
            }
            return raise_error(c->st->ChannelClosed,
                               c->senders == 0 ? "channel closed: every sender is gone"
                                               : "channel closed", NULL);
        }
        if (!park) {
            zk_mutex_unlock(&c->lock);
            *would_block = 1;
            return NULL;
        }
        if (w != NULL) {
            zk_waitlist_push_locked(&c->recvq, w);
            zk_mutex_unlock(&c->lock);
            return (PyObject *)w;
        }
        zk_mutex_unlock(&c->lock);
        w = zk_waiter_new(1, kind);
        if (w == NULL)
            return NULL;
    }
}

/* Senders counted out: the last one ends the channel. */
static void chan_sender_gone(zk_chan *c) {
    zk_mutex_lock(&c->lock);
    zk_waiter *rs = NULL;
    if (--c->senders == 0)
        rs = pop_all_locked(&c->recvq);  /* recvq non-empty => nothing buffered */
    zk_mutex_unlock(&c->lock);
    fail_receivers(c, rs);
}

/* The receiver closed (drop: also discard what is buffered).  Parked senders
 * get their items back inside ChannelClosed; parked receivers (other tasks
 * sharing the Receiver) end when nothing is left to receive. */
static void chan_receiver_close(zk_chan *c, int drop) {
    zk_mutex_lock(&c->lock);
    c->rx_closed = 1;
    zk_waiter *ss = pop_all_locked(&c->sendq);
    zk_waiter *rs = NULL;
    if (c->len == 0 || drop)
        rs = pop_all_locked(&c->recvq);
    PyObject **items = NULL;
    Py_ssize_t n = 0, head = 0, cap = 0;
    if (drop) {
        c->rx_dropped = 1;
        if (c->len > 0) {
            /* Take the buffered items out; a fresh empty ring would need an
             * allocation here, so the ring itself leaves (cap 0 = no room:
             * nothing is pushed once rx_dropped is set). */
            items = c->buf;
            n = c->len;
            head = c->head;
            cap = c->cap;
            c->buf = NULL;
            c->cap = 0;
            c->len = 0;
            c->head = 0;
        }
    }
    zk_mutex_unlock(&c->lock);
    while (ss != NULL) {
        zk_waiter *next = ss->next;
        ss->next = NULL;
        complete_or_report(ss, NULL, new_error(c->st->ChannelClosed,
                                               "channel closed: the receiver is gone",
                                               ss->item));
        ss = next;
    }
    fail_receivers(c, rs);
    if (items != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(items[(head + i) & (cap - 1)]);
        PyMem_Free(items);
    }
}

/* ---- Ready: a received item not yet awaited ---------------------------- */

static PyObject *ready_new(zk_chan *c, PyObject *item) {
    zk_chan_ready *r = PyObject_GC_New(zk_chan_ready, c->st->ChanReadyType);
    if (r == NULL)
        return NULL;
    atomic_init(&r->value, item);
    r->chan = (zk_chan *)Py_NewRef(c);
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static PyObject *ready_iternext(zk_chan_ready *self) {
    PyObject *v = atomic_exchange_explicit(&self->value, NULL, memory_order_acq_rel);
    if (v == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this recv() was already awaited");
        return NULL;
    }
    return zk_return_value(v);
}

static int ready_traverse(zk_chan_ready *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(atomic_load_explicit(&self->value, memory_order_relaxed));
    Py_VISIT(self->chan);
    return 0;
}

static int ready_clear(zk_chan_ready *self) {
    PyObject *v = atomic_exchange_explicit(&self->value, NULL, memory_order_acq_rel);
    Py_XDECREF(v);
    Py_CLEAR(self->chan);
    return 0;
}

static void ready_dealloc(zk_chan_ready *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    PyObject *v = atomic_exchange_explicit(&self->value, NULL, memory_order_acq_rel);
    if (v != NULL && self->chan != NULL)
        chan_return_item(self->chan, v);  /* never awaited: nothing is lost */
    else
        Py_XDECREF(v);
    Py_CLEAR(self->chan);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot ready_slots[] = {
    {Py_tp_dealloc, ready_dealloc},
    {Py_tp_traverse, ready_traverse},
    {Py_tp_clear, ready_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, ready_iternext},
    {Py_am_await, PyObject_SelfIter},
    {0, NULL},
};

static PyType_Spec ready_spec = {
    .name = "zokio._native.ChannelRecvReady",
    .basicsize = sizeof(zk_chan_ready),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ready_slots,
};

/* SendDone: the one shared object a send that did not wait returns. */
static PyObject *done_iternext(PyObject *self) {
    ZK_UNUSED(self);
    return NULL;  /* exhausted: the await's value is None */
}

static PyObject *done_repr(PyObject *self) {
    ZK_UNUSED(self);
    return PyUnicode_FromString("<zokio.sync send done>");
}

static void plain_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot done_slots[] = {
    {Py_tp_dealloc, plain_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, done_iternext},
    {Py_am_await, PyObject_SelfIter},
    {Py_tp_repr, done_repr},
    {0, NULL},
};

static PyType_Spec done_spec = {
    .name = "zokio._native.ChannelSendDone",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = done_slots,
};

/* Retry: a send or recv that has not happened yet (see interrupt_pending).
 * First __next__: yield YieldNow, doing nothing.  If the task is resumed
 * (no interrupt was delivered), do the operation and go on as its result
 * (SendDone, Ready or a Waiter, to which later __next__ calls and close()
 * are forwarded).  If the interrupt is thrown instead, it is raised at the
 * await (no `throw` here) and the operation never happens. */
typedef struct {
    PyObject_HEAD
    zk_chan *chan;
    PyObject *item;         /* send: the item; recv: NULL */
    PyObject *inner;        /* the operation's awaitable, once done */
    int kind;
    int yielded;
} zk_chan_retry;

static PyObject *retry_new(zk_chan *c, PyObject *item, int kind) {
    zk_chan_retry *r = PyObject_GC_New(zk_chan_retry, c->st->ChanRetryType);
    if (r == NULL)
        return NULL;
    r->chan = (zk_chan *)Py_NewRef(c);
    r->item = Py_XNewRef(item);
    r->inner = NULL;
    r->kind = kind;
    r->yielded = 0;
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static PyObject *retry_iternext(zk_chan_retry *self) {
    if (self->inner == NULL) {
        zk_task *t = zk_current_task;
        if (!self->yielded && t != NULL) {
            self->yielded = 1;
            zk_suspending = self->chan->st->yield_now;
            return Py_NewRef(self->chan->st->yield_now);
        }
        if (t != NULL)
            t->yield_resume = 0;  /* this call is the resumption of that yield */
        int wb = 0;
        PyObject *r = self->kind == CHAN_SEND
                          ? chan_send(self->chan, self->item, 1, &wb)
                          : chan_recv(self->chan, self->kind, 1, &wb);
        Py_CLEAR(self->item);
        if (r == NULL)
            return NULL;
        self->inner = r;
    }
    return Py_TYPE(self->inner)->tp_iternext(self->inner);
}

static PyObject *retry_close(zk_chan_retry *self, PyObject *Py_UNUSED(ignored)) {
    if (self->inner != NULL && PyObject_HasAttr(self->inner, self->chan->st->str_close))
        return PyObject_CallMethodNoArgs(self->inner, self->chan->st->str_close);
    Py_RETURN_NONE;
}

static int retry_traverse(zk_chan_retry *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->chan);
    Py_VISIT(self->item);
    Py_VISIT(self->inner);
    return 0;
}

static int retry_clear(zk_chan_retry *self) {
    Py_CLEAR(self->item);
    Py_CLEAR(self->inner);
    Py_CLEAR(self->chan);
    return 0;
}

static void retry_dealloc(zk_chan_retry *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    retry_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef retry_methods[] = {
    {"close", (PyCFunction)retry_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot retry_slots[] = {
    {Py_tp_dealloc, retry_dealloc},
    {Py_tp_traverse, retry_traverse},
    {Py_tp_clear, retry_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, retry_iternext},
    {Py_am_await, PyObject_SelfIter},
    {Py_tp_methods, retry_methods},
    {0, NULL},
};

static PyType_Spec retry_spec = {
    .name = "zokio._native.ChannelRetry",
    .basicsize = sizeof(zk_chan_retry),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = retry_slots,
};

/* Channel type (internal). */
static PyType_Slot chan_slots[] = {
    {Py_tp_dealloc, chan_dealloc},
    {Py_tp_traverse, chan_traverse},
    {Py_tp_clear, chan_clear},
    {0, NULL},
};

static PyType_Spec chan_spec = {
    .name = "zokio._native.Channel",
    .basicsize = sizeof(zk_chan),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = chan_slots,
};

/* ---- blocking waits for plain threads ---------------------------------- */

static int refuse_on_worker(const char *what) {
    if (zk_current_worker != NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s() would block a zokio worker thread; use await %s in a task "
                     "(the _blocking variants are for plain threads)", what,
                     what[0] == 's' ? "send()" : "recv()");
        return -1;
    }
    return 0;
}

/* Wait for a parked waiter on a plain thread.  Returns the outcome (new
 * reference; for a receiver the item), or NULL with TimeoutError /
 * KeyboardInterrupt / the channel's error.  `wl` is the list it was parked
 * on. */
static PyObject *block_on_waiter(zk_chan *c, zk_waitlist *wl, zk_waiter *w, int64_t timeout_ns) {
    int r = zk_waiter_block(w, timeout_ns);
    if (r == 1)
        return zk_waiter_take_outcome(w);
    /* Timed out or interrupted by a signal: take it back if still parked. */
    PyObject *pending = r < 0 ? zk_fetch_exception() : NULL;
    zk_waiter *removed = NULL;
    zk_mutex_lock(&c->lock);
    if (w->waiter_state == ZK_WAITER_LINKED)
        removed = zk_waitlist_remove_locked(wl, w);
    zk_mutex_unlock(&c->lock);
    if (removed != NULL) {
        Py_DECREF(removed);  /* the list's reference */
        if (pending != NULL) {
            zk_raise_instance(pending);
            Py_DECREF(pending);
            return NULL;
        }
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return NULL;
    }
    /* Granted at that very moment: the grant is ours; its wake may still be
     * in flight. */
    while ((r = zk_waiter_block(w, -1)) != 1) {
        if (r < 0)
            PyErr_Clear();  /* keep the first interrupt only */
    }
    PyObject *out = zk_waiter_take_outcome(w);
    if (pending == NULL)
        return out;  /* the timeout lost the race: a normal outcome */
    if (out != NULL && w->kind != CHAN_SEND) {
        /* A signal: the message goes back to the front, the signal wins. */
        if (w->item != NULL)
            Py_CLEAR(w->item);
        chan_return_item(c, out);
    } else {
        Py_XDECREF(out);
        PyErr_Clear();
    }
    zk_raise_instance(pending);
    Py_DECREF(pending);
    return NULL;
}

/* ---- Sender ------------------------------------------------------------------ */

static zk_chan *sender_chan(zk_chan_sender *self) {
    if (self->chan == NULL || atomic_load_explicit(&self->closed, memory_order_acquire)) {
        zk_state *st = PyType_GetModuleState(Py_TYPE(self));
        raise_error(st->ChannelClosed, "this sender was closed", NULL);
        return NULL;
    }
    return self->chan;
}

static PyObject *sender_send(zk_chan_sender *self, PyObject *item) {
    zk_chan *c = sender_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    return chan_send(c, item, 1, &wb);
}

static PyObject *sender_try_send(zk_chan_sender *self, PyObject *item) {
    zk_chan *c = sender_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    PyObject *r = chan_send(c, item, 0, &wb);
    if (r != NULL) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    if (wb)
        return raise_error(c->st->QueueFull, "channel full", item);
    return NULL;
}

static PyObject *sender_send_blocking(zk_chan_sender *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"item", "timeout", NULL};
    PyObject *item, *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:send_blocking", kwlist, &item, &timeout))
        return NULL;
    int64_t tns;
    if (zk_timeout_arg_ns(timeout, &tns) < 0 || refuse_on_worker("send_blocking") < 0)
        return NULL;
    zk_chan *c = sender_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    PyObject *r = chan_send(c, item, 0, &wb);
    if (r != NULL) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    if (!wb)
        return NULL;
    zk_waiter *w = zk_waiter_new(1, CHAN_SEND);
    if (w == NULL)
        return NULL;
    /* Park, unless room appeared meanwhile. */
    for (;;) {
        zk_mutex_lock(&c->lock);
        if (c->rx_closed || c->recvq.head != NULL ||
            (c->len < c->bound && c->sendq.head == NULL)) {
            zk_mutex_unlock(&c->lock);
            wb = 0;
            r = chan_send(c, item, 0, &wb);
            if (r != NULL) {
                Py_DECREF(r);
                Py_DECREF(w);
                Py_RETURN_NONE;
            }
            if (!wb) {
                Py_DECREF(w);
                return NULL;
            }
            continue;
        }
        w->item = Py_NewRef(item);
        zk_waitlist_push_locked(&c->sendq, w);
        zk_mutex_unlock(&c->lock);
        break;
    }
    PyObject *out = block_on_waiter(c, &c->sendq, w, tns);
    Py_DECREF(w);
    if (out == NULL)
        return NULL;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyObject *sender_clone(zk_chan_sender *self, PyObject *Py_UNUSED(ignored)) {
    zk_chan *c = sender_chan(self);
    if (c == NULL)
        return NULL;
    zk_chan_sender *n = PyObject_GC_New(zk_chan_sender, Py_TYPE(self));
    if (n == NULL)
        return NULL;
    zk_mutex_lock(&c->lock);
    c->senders++;
    zk_mutex_unlock(&c->lock);
    n->chan = (zk_chan *)Py_NewRef(c);
    atomic_init(&n->closed, 0);
    n->weakrefs = NULL;
    PyObject_GC_Track(n);
    return (PyObject *)n;
}

static void sender_release(zk_chan_sender *self) {
    if (self->chan != NULL &&
        atomic_exchange_explicit(&self->closed, 1, memory_order_acq_rel) == 0)
        chan_sender_gone(self->chan);
}

static PyObject *sender_close(zk_chan_sender *self, PyObject *Py_UNUSED(ignored)) {
    sender_release(self);
    Py_RETURN_NONE;
}

static PyObject *sender_is_closed(zk_chan_sender *self, PyObject *Py_UNUSED(ignored)) {
    if (self->chan == NULL || atomic_load_explicit(&self->closed, memory_order_acquire))
        Py_RETURN_TRUE;
    zk_mutex_lock(&self->chan->lock);
    int closed = self->chan->rx_closed;
    zk_mutex_unlock(&self->chan->lock);
    return PyBool_FromLong(closed);
}

static int sender_traverse(zk_chan_sender *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->chan);
    return 0;
}

static int sender_clear(zk_chan_sender *self) {
    sender_release(self);
    Py_CLEAR(self->chan);
    return 0;
}

static void sender_dealloc(zk_chan_sender *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    sender_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *sender_repr(zk_chan_sender *self) {
    if (self->chan == NULL)
        return PyUnicode_FromString("<zokio.sync.Sender cleared>");
    zk_chan *c = self->chan;
    zk_mutex_lock(&c->lock);
    Py_ssize_t len = c->len, bound = c->bound;
    int rxc = c->rx_closed;
    zk_mutex_unlock(&c->lock);
    int mine = atomic_load_explicit(&self->closed, memory_order_acquire);
    if (bound == PY_SSIZE_T_MAX)
        return PyUnicode_FromFormat("<zokio.sync.Sender unbounded len=%zd%s>", len,
                                    mine ? " closed" : rxc ? " receiver closed" : "");
    return PyUnicode_FromFormat("<zokio.sync.Sender len=%zd capacity=%zd%s>", len, bound,
                                mine ? " closed" : rxc ? " receiver closed" : "");
}

static PyMethodDef sender_methods[] = {
    {"send", (PyCFunction)sender_send, METH_O,
     "send(item) -> awaitable: put item in the channel, waiting while it is full.  "
     "Cancel-safe: a cancelled send sent nothing, unless it already completed."},
    {"try_send", (PyCFunction)sender_try_send, METH_O,
     "try_send(item): send without waiting; QueueFull if full, ChannelClosed if the "
     "receiver is gone."},
    {"send_blocking", (PyCFunction)(void (*)(void))sender_send_blocking,
     METH_VARARGS | METH_KEYWORDS,
     "send_blocking(item, timeout=None): for plain threads; waits detached.  "
     "TimeoutError if no room appeared in time (nothing was sent)."},
    {"clone", (PyCFunction)sender_clone, METH_NOARGS,
     "clone() -> Sender: another sender of the same channel."},
    {"close", (PyCFunction)sender_close, METH_NOARGS,
     "close(): this sender is done; the channel ends when every sender is closed."},
    {"is_closed", (PyCFunction)sender_is_closed, METH_NOARGS,
     "is_closed() -> bool: this sender was closed or the receiver is gone."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sender_slots[] = {
    {Py_tp_doc, "The sending half of a zokio.sync channel."},
    {Py_tp_dealloc, sender_dealloc},
    {Py_tp_traverse, sender_traverse},
    {Py_tp_clear, sender_clear},
    {Py_tp_methods, sender_methods},
    {Py_tp_members, sender_members},
    {Py_tp_repr, sender_repr},
    {0, NULL},
};

static PyType_Spec sender_spec = {
    .name = "zokio.sync.Sender",
    .basicsize = sizeof(zk_chan_sender),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sender_slots,
};

/* ---- Receiver ----------------------------------------------------------------- */

static zk_chan *receiver_chan(zk_chan_receiver *self) {
    if (self->chan == NULL) {
        zk_state *st = PyType_GetModuleState(Py_TYPE(self));
        raise_error(st->ChannelClosed, "channel closed", NULL);
        return NULL;
    }
    return self->chan;
}

static PyObject *receiver_recv(zk_chan_receiver *self, PyObject *Py_UNUSED(ignored)) {
    zk_chan *c = receiver_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    return chan_recv(c, CHAN_RECV, 1, &wb);
}

static PyObject *receiver_anext(zk_chan_receiver *self) {
    if (self->chan == NULL) {
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return NULL;
    }
    int wb = 0;
    return chan_recv(self->chan, CHAN_RECV_ITER, 1, &wb);
}

static PyObject *receiver_try_recv(zk_chan_receiver *self, PyObject *Py_UNUSED(ignored)) {
    zk_chan *c = receiver_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    PyObject *r = chan_recv(c, CHAN_RECV, 0, &wb);
    if (r == NULL && wb)
        return raise_error(c->st->QueueEmpty, "channel empty", NULL);
    return r;
}

static PyObject *receiver_recv_blocking(zk_chan_receiver *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:recv_blocking", kwlist, &timeout))
        return NULL;
    int64_t tns;
    if (zk_timeout_arg_ns(timeout, &tns) < 0 || refuse_on_worker("recv_blocking") < 0)
        return NULL;
    zk_chan *c = receiver_chan(self);
    if (c == NULL)
        return NULL;
    int wb = 0;
    PyObject *r = chan_recv(c, CHAN_RECV, 0, &wb);
    if (r != NULL || !wb)
        return r;
    zk_waiter *w = zk_waiter_new(1, CHAN_RECV);
    if (w == NULL)
        return NULL;
    for (;;) {
        zk_mutex_lock(&c->lock);
        if (c->len > 0 || c->senders == 0 || c->rx_closed) {
            zk_mutex_unlock(&c->lock);
            wb = 0;
            r = chan_recv(c, CHAN_RECV, 0, &wb);
            if (r != NULL || !wb) {
                Py_DECREF(w);
                return r;
            }
            continue;
        }
        zk_waitlist_push_locked(&c->recvq, w);
        zk_mutex_unlock(&c->lock);
        break;
    }
    PyObject *out = block_on_waiter(c, &c->recvq, w, tns);
    if (out != NULL)
        Py_CLEAR(w->item);  /* consumed: nothing to give back */
    Py_DECREF(w);
    return out;
}

static PyObject *receiver_close(zk_chan_receiver *self, PyObject *Py_UNUSED(ignored)) {
    if (self->chan != NULL &&
        atomic_exchange_explicit(&self->closed, 1, memory_order_acq_rel) == 0)
        chan_receiver_close(self->chan, 0);
    Py_RETURN_NONE;
}

static PyObject *receiver_is_closed(zk_chan_receiver *self, PyObject *Py_UNUSED(ignored)) {
    zk_chan *c = self->chan;
    if (c == NULL)
        Py_RETURN_TRUE;
    zk_mutex_lock(&c->lock);
    int closed = c->rx_closed || c->senders == 0;
    zk_mutex_unlock(&c->lock);
    return PyBool_FromLong(closed);
}

static Py_ssize_t receiver_len(zk_chan_receiver *self) {
    zk_chan *c = self->chan;
    if (c == NULL)
        return 0;
    zk_mutex_lock(&c->lock);
    Py_ssize_t n = c->len;
    zk_mutex_unlock(&c->lock);
    return n;
}

static int receiver_traverse(zk_chan_receiver *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->chan);
    return 0;
}

static int receiver_clear(zk_chan_receiver *self) {
    if (self->chan != NULL) {
        atomic_store_explicit(&self->closed, 1, memory_order_release);
        chan_receiver_close(self->chan, 1);
    }
    Py_CLEAR(self->chan);
    return 0;
}

static void receiver_dealloc(zk_chan_receiver *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    receiver_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *receiver_repr(zk_chan_receiver *self) {
    zk_chan *c = self->chan;
    if (c == NULL)
        return PyUnicode_FromString("<zokio.sync.Receiver cleared>");
    zk_mutex_lock(&c->lock);
    Py_ssize_t len = c->len, senders = c->senders;
    int rxc = c->rx_closed;
    zk_mutex_unlock(&c->lock);
    return PyUnicode_FromFormat("<zokio.sync.Receiver len=%zd senders=%zd%s>", len, senders,
                                rxc ? " closed" : "");
}

static PyMethodDef receiver_methods[] = {
    {"recv", (PyCFunction)receiver_recv, METH_NOARGS,
     "recv() -> awaitable: the next item, waiting while the channel is empty; "
     "ChannelClosed once every sender is gone and the buffer is drained.  "
     "Cancel-safe: a cancelled recv loses no item."},
    {"try_recv", (PyCFunction)receiver_try_recv, METH_NOARGS,
     "try_recv(): the next item without waiting; QueueEmpty or ChannelClosed."},
    {"recv_blocking", (PyCFunction)(void (*)(void))receiver_recv_blocking,
     METH_VARARGS | METH_KEYWORDS,
     "recv_blocking(timeout=None): for plain threads; waits detached."},
    {"close", (PyCFunction)receiver_close, METH_NOARGS,
     "close(): refuse further sends; buffered items can still be received."},
    {"is_closed", (PyCFunction)receiver_is_closed, METH_NOARGS,
     "is_closed() -> bool: closed, or every sender is gone."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot receiver_slots[] = {
    {Py_tp_doc, "The receiving half of a zokio.sync channel."},
    {Py_tp_dealloc, receiver_dealloc},
    {Py_tp_traverse, receiver_traverse},
    {Py_tp_clear, receiver_clear},
    {Py_tp_methods, receiver_methods},
    {Py_tp_members, receiver_members},
    {Py_tp_repr, receiver_repr},
    {Py_am_aiter, PyObject_SelfIter},
    {Py_am_anext, receiver_anext},
    {Py_sq_length, receiver_len},
    {Py_mp_length, receiver_len},
    {0, NULL},
};

static PyType_Spec receiver_spec = {
    .name = "zokio.sync.Receiver",
    .basicsize = sizeof(zk_chan_receiver),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = receiver_slots,
};

/* ---- module functions ------------------------------------------------------ */

/* mpsc_channel(capacity) -> (Sender, Receiver); capacity None: unbounded. */
static PyObject *mod_mpsc_channel(PyObject *module, PyObject *arg) {
    zk_state *st = PyModule_GetState(module);
    Py_ssize_t bound = PY_SSIZE_T_MAX;
    if (arg != Py_None) {
        if (!PyLong_Check(arg) || PyBool_Check(arg)) {
            PyErr_Format(PyExc_TypeError, "channel capacity must be an int, not %.100s",
                         Py_TYPE(arg)->tp_name);
            return NULL;
        }
        bound = PyLong_AsSsize_t(arg);
        if (bound == -1 && PyErr_Occurred())
            return NULL;
        if (bound < 1) {
            PyErr_SetString(PyExc_ValueError, "channel capacity must be at least 1");
            return NULL;
        }
    }
    zk_chan *c = chan_new(st, bound);
    if (c == NULL)
        return NULL;
    zk_chan_sender *tx = PyObject_GC_New(zk_chan_sender, st->ChanSenderType);
    if (tx == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    tx->chan = (zk_chan *)Py_NewRef(c);
    atomic_init(&tx->closed, 0);
    tx->weakrefs = NULL;
    PyObject_GC_Track(tx);
    zk_chan_receiver *rx = PyObject_GC_New(zk_chan_receiver, st->ChanReceiverType);
    if (rx == NULL) {
        Py_DECREF(tx);
        Py_DECREF(c);
        return NULL;
    }
    rx->chan = c;  /* our reference moves here */
    atomic_init(&rx->closed, 0);
    rx->weakrefs = NULL;
    PyObject_GC_Track(rx);
    PyObject *pair = PyTuple_Pack(2, (PyObject *)tx, (PyObject *)rx);
    Py_DECREF(tx);
    Py_DECREF(rx);
    return pair;
}

/* _channel_errors(ChannelClosed, QueueFull, QueueEmpty): zokio.sync._errors
 * hands its exception classes to the native channels at import. */
static PyObject *mod_channel_errors(PyObject *module, PyObject *args) {
    zk_state *st = PyModule_GetState(module);
    PyObject *closed, *full, *empty;
    if (!PyArg_ParseTuple(args, "OOO:_channel_errors", &closed, &full, &empty))
        return NULL;
    PyObject *all[3] = {closed, full, empty};
    for (int i = 0; i < 3; i++) {
        if (!PyExceptionClass_Check(all[i])) {
            PyErr_SetString(PyExc_TypeError, "_channel_errors() takes exception classes");
            return NULL;
        }
    }
    /* Set once at import; later calls (a reload) keep the first classes
     * alive, since a worker may be reading them. */
    if (st->ChannelClosed == NULL) {
        st->QueueFull = Py_NewRef(full);
        st->QueueEmpty = Py_NewRef(empty);
        st->ChannelClosed = Py_NewRef(closed);
    }
    Py_RETURN_NONE;
}

static PyMethodDef channel_functions[] = {
    {"mpsc_channel", mod_mpsc_channel, METH_O,
     "mpsc_channel(capacity) -> (Sender, Receiver); None: unbounded."},
    {"_channel_errors", mod_channel_errors, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int zk_channel_types_init(PyObject *module, zk_state *st) {
#define MAKE(field, spec)                                                              \
    do {                                                                               \
        st->field = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);     \
        if (st->field == NULL)                                                         \
            return -1;                                                                 \
    } while (0)
    MAKE(ChanType, chan_spec);
    MAKE(ChanSenderType, sender_spec);
    MAKE(ChanReceiverType, receiver_spec);
    MAKE(ChanReadyType, ready_spec);
    MAKE(ChanSendDoneType, done_spec);
    MAKE(ChanRetryType, retry_spec);
#undef MAKE
    st->chan_send_done = PyType_GenericAlloc(st->ChanSendDoneType, 0);
    if (st->chan_send_done == NULL)
        return -1;
    zk_immortalize((PyObject *)st->ChanSenderType);
    zk_immortalize((PyObject *)st->ChanReceiverType);
    zk_immortalize((PyObject *)st->ChanReadyType);
    zk_immortalize((PyObject *)st->ChanType);
    zk_immortalize((PyObject *)st->ChanSendDoneType);
    zk_immortalize((PyObject *)st->ChanRetryType);
    zk_immortalize(st->chan_send_done);
    if (PyModule_AddObjectRef(module, "ChannelSender", (PyObject *)st->ChanSenderType) < 0 ||
        PyModule_AddObjectRef(module, "ChannelReceiver", (PyObject *)st->ChanReceiverType) < 0)
        return -1;
    return PyModule_AddFunctions(module, channel_functions);
}

int zk_channel_state_traverse(zk_state *st, visitproc visit, void *arg) {
    Py_VISIT(st->ChanType);
    Py_VISIT(st->ChanSenderType);
    Py_VISIT(st->ChanReceiverType);
    Py_VISIT(st->ChanReadyType);
    Py_VISIT(st->ChanSendDoneType);
    Py_VISIT(st->ChanRetryType);
    Py_VISIT(st->chan_send_done);
    Py_VISIT(st->ChannelClosed);
    Py_VISIT(st->QueueFull);
    Py_VISIT(st->QueueEmpty);
    return 0;
}

void zk_channel_state_clear(zk_state *st) {
    Py_CLEAR(st->ChanType);
    Py_CLEAR(st->ChanSenderType);
    Py_CLEAR(st->ChanReceiverType);
    Py_CLEAR(st->ChanReadyType);
    Py_CLEAR(st->ChanSendDoneType);
    Py_CLEAR(st->ChanRetryType);
    Py_CLEAR(st->chan_send_done);
    Py_CLEAR(st->ChannelClosed);
    Py_CLEAR(st->QueueFull);
    Py_CLEAR(st->QueueEmpty);
}
