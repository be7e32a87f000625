/* op.c -- the descriptor table (op.h): one row per opcode, and the small
 * functions the rows point at.
 *
 * Read and write share everything but direction: one SQE preparation
 * (prep_rw), one syscall helper, and a buffer the kernel writes into (READ:
 * a bytearray made here) or reads from (WRITE: the caller's bytes-like
 * object, pinned through the buffer protocol).
 */
#define _GNU_SOURCE
#include "io/op.h"
#include "io/op_leaf.h"
#include "io/port.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <sys/epoll.h>
#include <unistd.h>

/* Largest count a single read/write moves on Linux (MAX_RW_COUNT). */
#define ZK_MAX_RW 0x7ffff000u

static size_t rw_len(const zk_op *op) {
    return op->len > ZK_MAX_RW ? ZK_MAX_RW : op->len;
}

/* ---- io_uring ----------------------------------------------------------- */

/* fd, buffer, length and offset of a read or write.  With FEAT_RW_CUR_POS
 * (5.6, required by the probe), off = -1 means "the file position", which
 * is what op->offset == -1 asks for. */
static void prep_rw(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = (uint64_t)(uintptr_t)op->buf;
    sqe->len = (uint32_t)rw_len(op);
    sqe->off = op->offset >= 0 ? (uint64_t)op->offset : (uint64_t)-1;
}

/* ---- epoll: the non-blocking attempt ------------------------------------ */

static int64_t syscall_result(ssize_t n) {
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return n;
}

static int64_t attempt_read(const zk_op *op) {
    ssize_t n;
    do {
        n = op->offset >= 0 ? pread(op->fd, op->buf, rw_len(op), op->offset)
                            : read(op->fd, op->buf, rw_len(op));
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_write(const zk_op *op) {
    ssize_t n;
    do {
        n = op->offset >= 0 ? pwrite(op->fd, op->buf, rw_len(op), op->offset)
                            : write(op->fd, op->buf, rw_len(op));
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

/* ---- Python: arguments in, result out ------------------------------------ */

/* Point the op at the memory of the view pinned in self->view. */
static void use_view(zk_io_op *self) {
    self->view_held = 1;
    self->op.buf = self->view.buf;
    self->op.len = (size_t)self->view.len;
}

/* arg: the number of bytes to read, into a bytearray made for the op. */
static int pin_read(zk_io_op *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "read size must be >= 0");
        return -1;
    }
    self->own_buf = PyByteArray_FromStringAndSize(NULL, n);
    if (self->own_buf == NULL ||
        PyObject_GetBuffer(self->own_buf, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    use_view(self);
    return 0;
}

/* The bytes read: a copy of the filled part of the bytearray. */
static PyObject *read_to_python(zk_io_op *self, int64_t result) {
    return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self->own_buf), (Py_ssize_t)result);
}

/* arg: any bytes-like object, pinned as it is (no copy). */
static int pin_write(zk_io_op *self, PyObject *arg) {
    if (PyObject_GetBuffer(arg, &self->view, PyBUF_SIMPLE) < 0)
        return -1;
    use_view(self);
    return 0;
}

/* The number of bytes written. */
static PyObject *written_to_python(zk_io_op *self, int64_t result) {
    ZK_UNUSED(self);
    return PyLong_FromLongLong(result);
}

/* ---- the table ------------------------------------------------------------ */

const zk_op_desc zk_op_descs[ZK_OP_COUNT] = {
    [ZK_OP_READ] = {
        .name = "read",
        .uring_opcode = IORING_OP_READ,
        .uring_prep = prep_rw,
        .attempt = attempt_read,
        .epoll_events = EPOLLIN,
        .pin = pin_read,
        .to_python = read_to_python,
    },
    [ZK_OP_WRITE] = {
        .name = "write",
        .uring_opcode = IORING_OP_WRITE,
        .uring_prep = prep_rw,
        .attempt = attempt_write,
        .epoll_events = EPOLLOUT,
        .pin = pin_write,
        .to_python = written_to_python,
    },
};
