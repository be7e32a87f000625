/* op_leaf.h -- the Op leaf: an op record (port.h) awaited by a task.
 *
 * Awaiting an Op submits it to the completion port of the worker polling
 * the task; the port's completion wakes the task through the leaf's waker
 * (core/leaf.h).  What the op does -- how each backend runs it, what Python
 * passes in and gets back -- is its row in the descriptor table (op.h);
 * this file is the same for every op.
 */
#ifndef ZOKIO_OP_LEAF_H
#define ZOKIO_OP_LEAF_H

#include "core/leaf.h"
#include "io/op.h"
#include "io/port.h"

struct zk_io_op {
    zk_leaf leaf;
    zk_op op;
    Py_buffer view;          /* pinned until the op's own completion */
    PyObject *own_buf;       /* a buffer object pin made for the op (READ: the
                                bytearray it fills); NULL when the op uses
                                the caller's buffer */
    zk_state *st;            /* the module state (Cancelled, ...) */
    zk_worker *worker;       /* port it was submitted to */
    int eager_tried;         /* the row's attempt was made at first await */
    /* In flight: linked in the process-wide registry of ops by fd (op_leaf.c)
     * so that a CLOSE on another worker can end it. */
    zk_io_op *reg_next, *reg_prev;
    int reg_linked;
    _Atomic int closed_by_close;  /* a CLOSE of its fd on another worker
                                     asked its port to cancel it */
    int submitted;           /* in flight; written by the owning worker */
    int view_held;
    int cancel_requested;    /* an interrupt asked the port to cancel it */
    int ended_by_cancel;     /* its completion was -ECANCELED */
    /* The byte-stream fast path (stream.h); all NULL/0 for a plain op. */
    PyObject *stream;        /* the SocketStream it reads or writes */
    PyObject *stream_token;  /* the stream's BusyToken, held while token_held */
    PyObject *stream_data;   /* write_all: the data, for a partial send's rest */
    PyObject *stream_delegate;  /* write_all after a partial send: the
                                   coroutine that sends the rest */
    Py_ssize_t stream_total; /* write_all: bytes to send */
    uint8_t stream_mode;     /* ZK_STREAM_* */
    uint8_t token_held;
    uint8_t stream_delivered;  /* the outcome went to the awaiting task */
};

/* What Python passed to an op binding; each row's pin reads the fields it
 * needs (borrowed references, valid during zk_io_op_new). */
struct zk_op_args {
    PyObject *arg;      /* READ/RECV: a size; WRITE/SEND/RECV_INTO/SENDMSG:
                           a buffer; else unused (NULL) */
    PyObject *address;  /* CONNECT, SENDMSG: an address in the socket
                           module's form, or NULL/None */
    int64_t offset;     /* READ/WRITE: file offset (-1: the position);
                           RECV_INTO/SEND: start in the buffer */
    int flags;          /* MSG_* flags, poll bits, shutdown's `how` */
};

/* End every op in flight on fd, on every worker, with -EBADF (as if the fd
 * had been closed under them); the fd itself stays open.  Any thread,
 * attached.  For fds that have no shutdown(2) to wake a pending op (pipes). */
void zk_op_cancel_fd(int fd);

/* Create the Op type, register its awaitable kind.  Module init. */
int zk_op_leaf_type_init(PyObject *module, zk_state *st);
/* An Op for `opcode` on fd, its arguments pinned by the row's pin. */
PyObject *zk_io_op_new(zk_state *st, zk_opcode opcode, int fd, const zk_op_args *args);

#endif
