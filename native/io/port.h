/* port.h -- the written contract of a completion port.
 *
 * One port per worker thread, created on that thread.  A port only translates
 * kernel events into op completions: retry policy, timers, metrics and wake
 * bookkeeping live once in the scheduler (sched.c).  Two backends implement
 * this contract: port_uring.c (io_uring, raw syscalls) and port_epoll.c
 * (epoll emulating completions).  Both must pass the same test suite.
 * The contract is the same for every op: what differs between ops (how each
 * backend runs one) is the op's row in the descriptor table, op.h.
 *
 * Threads.  Every function except zk_port_wake() must be called on the port's
 * owner thread.  zk_port_wait() is the only one that blocks; its caller has
 * detached its Python thread state (Py_BEGIN_ALLOW_THREADS), so the port never
 * touches Python objects.  zk_port_process() runs attached and calls each
 * finished op's `complete` callback, which may touch Python.
 *
 * Op lifetime.  The caller owns the zk_op memory and everything it points at
 * (the pinned buffer).  After zk_port_submit() returns 0 the op belongs to the
 * port until its `complete` callback runs -- exactly once -- from
 * zk_port_process() or zk_port_close().  `complete` is never called from
 * inside zk_port_submit() or zk_port_cancel(), even when the kernel finishes
 * the op at once, so the caller never re-enters itself.  Only then may the
 * caller release the buffer.
 */
#ifndef ZOKIO_PORT_H
#define ZOKIO_PORT_H

#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "io/op.h"

typedef enum zk_backend {
    ZK_BACKEND_AUTO = 0,
    ZK_BACKEND_URING = 1,
    ZK_BACKEND_EPOLL = 2,
} zk_backend;

typedef struct zk_op zk_op;
typedef void (*zk_op_complete_fn)(zk_op *op, int64_t result);

struct zk_op {
    /* Filled by the caller before zk_port_submit(). */
    zk_opcode opcode;           /* its row in zk_op_descs (op.h) says how each
                                   backend runs it */
    int fd;
    void *buf;
    size_t len;
    int64_t offset;             /* -1: the fd's current position / a stream */
    int flags;                  /* MSG_* of recv/send, poll bits of POLL,
                                   `how` of SHUTDOWN */
    uint32_t stage;             /* the row's own progress (epoll CONNECT:
                                   1 once connect() said EINPROGRESS) */
    uint8_t tried;              /* the caller just made the row's attempt and
                                   it said EAGAIN: epoll waits for readiness
                                   without trying again first */
    uint8_t attached;           /* the attempt runs attached and its result is
                                   consumed at once (the Op leaf's eager try):
                                   a row may leave the data in per-thread
                                   scratch memory */
    uint8_t buf_owned;          /* buf was malloc'd for the op (by its attempt
                                   or by the port): the caller free()s it
                                   after `complete` */
    uint16_t backend_bid;       /* io_uring: provided buffer holding the data */
    socklen_t addrlen;          /* bytes of addr used (in and out) */
    struct sockaddr_storage addr; /* ACCEPT/RECVMSG: the peer; CONNECT,
                                   SENDMSG: the destination */
    struct msghdr msg;          /* RECVMSG/SENDMSG: name = addr, iov */
    struct iovec iov;           /* RECVMSG/SENDMSG: buf, len */
    /* A row with port_buffer (op.h) may leave buf NULL: the data then
     * arrives in memory the port or the attempt chose, and buf points at it
     * when `complete` runs -- valid until `complete` returns. */
    zk_op_complete_fn complete; /* result: bytes (>= 0) or -errno;
                                   -ECANCELED after a successful cancel,
                                   -EBADF when a CLOSE of the fd ended it */
    /* Owned by the backend while the op is in flight; zero before submit. */
    zk_op *backend_next;
    zk_op *backend_prev;
    uint32_t backend_flags;
    int64_t backend_result;
};

typedef struct zk_port zk_port;

/* Once per process: is io_uring usable here (setup works and every opcode we
 * need is supported)?  Cached after the first call; thread-safe. */
int zk_port_uring_available(void);

/* Does this kernel's io_uring have the opcode of row `opcode` (op.h)?
 * Always 1 for a row that is not uring_optional once io_uring is available;
 * 0 when io_uring is not.  Thread-safe; probes on first use. */
int zk_port_uring_supports(int opcode);

/* Resolve AUTO to a concrete backend (honouring the probe). */
zk_backend zk_port_resolve_backend(zk_backend requested);

/* Create a port on the calling thread.  On failure returns NULL and sets
 * *err to a positive errno. */
zk_port *zk_port_open(zk_backend backend, int *err);

/* The waiting half of zk_port_close: cancel every op still in flight and
 * wait (up to a few seconds) for the kernel to give each one back, calling
 * no `complete`.  Detached: touches no Python object, so a stop-the-world
 * pause or a GIL holder never waits for it.  Owner thread; afterwards the
 * port accepts no submission, and the only call left is zk_port_close. */
void zk_port_drain(zk_port *port);

/* Drain (if zk_port_drain was not called), call every outstanding `complete`
 * (with -ECANCELED or its real result), then release the kernel objects.
 * Attached; owner thread. */
void zk_port_close(zk_port *port);

/* Start an op.  Returns 0 (the op is in flight) or a positive errno (the op
 * was not accepted and `complete` will never be called for it). */
int zk_port_submit(zk_port *port, zk_op *op);

/* Ask the kernel to cancel an op in flight.  The op still completes through
 * `complete`, with -ECANCELED or, if it raced and finished, its real result.
 * Cancelling an op that already completed is a caller bug. */
void zk_port_cancel(zk_port *port, zk_op *op);

/* Block until at least one completion is ready, zk_port_wake() is called, or
 * timeout_ns passes (0: do not block; < 0: no timeout).  Flushes submissions.
 * Called detached: touches no Python object.  Returns 0 or a positive errno
 * (EINTR is absorbed: it returns 0). */
int zk_port_wait(zk_port *port, int64_t timeout_ns);

/* Call `complete` for every finished op.  Attached; owner thread.  Returns
 * the number of ops completed.  Also re-arms the wake channel if needed. */
int zk_port_process(zk_port *port);

/* Let go of what the port keeps for a file, named by fd number and identity
 * (st_dev, st_ino, so that a number reused since is left alone): io_uring's
 * multishot ACCEPT record of a listener -- its SQE, which holds the file
 * open in the kernel, is cancelled, the connections it queued are closed,
 * its parked ACCEPT ops end with -EBADF.  Attached; owner thread.  A port
 * with nothing for that file ignores it. */
void zk_port_forget_fd(zk_port *port, int fd, uint64_t dev, uint64_t ino);

/* For a uring_multishot op (ACCEPT) about to be made: a connection the
 * port already holds for op->fd (same file), handed over now -- its fd,
 * the peer address in op->addr -- instead of as a completion at the next
 * reap; -1 when there is none (epoll: never).  Attached; owner thread. */
int zk_port_take_queued(zk_port *port, zk_op *op);

/* Make a concurrent or future zk_port_wait() return.  Any thread, any time
 * between open and close.  Cheap; may coalesce. */
void zk_port_wake(zk_port *port);

/* Number of ops in flight (submitted, not yet completed). */
size_t zk_port_inflight(const zk_port *port);

/* Counters of one port, for tests and benchmarks.  Owner thread only. */
typedef struct zk_port_stats {
    uint64_t submitted;   /* ops accepted by zk_port_submit */
    uint64_t completed;   /* `complete` callbacks run */
    uint64_t enters;      /* io_uring_enter / epoll_wait system calls */
    uint64_t sqes;        /* io_uring: SQEs handed to the kernel */
    uint64_t ctls;        /* epoll: epoll_ctl system calls */
    uint64_t pbuf_used;   /* io_uring: receives served by a provided buffer */
    uint64_t pbuf_misses; /* io_uring: -ENOBUFS (ring empty), retried into
                             malloc'd memory */
    uint64_t ms_accepts;  /* io_uring: connections from multishot ACCEPTs */
    uint64_t ms_arms;     /* io_uring: multishot ACCEPT SQEs submitted */
} zk_port_stats;

void zk_port_get_stats(const zk_port *port, zk_port_stats *out);

/* The port opened on the calling thread and not yet closed, or NULL. */
zk_port *zk_port_current(void);

zk_backend zk_port_backend(const zk_port *port);
const char *zk_port_backend_name(zk_backend backend);

#endif
