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
    zk_worker *worker;       /* port it was submitted to */
    int submitted;           /* in flight; written by the owning worker */
    int view_held;
    int cancel_requested;    /* an interrupt asked the port to cancel it */
    int ended_by_cancel;     /* its completion was -ECANCELED */
};

/* Create the Op type, register its awaitable kind.  Module init. */
int zk_op_leaf_type_init(PyObject *module, zk_state *st);
/* An Op for `opcode` on fd; `arg` is what the row's pin takes (a size for
 * READ, a bytes-like object for WRITE).  offset -1: the fd's position. */
PyObject *zk_io_op_new(zk_state *st, zk_opcode opcode, int fd, PyObject *arg, int64_t offset);

#endif
