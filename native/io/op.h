/* op.h -- one descriptor per opcode: everything that differs between ops.
 *
 * An op is one row of zk_op_descs (op.c).  The row says, for its opcode:
 *   uring_opcode, uring_prep   how io_uring runs it: the SQE's opcode (which
 *                              the availability probe in port.c also checks)
 *                              and how the rest of the SQE is filled
 *   attempt, epoll_events      how the epoll backend emulates it: the plain
 *                              non-blocking syscall, tried at submit and again
 *                              on readiness, and the readiness it waits for
 *                              after EAGAIN (EPOLLIN or EPOLLOUT; 0: the op's
 *                              own `flags` are the poll bits it waits for)
 *   eager                      the Op leaf tries `attempt` itself first
 *   port_buffer                the op waits without a buffer of its own
 *   uring_multishot            io_uring: one multishot SQE serves many ops
 *   closes_fd                  the op ends the fd: both backends first end
 *                              every op of this port still waiting on that
 *                              fd (their result: -EBADF), then run it; the
 *                              Op leaf has the other workers cancel theirs
 *   pin, to_python             how the Op leaf (op_leaf.c) holds what Python
 *                              passed (a buffer pinned until the op's own
 *                              completion) and how a result >= 0 becomes the
 *                              Python value of `await op`
 * port.c, port_uring.c, port_epoll.c and op_leaf.c read rows and never test
 * an opcode.  Adding an op is a zk_opcode value, a row and the row's small
 * functions in op.c (liburing's io_uring_prep_* are the model: one generic
 * preparation, a few lines per op), plus a binding in module.c if Python
 * calls it by itself.
 */
#ifndef ZOKIO_OP_H
#define ZOKIO_OP_H

#include <stdint.h>

typedef enum zk_opcode {
    ZK_OP_READ = 1,   /* read(fd, buf, len) or pread when offset >= 0 */
    ZK_OP_WRITE = 2,  /* write(fd, buf, len) or pwrite when offset >= 0 */
    ZK_OP_ACCEPT,     /* accept4(fd, &addr, &addrlen, NONBLOCK|CLOEXEC) */
    ZK_OP_CONNECT,    /* connect(fd, &addr, addrlen) */
    ZK_OP_RECV,       /* recv(fd, buf, len, flags) into a bytes made for it */
    ZK_OP_RECV_INTO,  /* recv(fd, buf, len, flags) into the caller's buffer */
    ZK_OP_SEND,       /* send(fd, buf, len, flags | MSG_NOSIGNAL) */
    ZK_OP_RECVMSG,    /* recvmsg(fd, &msg, flags): data, source, msg_flags */
    ZK_OP_SENDMSG,    /* sendmsg(fd, &msg, flags | MSG_NOSIGNAL) */
    ZK_OP_SHUTDOWN,   /* shutdown(fd, flags) */
    ZK_OP_CLOSE,      /* close(fd) */
    ZK_OP_POLL,       /* poll(fd, flags): the revents */
    /* Files (zokio.fs).  Path ops take a directory fd in `fd` (AT_FDCWD for
     * the working directory) and their NUL-terminated path(s) in buf.  On
     * the epoll backend their attempt is the plain (blocking) syscall:
     * zokio.fs sends them to the blocking pool there instead, and so it does
     * on an io_uring that lacks one of them (uring_optional). */
    ZK_OP_READ_INTO,  /* pread/read(fd, caller's buffer, len, offset) */
    ZK_OP_OPENAT,     /* openat(fd, path, flags, mode): the new fd */
    ZK_OP_STATX,      /* statx(fd, path, flags, mask): a tuple of fields */
    ZK_OP_FSYNC,      /* fsync(fd), fdatasync(fd) when flags = 1 */
    ZK_OP_RENAMEAT,   /* renameat2(fd, old, fd, new, flags) */
    ZK_OP_UNLINKAT,   /* unlinkat(fd, path, flags: 0 or AT_REMOVEDIR) */
    ZK_OP_MKDIRAT,    /* mkdirat(fd, path, mode) */
    ZK_OP_COUNT       /* rows in zk_op_descs; 0 is no op */
} zk_opcode;

typedef struct zk_op zk_op;              /* the op record (port.h) */
typedef struct zk_io_op zk_io_op;        /* the Op leaf (op_leaf.h) */
typedef struct zk_op_args zk_op_args;    /* what Python passed (op_leaf.h) */
struct io_uring_sqe;                     /* <linux/io_uring.h>, in op.c */
/* PyObject, named without Python.h: the ports include this header and
 * never call Python (port_uring.c and port_epoll.c run detached). */
struct _object;

typedef struct zk_op_desc {
    const char *name;            /* "read": reprs and error messages */
    /* io_uring: the backend writes uring_opcode and user_data into a zeroed
     * SQE; uring_prep fills in the rest (fd, addr, len, off, flags). */
    uint8_t uring_opcode;
    void (*uring_prep)(struct io_uring_sqe *sqe, const zk_op *op);
    /* epoll: one non-blocking try.  Returns the result (bytes >= 0 or
     * -errno), -EAGAIN when the op must wait for epoll_events.  Retries
     * EINTR itself.  May keep its progress in op->stage (connect). */
    int64_t (*attempt)(zk_op *op);
    uint32_t epoll_events;
    /* 1: the op closes op->fd (see the top of this file). */
    uint8_t closes_fd;
    /* 1: the Op leaf may make the attempt itself, attached, when first
     * awaited: an op that can finish at once (data waiting, room to send)
     * then never suspends the task nor reaches the port.  On by default on
     * epoll, off on io_uring, where it measured slower (op_leaf.c).   Only for
     * ops whose attempt is a cheap non-blocking syscall with no state of
     * its own (not regular-file READ/WRITE, CONNECT, CLOSE).  Apart from
     * this, a uring_multishot op always first takes a connection the port
     * already queued for it (zk_port_take_queued): through the port it
     * would get one per reap, a whole run-queue pass apart, and a server
     * under load took seconds to accept 1,000 new connections. */
    uint8_t eager;
    /* 1: the op may be submitted with op->buf == NULL (a receive that pins
     * no memory while it waits).  io_uring picks a buffer of the port's
     * provided-buffer ring when data arrives (or, when the ring is empty,
     * retries into memory it mallocs: buf_owned); the attempt receives into
     * per-thread scratch memory and keeps a malloc'd copy of what arrived
     * (buf_owned), or leaves it in scratch when op->attached. */
    uint8_t port_buffer;
    /* 1: io_uring serves the op from one multishot SQE per (port, fd) that
     * accepts connections as they arrive; a connection nobody waits for is
     * queued in the port, handed to the next such op, closed when the fd is
     * closed by a CLOSE op or the port closes (port_uring.c). */
    uint8_t uring_multishot;
    /* 1: io_uring may lack the opcode (older kernels): the probe does not
     * require it, and zk_port_uring_supports() says whether this kernel
     * has it.  A caller that finds it missing runs the syscall elsewhere
     * (zokio.fs: the blocking pool). */
    uint8_t uring_optional;
    /* The Op leaf: pin what Python passed (a size, a bytes-like object, an
     * address, ...) and point op.buf/op.len (and op.addr, op.msg) at the
     * memory the kernel will use.  0, or -1 with an exception set.
     * Attached. */
    int (*pin)(zk_io_op *self, const zk_op_args *args);
    /* The value of a successful op (result >= 0), as a new reference, or
     * NULL with an exception set.  Attached, on the op's worker, after the
     * port handed the op back. */
    struct _object *(*to_python)(zk_io_op *self, int64_t result);
} zk_op_desc;

extern const zk_op_desc zk_op_descs[ZK_OP_COUNT];

/* The row of `opcode`, or NULL for a value that is not an op. */
static inline const zk_op_desc *zk_op_desc_of(int opcode) {
    return opcode > 0 && opcode < ZK_OP_COUNT ? &zk_op_descs[opcode] : (const zk_op_desc *)0;
}

#endif
