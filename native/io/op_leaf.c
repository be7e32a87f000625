/* op_leaf.c -- the Op leaf (op_leaf.h): its Python type, its awaitable kind,
 * and the completion callback the port runs.  Nothing here depends on the
 * opcode: the row of zk_op_descs (op.c) pins the arguments and makes the
 * result. */
#include "io/op_leaf.h"
#include "io/stream.h"
#include "core/sched.h"
#include "io/port.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <string.h>

static void io_op_complete(zk_op *op, int64_t result);
static PyObject *io_op_iternext(zk_io_op *self);

static void io_op_release_buffer(zk_io_op *self) {
    if (self->view_held) {
        PyBuffer_Release(&self->view);
        self->view_held = 0;
    }
}

static void io_op_dealloc(zk_io_op *self) {
    /* In flight, the port's reference keeps us alive: never reached then. */
    PyObject_GC_UnTrack(self);
    if (self->stream_mode != 0 || self->stream != NULL)
        zk_stream_op_clear(self);  /* may run Python: a write_all's rest closing */
    io_op_release_buffer(self);
    Py_CLEAR(self->own_buf);
    if (self->op.buf_owned)
        free(self->op.buf);
    zk_leaf_dealloc(&self->leaf);
}

static int io_op_traverse(zk_io_op *self, visitproc visit, void *arg) {
    Py_VISIT(self->own_buf);
    if (zk_stream_op_traverse(self, visit, arg) < 0)
        return -1;
    return zk_leaf_traverse(&self->leaf, visit, arg);
}

static PyObject *io_op_repr(zk_io_op *self) {
    return PyUnicode_FromFormat("<zokio.Op %s fd=%d %s>", zk_op_descs[self->op.opcode].name,
                                self->op.fd, zk_leaf_is_done(&self->leaf) ? "done" : "pending");
}

static int io_op_clear(zk_io_op *self) {
    zk_stream_op_clear(self);
    return zk_leaf_clear(&self->leaf);
}

static PyObject *io_op_throw(zk_io_op *self, PyObject *const *args, Py_ssize_t nargs) {
    return zk_stream_op_throw(self, args, nargs);
}

static PyObject *io_op_close(zk_io_op *self, PyObject *Py_UNUSED(ignored)) {
    return zk_stream_op_close(self);
}

/* throw and close: what `await op` passes on when its coroutine is thrown
 * into or closed; only a stream op (stream.h) has anything to do then. */
static PyMethodDef io_op_methods[] = {
    {"throw", (PyCFunction)(void (*)(void))io_op_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)io_op_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot io_op_slots[] = {
    {Py_tp_methods, io_op_methods},
    {Py_tp_dealloc, io_op_dealloc},
    {Py_tp_traverse, io_op_traverse},
    {Py_tp_clear, io_op_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, io_op_iternext},
    {Py_am_await, zk_leaf_await},
    {Py_tp_repr, io_op_repr},
    {0, NULL},
};

static PyType_Spec io_op_spec = {
    .name = "zokio._native.Op",
    .basicsize = sizeof(zk_io_op),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = io_op_slots,
};

PyObject *zk_io_op_new(zk_state *st, zk_opcode opcode, int fd, const zk_op_args *args) {
    const zk_op_desc *desc = zk_op_desc_of(opcode);
    if (desc == NULL) {
        PyErr_Format(PyExc_ValueError, "unknown opcode %d", (int)opcode);
        return NULL;
    }
    if (fd < 0 && fd != AT_FDCWD) {  /* path ops (OPENAT...) may name the cwd */
        PyErr_Format(PyExc_ValueError, "invalid file descriptor %d", fd);
        return NULL;
    }
    zk_io_op *self = PyObject_GC_New(zk_io_op, st->OpType);
    if (self == NULL)
        return NULL;
    zk_leaf_init(&self->leaf);
    memset(&self->op, 0, sizeof(self->op));
    self->own_buf = NULL;
    self->st = st;
    self->worker = NULL;
    self->eager_tried = 0;
    self->reg_next = self->reg_prev = NULL;
    self->reg_linked = 0;
    atomic_init(&self->closed_by_close, 0);
    self->submitted = 0;
    self->view_held = 0;
    self->cancel_requested = 0;
    self->ended_by_cancel = 0;
    self->stream = self->stream_token = self->stream_data = self->stream_delegate = NULL;
    self->stream_total = 0;
    self->stream_mode = self->token_held = self->stream_delivered = 0;
    self->op.opcode = opcode;
    self->op.fd = fd;
    self->op.offset = -1;
    self->op.flags = args->flags;
    self->op.complete = io_op_complete;
    PyObject_GC_Track(self);
    if (desc->pin(self, args) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void io_op_finish(zk_io_op *self, zk_state *st, int64_t result);

/* ---- the registry of ops in flight, by fd ------------------------------------
 *
 * A port ends its own ops on an fd when a CLOSE of that fd runs on it (op.h:
 * closes_fd), but an fd used by tasks on several workers has ops in other
 * ports too: io_uring would keep those pending (they hold the file), epoll
 * would strand them (the registration goes with the file).  So every op in
 * flight is linked here, in one of ZK_FD_STRIPES lists chosen by its fd,
 * from its submit to its completion (both on its worker).  A CLOSE about to
 * be submitted asks the worker of each op on the same fd elsewhere to cancel
 * it (the scheduler's mailbox); such an op ends with OSError(EBADF), like
 * those of the closing worker's own port.  The close does not wait for them:
 * io_uring cancels by request (the file lives on until then), epoll unlinks
 * the op from its queue. */
#define ZK_FD_STRIPES 64

static struct {
    zk_mutex lock;
    zk_io_op *head;
} fd_registry[ZK_FD_STRIPES];

static void registry_init(void) {
    static int done;
    if (!done) {
        for (int i = 0; i < ZK_FD_STRIPES; i++)
            zk_mutex_init(&fd_registry[i].lock);
        done = 1;
    }
}

static inline unsigned stripe_of(int fd) {
    return (unsigned)fd % ZK_FD_STRIPES;
}

static void registry_link(zk_io_op *op) {
    unsigned i = stripe_of(op->op.fd);
    zk_mutex_lock(&fd_registry[i].lock);
    op->reg_prev = NULL;
    op->reg_next = fd_registry[i].head;
    if (op->reg_next)
        op->reg_next->reg_prev = op;
    fd_registry[i].head = op;
    op->reg_linked = 1;
    zk_mutex_unlock(&fd_registry[i].lock);
}

static void registry_unlink(zk_io_op *op) {
    if (!op->reg_linked)
        return;
    unsigned i = stripe_of(op->op.fd);
    zk_mutex_lock(&fd_registry[i].lock);
    if (op->reg_prev)
        op->reg_prev->reg_next = op->reg_next;
    else
        fd_registry[i].head = op->reg_next;
    if (op->reg_next)
        op->reg_next->reg_prev = op->reg_prev;
    op->reg_next = op->reg_prev = NULL;
    op->reg_linked = 0;
    zk_mutex_unlock(&fd_registry[i].lock);
}

/* Cancel the ops in flight on fd, except those on worker `skip`, from
 * worker w (NULL: a plain thread); they complete with -EBADF.  References
 * are taken under the lock (a linked op is alive: its port holds it) and
 * the cancels are sent outside it. */
static void registry_cancel_fd(zk_worker *w, zk_worker *skip, int fd) {
    unsigned i = stripe_of(fd);
    zk_io_op *found[16];
    for (;;) {
        int n = 0, more = 0;
        zk_mutex_lock(&fd_registry[i].lock);
        for (zk_io_op *o = fd_registry[i].head; o; o = o->reg_next) {
            if (o->op.fd != fd || (skip != NULL && o->worker == skip) ||
                atomic_load_explicit(&o->closed_by_close, memory_order_relaxed))
                continue;
            if (n == 16) {
                more = 1;
                break;
            }
            atomic_store_explicit(&o->closed_by_close, 1, memory_order_relaxed);
            Py_INCREF(o);
            found[n++] = o;
        }
        zk_mutex_unlock(&fd_registry[i].lock);
        for (int k = 0; k < n; k++) {
            zk_worker_cancel_op(w, found[k]->worker, (PyObject *)found[k], &found[k]->op);
            Py_DECREF(found[k]);
        }
        if (!more)
            return;
    }
}

/* Before a CLOSE of fd runs on worker w: cancel the ops on fd in flight on
 * other workers (the CLOSE's own cancel reaches those on w's ring). */
static void registry_close_fd(zk_worker *w, int fd) {
    registry_cancel_fd(w, w, fd);
}

void zk_op_cancel_fd(int fd) {
    registry_cancel_fd(zk_current_worker, NULL, fd);
}

/* The port calls this exactly once per submitted op, on the owning worker,
 * attached.  Only now may the pinned buffer be released. */
static void io_op_complete(zk_op *op, int64_t result) {
    zk_io_op *self = (zk_io_op *)((char *)op - offsetof(zk_io_op, op));
    zk_worker *w = self->worker;
    zk_state *st = zk_sched_state(zk_worker_sched(w));
    registry_unlink(self);
    /* Cancelled for a CLOSE elsewhere, not for its own task: the fd was
     * closed under it. */
    if (result == -ECANCELED && !self->cancel_requested &&
        atomic_load_explicit(&self->closed_by_close, memory_order_relaxed))
        result = -EBADF;
    self->submitted = 0;
    self->ended_by_cancel = (result == -ECANCELED);
    zk_worker_count_op(w);
    io_op_finish(self, st, result);
    Py_DECREF(self);  /* the port's in-flight reference */
}

/* The outcome of the op (from the port, or from the eager attempt): release
 * the pinned buffer, make the value or the exception, complete the leaf. */
static void io_op_finish(zk_io_op *self, zk_state *st, int64_t result) {
    zk_op *op = &self->op;
    io_op_release_buffer(self);
    PyObject *value = NULL, *exc = NULL;
    if (result < 0) {
        int err = (int)-result;
        if (err == ECANCELED)
            exc = PyObject_CallOneArg(st->Cancelled, Py_None);
        else
            exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    } else {
        value = zk_op_descs[op->opcode].to_python(self, result);
    }
    Py_CLEAR(self->own_buf);
    if (op->buf_owned) {
        free(op->buf);
        op->buf_owned = 0;
    }
    op->buf = NULL;  /* scratch or a provided buffer: not ours past here */
    if (value == NULL && exc == NULL)
        exc = zk_fetch_exception();
    zk_leaf_complete(st, &self->leaf, value, exc);
}

/* Which eager rows try at first await: bit 1 rows that wait for input
 * (recv, accept, ...), bit 2 rows that wait for output (send, sendmsg).
 * Measured with 64-byte messages over socketpairs on one worker: on epoll
 * it saves ~45% CPU per message when a connection has several messages in
 * flight and costs nothing in request/response, so both bits are on; on
 * io_uring request/response over 16 connections cost 20-50% more CPU with
 * it (one io_uring_enter for a whole pass beats a syscall per op), so it is
 * off there.  ZOKIO_EAGER_IO=0..3 (read once at module init) overrides
 * both, for measurements. */
static int eager_override = -1;

static inline int eager_mask(void) {
    if (eager_override >= 0)
        return eager_override;
    zk_port *port = zk_port_current();
    return port != NULL && zk_port_backend(port) == ZK_BACKEND_EPOLL ? 3 : 0;
}

/* __next__: the first time a task awaits an op whose row is eager, make
 * the row's attempt here.  Anything but EAGAIN is the outcome, and the task
 * goes on without suspending; EAGAIN leaves the op to the port (which then
 * waits for readiness without trying again: op.tried). */
static PyObject *io_op_iternext(zk_io_op *self) {
    if (!self->eager_tried && zk_current_task != NULL) {
        self->eager_tried = 1;
        const zk_op_desc *d = &zk_op_descs[self->op.opcode];
        int bit = d->epoll_events & EPOLLOUT ? 2 : 1;
        int64_t r = -EAGAIN;
        if (d->uring_multishot && !self->submitted && !zk_leaf_is_done(&self->leaf)) {
            /* io_uring: a connection the port already took for this
             * listener, now rather than at the next reap */
            int fd = zk_port_take_queued(zk_port_current(), &self->op);
            if (fd >= 0)
                r = fd;
        }
        if (r == -EAGAIN && d->eager && (eager_mask() & bit) && !self->submitted &&
            !zk_leaf_is_done(&self->leaf)) {
            self->op.attached = 1;
            r = d->attempt(&self->op);
            self->op.attached = 0;
            if (r == -EAGAIN)
                self->op.tried = 1;
        }
        if (r != -EAGAIN)
            io_op_finish(self, self->st, r);
    }
    if (self->stream_mode != ZK_STREAM_NONE)
        return zk_stream_op_next(self);
    return zk_leaf_iternext(&self->leaf);
}

/* ---- the Op as an awaitable kind (core/leaf.h) ------------------------------ */

/* Cancel the op if it is in flight, on whichever worker submitted it. */
static void io_op_cancel(zk_worker *current, zk_io_op *op) {
    if (op->worker == NULL || !op->submitted)
        return;
    zk_worker_cancel_op(current, op->worker, (PyObject *)op, &op->op);
}

static int io_op_ready(PyObject *obj) {
    return zk_leaf_is_done(&((zk_io_op *)obj)->leaf);
}

static int io_op_register(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    zk_io_op *op = (zk_io_op *)obj;
    if (zk_leaf_register_waker(&op->leaf, task) < 0)
        return -1;
    if (!zk_leaf_is_done(&op->leaf) && !op->submitted) {
        op->worker = w;
        op->submitted = 1;
        Py_INCREF(op);  /* the port's in-flight reference */
        if (zk_op_descs[op->op.opcode].closes_fd)
            registry_close_fd(w, op->op.fd);
        int err = zk_port_submit(zk_worker_port(w), &op->op);
        if (err == 0)
            registry_link(op);  /* completes later, never inside submit */
        if (err != 0) {
            op->submitted = 0;
            io_op_release_buffer(op);
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
            if (exc == NULL)
                exc = zk_fetch_exception();
            zk_leaf_complete(st, &op->leaf, NULL, exc);
            Py_DECREF(op);
        }
    }
    return 0;
}

static int io_op_interrupt_mode(zk_state *st, zk_worker *w, PyObject *obj) {
    ZK_UNUSED(st);
    zk_io_op *op = (zk_io_op *)obj;
    if (!zk_leaf_is_done(&op->leaf)) {
        if (!op->cancel_requested) {
            op->cancel_requested = 1;
            io_op_cancel(w, op);
        }
        return ZK_INTERRUPT_WAIT;
    }
    return op->ended_by_cancel ? ZK_INTERRUPT_NOW : ZK_INTERRUPT_LATER;
}

static void io_op_unregister(zk_state *st, zk_worker *w, zk_task *task, PyObject *obj) {
    ZK_UNUSED(st), ZK_UNUSED(task);
    zk_io_op *op = (zk_io_op *)obj;
    zk_leaf_unregister_waker(&op->leaf);
    io_op_cancel(w, op);
}

static const zk_leaf_ops io_op_ops = {
    .ready = io_op_ready,
    .register_waker = io_op_register,
    .unregister = io_op_unregister,
    .interrupt_mode = io_op_interrupt_mode,
};

int zk_op_leaf_type_init(PyObject *module, zk_state *st) {
    registry_init();
    const char *eager = getenv("ZOKIO_EAGER_IO");
    eager_override = eager && *eager ? atoi(eager) & 3 : -1;
    st->OpType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &io_op_spec, NULL);
    if (st->OpType == NULL)
        return -1;
    zk_immortalize((PyObject *)st->OpType);
    return zk_leaf_kind_add(st, st->OpType, &io_op_ops);
}
