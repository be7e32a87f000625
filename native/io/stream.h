/* stream.h -- the byte-stream fast path of zokio.net (stream.c).
 *
 * SocketStream.read, readinto, write and write_all are native methods that
 * return the Op itself, with the stream's busy token taken: no Python
 * coroutine per call, so an echo round trip runs no Python frame of
 * zokio's.  The Op then carries what the Python method's `finally` used to
 * do (give the token back, finish a close that happened meanwhile, put the
 * address into an error), done when the awaiting task takes the outcome.
 * Everything unusual (buffered bytes, a closed stream, a busy token, a
 * partial write_all) goes to the Python methods of zokio/net/_stream.py.
 */
#ifndef ZOKIO_STREAM_H
#define ZOKIO_STREAM_H

#include "io/op_leaf.h"

/* What a stream op does with its outcome (zk_io_op.stream_mode). */
enum {
    ZK_STREAM_NONE = 0,      /* a plain op */
    ZK_STREAM_READ = 1,      /* read/readinto: b"" or 0 on a closed stream
                                is an error, not end of stream */
    ZK_STREAM_WRITE = 2,     /* write: the count */
    ZK_STREAM_WRITE_ALL = 3, /* write_all: None; a partial send goes on in
                                Python (_write_rest) */
};

/* __next__ of an Op with stream_mode set (op_leaf.c calls it after the
 * eager attempt). */
PyObject *zk_stream_op_next(zk_io_op *self);
/* Op.throw() and Op.close(), which a coroutine awaiting the op calls when
 * it is thrown into or closed: for a stream op, end it as taking its
 * outcome would (token, pending close) or pass it to write_all's rest;
 * for any op, then re-raise (throw) or return None (close). */
PyObject *zk_stream_op_throw(zk_io_op *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *zk_stream_op_close(zk_io_op *self);
/* Give the token back if the op still holds it, and drop the stream
 * fields.  Dealloc and tp_clear. */
void zk_stream_op_clear(zk_io_op *self);
int zk_stream_op_traverse(zk_io_op *self, visitproc visit, void *arg);

/* BusyToken type and stream_install(); module init. */
int zk_stream_types_init(PyObject *module, zk_state *st);

#endif
