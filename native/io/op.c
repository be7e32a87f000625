/* op.c -- the descriptor table (op.h): one row per opcode, and the small
 * functions the rows point at.
 *
 * Read and write share everything but direction: one SQE preparation
 * (prep_rw), one syscall helper, and a buffer the kernel writes into (READ:
 * a bytes object made here, shrunk to what arrived; READ_INTO: the caller's
 * writable buffer) or reads from (WRITE: the caller's bytes-like object,
 * pinned through the buffer protocol).  On a regular file they move data
 * at `offset` (pread/pwrite; 64-bit, so past 2 GiB too) or at the file
 * position when it is -1.
 *
 * The file ops (OPENAT, STATX, FSYNC, RENAMEAT, UNLINKAT, MKDIRAT) keep
 * their paths, encoded once, in one bytes object made for the op (own_buf),
 * STATX its struct statx in front of the path: the kernel reads and writes
 * memory that lives exactly as long as the op.  They are uring_optional
 * (op.h): an io_uring without them still serves every other op.
 *
 * The socket ops follow the same pattern.  RECV fills a bytes object made
 * for it (shrunk to what arrived); RECV_INTO and SEND use the caller's buffer
 * from `offset` on, pinned, never copied.  ACCEPT, CONNECT, RECVMSG and
 * SENDMSG keep their socket address (and RECVMSG/SENDMSG their msghdr and
 * iovec) in the op record itself, so the kernel reads and writes memory that
 * lives exactly as long as the op.  Addresses cross to and from Python in the
 * socket module's forms (sockaddr_from_python / sockaddr_to_python below).
 */
#define _GNU_SOURCE
#include "io/op.h"
#include "io/op_leaf.h"
#include "io/port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

/* Largest count a single read/write moves on Linux (MAX_RW_COUNT). */
#define ZK_MAX_RW 0x7ffff000u

static size_t rw_len(const zk_op *op) {
    return op->len > ZK_MAX_RW ? ZK_MAX_RW : op->len;
}

static inline uint64_t ptr64(const void *p) {
    return (uint64_t)(uintptr_t)p;
}

/* ---- io_uring ----------------------------------------------------------- */

/* fd, buffer, length and offset of a read or write.  With FEAT_RW_CUR_POS
 * (5.6, required by the probe), off = -1 means "the file position", which
 * is what op->offset == -1 asks for. */
static void prep_rw(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)rw_len(op);
    sqe->off = op->offset >= 0 ? (uint64_t)op->offset : (uint64_t)-1;
}

/* The kernel writes the peer's address and its length into the op. */
static void prep_accept(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(&op->addr);
    sqe->addr2 = ptr64(&op->addrlen);
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
}

/* IORING_OP_CONNECT takes the address length in `off`. */
static void prep_connect(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(&op->addr);
    sqe->off = op->addrlen;
}

/* RECV and SEND: buffer, length, MSG_* flags (pin added MSG_NOSIGNAL to a
 * send's). */
static void prep_sock(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)rw_len(op);
    sqe->msg_flags = (uint32_t)op->flags;
}

/* RECVMSG and SENDMSG: the msghdr in the op (one iovec); len must be 1. */
static void prep_msg(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(&op->msg);
    sqe->len = 1;
    sqe->msg_flags = (uint32_t)op->flags;
}

static void prep_shutdown(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->len = (uint32_t)op->flags;
}

static void prep_close(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
}

static void prep_poll(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    sqe->poll32_events = __builtin_bswap32((uint32_t)op->flags);
#else
    sqe->poll32_events = (uint32_t)op->flags;
#endif
}

/* ---- io_uring: files ------------------------------------------------------
 * Path ops keep their path (NUL-terminated) at op->buf and the directory fd
 * (AT_FDCWD or an fd) in op->fd; RENAMEAT's second path and STATX's result
 * buffer sit in op->iov.iov_base; OPENAT's mode and STATX's mask in op->len,
 * the open/statx/unlink/rename flags in op->flags. */
static void prep_openat(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)op->len;
    sqe->open_flags = (uint32_t)op->flags;
}

static void prep_statx(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)op->len;
    sqe->addr2 = ptr64(op->iov.iov_base);
    sqe->statx_flags = (uint32_t)op->flags;
}

static void prep_fsync(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->fsync_flags = op->flags ? IORING_FSYNC_DATASYNC : 0;
}

static void prep_renameat(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)op->fd;  /* the new path's directory */
    sqe->addr2 = ptr64(op->iov.iov_base);
    sqe->rename_flags = (uint32_t)op->flags;
}

static void prep_unlinkat(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->unlink_flags = (uint32_t)op->flags;
}

static void prep_mkdirat(struct io_uring_sqe *sqe, const zk_op *op) {
    sqe->fd = op->fd;
    sqe->addr = ptr64(op->buf);
    sqe->len = (uint32_t)op->len;
}

/* ---- epoll: the non-blocking attempt ------------------------------------ */

static int64_t syscall_result(ssize_t n) {
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return n;
}

static int64_t attempt_read(zk_op *op) {
    ssize_t n;
    do {
        n = op->offset >= 0 ? pread(op->fd, op->buf, rw_len(op), op->offset)
                            : read(op->fd, op->buf, rw_len(op));
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_write(zk_op *op) {
    ssize_t n;
    do {
        n = op->offset >= 0 ? pwrite(op->fd, op->buf, rw_len(op), op->offset)
                            : write(op->fd, op->buf, rw_len(op));
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

/* ECONNABORTED: a connection reset while queued; io_uring retries it too. */
static int64_t attempt_accept(zk_op *op) {
    int fd;
    do {
        op->addrlen = sizeof op->addr;
        fd = accept4(op->fd, (struct sockaddr *)&op->addr, &op->addrlen,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
    return syscall_result(fd);
}

/* Stage 0: connect(); EINPROGRESS moves to stage 1 and waits for EPOLLOUT.
 * Stage 1: never connect() again (after a failure that would start a new
 * attempt): SO_ERROR says how it ended, getpeername whether it has ended. */
static int64_t attempt_connect(zk_op *op) {
    if (op->stage == 0) {
        int r;
        do {
            r = connect(op->fd, (struct sockaddr *)&op->addr, op->addrlen);
        } while (r < 0 && errno == EINTR);
        if (r == 0)
            return 0;
        if (errno == EINPROGRESS) {
            op->stage = 1;
            return -EAGAIN;
        }
        if (errno == EINTR || errno == EALREADY)
            op->stage = 1;
        return syscall_result(r);  /* EAGAIN (Unix backlog full): retry */
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        return -errno;
    if (soerr)
        return -soerr;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(op->fd, (struct sockaddr *)&peer, &plen) == 0)
        return 0;
    return errno == ENOTCONN ? -EAGAIN : -errno;
}

static int64_t attempt_poll(zk_op *op);

/* Per-thread scratch memory of port_buffer receives (op.h): ZK_SCRATCH
 * bytes, malloc'd at a thread's first such attempt, freed at thread exit. */
#define ZK_SCRATCH 65536u
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local char *scratch;

static void scratch_key_init(void) {
    pthread_key_create(&scratch_key, free);
}

static char *thread_scratch(void) {
    if (scratch == NULL) {
        pthread_once(&scratch_once, scratch_key_init);
        scratch = malloc(ZK_SCRATCH);
        if (scratch != NULL)
            pthread_setspecific(scratch_key, scratch);
    }
    return scratch;
}

/* A receive with no buffer of its own (op->buf NULL): into scratch; what
 * arrived is then copied to memory of its own size (buf_owned), unless the
 * caller consumes it at once (op->attached).  Nothing is allocated while
 * the socket has nothing to give (EAGAIN). */
static int64_t recv_to_scratch(zk_op *op) {
    char *sc = thread_scratch();
    if (sc == NULL)
        return -ENOMEM;
    size_t len = op->len < ZK_SCRATCH ? op->len : ZK_SCRATCH;
    ssize_t n;
    do {
        n = recv(op->fd, sc, len, op->flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n <= 0)
        return syscall_result(n);
    if (op->attached) {
        op->buf = sc;
        return n;
    }
    char *copy = malloc((size_t)n);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, sc, (size_t)n);
    op->buf = copy;
    op->buf_owned = 1;
    return n;
}

/* A zero-length receive waits until the socket is readable (or at EOF, or
 * in error) and then says 0, consuming nothing: what io_uring's RECV does
 * with len 0, emulated here because recv(2) would say 0 at once. */
static int64_t attempt_recv(zk_op *op) {
    if (rw_len(op) == 0) {
        int events = op->flags;
        op->flags = POLLIN;
        int64_t r = attempt_poll(op);
        op->flags = events;
        if (r < 0)
            return r;
        /* Readable: an error (ECONNRESET...) still belongs to the recv. */
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr)
            return -soerr;
        return 0;
    }
    if (op->buf == NULL)
        return recv_to_scratch(op);
    ssize_t n;
    do {
        n = recv(op->fd, op->buf, rw_len(op), op->flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_send(zk_op *op) {
    ssize_t n;
    do {
        n = send(op->fd, op->buf, rw_len(op), op->flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_recvmsg(zk_op *op) {
    ssize_t n;
    do {
        op->msg.msg_namelen = sizeof op->addr;
        op->msg.msg_flags = 0;
        n = recvmsg(op->fd, &op->msg, op->flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_sendmsg(zk_op *op) {
    ssize_t n;
    do {
        n = sendmsg(op->fd, &op->msg, op->flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return syscall_result(n);
}

static int64_t attempt_shutdown(zk_op *op) {
    return shutdown(op->fd, op->flags) < 0 ? -errno : 0;
}

/* Linux releases the fd even when close(2) says EINTR: never retry. */
static int64_t attempt_close(zk_op *op) {
    if (close(op->fd) < 0 && errno != EINTR)
        return -errno;
    return 0;
}

static int64_t attempt_poll(zk_op *op) {
    struct pollfd p = {.fd = op->fd, .events = (short)op->flags, .revents = 0};
    int n;
    do {
        n = poll(&p, 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EAGAIN;
    if (p.revents & POLLNVAL)
        return -EBADF;
    return (uint16_t)p.revents;
}

/* File ops: the plain syscall.  It may block (a disk, a network file
 * system), which is why zokio.fs does not send them to the epoll port but
 * to the blocking pool; the rows still have an attempt so that an op
 * awaited there anyway completes (on the worker) instead of failing. */
static int64_t attempt_openat(zk_op *op) {
    int fd;
    do {
        fd = openat(op->fd, (const char *)op->buf, op->flags, (mode_t)op->len);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

static int64_t attempt_statx(zk_op *op) {
    int r = statx(op->fd, (const char *)op->buf, op->flags, (unsigned)op->len,
                  (struct statx *)op->iov.iov_base);
    return r < 0 ? -errno : 0;
}

static int64_t attempt_fsync(zk_op *op) {
    int r;
    do {
        r = op->flags ? fdatasync(op->fd) : fsync(op->fd);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

static int64_t attempt_renameat(zk_op *op) {
    int r = renameat2(op->fd, (const char *)op->buf, op->fd, (const char *)op->iov.iov_base,
                      (unsigned)op->flags);
    return r < 0 ? -errno : 0;
}

static int64_t attempt_unlinkat(zk_op *op) {
    return unlinkat(op->fd, (const char *)op->buf, op->flags) < 0 ? -errno : 0;
}

static int64_t attempt_mkdirat(zk_op *op) {
    return mkdirat(op->fd, (const char *)op->buf, (mode_t)op->len) < 0 ? -errno : 0;
}

/* ---- socket addresses, to and from the socket module's forms ------------- */

/* The family of a socket fd (SO_DOMAIN), or -1 with OSError set. */
static int socket_family(int fd) {
    int family = 0;
    socklen_t len = sizeof family;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return family;
}

static int parse_port(PyObject *obj, uint16_t *port) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "port must be an int, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 0-65535, got %ld", v);
        return -1;
    }
    *port = htons((uint16_t)v);
    return 0;
}

static int parse_u32(PyObject *obj, const char *what, uint32_t *out) {
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be 0-4294967295", what);
        }
        return -1;
    }
    if (v > 0xffffffffUL) {
        PyErr_Format(PyExc_ValueError, "%s must be 0-4294967295", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* (host, port[, flowinfo[, scope_id]]) with a numeric host; '' is the
 * wildcard address.  An IPv6 host may carry a zone: "fe80::1%eth0". */
static int inet_from_python(int family, PyObject *obj, zk_op *op) {
    Py_ssize_t n = PyTuple_Check(obj) ? PyTuple_GET_SIZE(obj) : -1;
    Py_ssize_t max = family == AF_INET ? 2 : 4;
    if (n < 2 || n > max) {
        PyErr_Format(PyExc_TypeError,
                     family == AF_INET ? "AF_INET address must be a tuple (host, port), not %R"
                                       : "AF_INET6 address must be a tuple (host, port[, flowinfo"
                                         "[, scope_id]]), not %R",
                     obj);
        return -1;
    }
    PyObject *host = PyTuple_GET_ITEM(obj, 0);
    if (!PyUnicode_Check(host)) {
        PyErr_Format(PyExc_TypeError, "host must be a str, not %.100s", Py_TYPE(host)->tp_name);
        return -1;
    }
    const char *h = PyUnicode_AsUTF8(host);
    if (h == NULL)
        return -1;
    uint16_t port;
    if (parse_port(PyTuple_GET_ITEM(obj, 1), &port) < 0)
        return -1;
    memset(&op->addr, 0, sizeof op->addr);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&op->addr;
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        if (h[0] != '\0' && inet_pton(AF_INET, h, &sin->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "%R is not a numeric IPv4 address", host);
            return -1;
        }
        op->addrlen = sizeof *sin;
        return 0;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&op->addr;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = port;
    uint32_t flowinfo = 0, scope = 0;
    if (n > 2 && parse_u32(PyTuple_GET_ITEM(obj, 2), "flowinfo", &flowinfo) < 0)
        return -1;
    if (n > 3 && parse_u32(PyTuple_GET_ITEM(obj, 3), "scope_id", &scope) < 0)
        return -1;
    char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (strlen(h) >= sizeof buf) {
        PyErr_Format(PyExc_ValueError, "%R is not a numeric IPv6 address", host);
        return -1;
    }
    strcpy(buf, h);
    char *zone = strchr(buf, '%');
    if (zone != NULL) {
        *zone++ = '\0';
        char *end;
        unsigned long z = strtoul(zone, &end, 10);
        if (*zone && *end == '\0')
            scope = (uint32_t)z;
        else if ((scope = if_nametoindex(zone)) == 0) {
            PyErr_Format(PyExc_ValueError, "%R: unknown interface in the zone", host);
            return -1;
        }
    }
    if (buf[0] != '\0' && inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "%R is not a numeric IPv6 address", host);
        return -1;
    }
    sin6->sin6_flowinfo = htonl(flowinfo);
    sin6->sin6_scope_id = scope;
    op->addrlen = sizeof *sin6;
    return 0;
}

/* A path (str, or bytes for any byte string); a leading NUL makes it an
 * abstract name, used as is, else the path gets its terminating NUL. */
static int unix_from_python(PyObject *obj, zk_op *op) {
    PyObject *raw;
    if (PyUnicode_Check(obj)) {
        raw = PyUnicode_EncodeFSDefault(obj);
    } else if (PyBytes_Check(obj) || PyByteArray_Check(obj) || PyObject_CheckBuffer(obj)) {
        raw = PyBytes_FromObject(obj);
    } else {
        PyErr_Format(PyExc_TypeError, "AF_UNIX address must be str or bytes, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (raw == NULL)
        return -1;
    const char *p = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    struct sockaddr_un *sun = (struct sockaddr_un *)&op->addr;
    int abstract = n > 0 && p[0] == '\0';
    if (n + (abstract ? 0 : 1) > (Py_ssize_t)sizeof sun->sun_path) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_ValueError, "AF_UNIX path too long");
        return -1;
    }
    if (!abstract && memchr(p, '\0', (size_t)n) != NULL) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_ValueError, "AF_UNIX path contains a NUL byte");
        return -1;
    }
    memset(&op->addr, 0, sizeof op->addr);
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, p, (size_t)n);
    op->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n
                              + (abstract ? 0 : 1));
    Py_DECREF(raw);
    return 0;
}

/* Fill op->addr/addrlen from `obj` in the form of the socket's family. */
static int sockaddr_from_python(int fd, PyObject *obj, zk_op *op) {
    int family = socket_family(fd);
    if (family < 0)
        return -1;
    switch (family) {
    case AF_INET:
    case AF_INET6:
        return inet_from_python(family, obj, op);
    case AF_UNIX:
        return unix_from_python(obj, op);
    default:
        PyErr_Format(PyExc_ValueError, "address family %d is not supported", family);
        return -1;
    }
}

/* The socket module's form of an address: (host, port) for AF_INET,
 * (host, port, flowinfo, scope_id) for AF_INET6, str (or bytes for an
 * abstract name, '' when unnamed) for AF_UNIX, None for no address. */
static PyObject *sockaddr_to_python(const struct sockaddr_storage *ss, socklen_t len) {
    if (len < sizeof(sa_family_t))
        return Py_NewRef(Py_None);
    char host[INET6_ADDRSTRLEN];
    switch (ss->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, (int)ntohs(sin->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, (int)ntohs(sin6->sin6_port),
                             (unsigned int)ntohl(sin6->sin6_flowinfo),
                             (unsigned int)sin6->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? len - off : 0;
        if (n > sizeof sun->sun_path)
            n = sizeof sun->sun_path;
        if (n > 0 && sun->sun_path[0] == '\0')
            return PyBytes_FromStringAndSize(sun->sun_path, (Py_ssize_t)n);
        return PyUnicode_DecodeFSDefaultAndSize(sun->sun_path,
                                                (Py_ssize_t)strnlen(sun->sun_path, n));
    }
    default:
        return Py_BuildValue("(iy#)", (int)ss->ss_family, (const char *)ss, (Py_ssize_t)len);
    }
}

/* ---- Python: arguments in, result out ------------------------------------ */

/* Point the op at the memory of the view pinned in self->view, from
 * `offset` on (0 <= offset <= len, else ValueError). */
static int use_view(zk_io_op *self, int64_t offset) {
    self->view_held = 1;
    if (offset < 0 || offset > (int64_t)self->view.len) {
        PyErr_Format(PyExc_ValueError, "offset %lld is outside the buffer (0-%zd)",
                     (long long)offset, self->view.len);
        return -1;
    }
    self->op.buf = (char *)self->view.buf + offset;
    self->op.len = (size_t)(self->view.len - offset);
    return 0;
}

static Py_ssize_t size_arg(PyObject *arg, const char *what) {
    if (arg == NULL || !PyIndex_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s size must be an int, not %.100s", what,
                     arg ? Py_TYPE(arg)->tp_name : "nothing");
        return -1;
    }
    Py_ssize_t n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "%s size must be >= 0", what);
        return -1;
    }
    return n;
}

/* arg: the number of bytes to read, into a bytes object made for the op
 * and never seen by Python before the op completes; the value is that
 * object, shrunk to what was read (recv_to_python: no copy). */
static int pin_read(zk_io_op *self, const zk_op_args *a) {
    Py_ssize_t n = size_arg(a->arg, "read");
    if (n < 0)
        return -1;
    self->op.offset = a->offset;
    self->own_buf = PyBytes_FromStringAndSize(NULL, n);
    if (self->own_buf == NULL)
        return -1;
    self->op.buf = PyBytes_AS_STRING(self->own_buf);
    self->op.len = (size_t)n;
    return 0;
}

/* arg: any bytes-like object, pinned as it is (no copy). */
static int pin_write(zk_io_op *self, const zk_op_args *a) {
    if (PyObject_GetBuffer(a->arg, &self->view, PyBUF_SIMPLE) < 0)
        return -1;
    self->op.offset = a->offset;
    return use_view(self, 0);
}

/* The number of bytes moved (or the revents of a poll). */
static PyObject *count_to_python(zk_io_op *self, int64_t result) {
    ZK_UNUSED(self);
    return PyLong_FromLongLong(result);
}

static PyObject *none_to_python(zk_io_op *self, int64_t result) {
    ZK_UNUSED(self), ZK_UNUSED(result);
    return Py_NewRef(Py_None);
}

static int pin_nothing(zk_io_op *self, const zk_op_args *a) {
    ZK_UNUSED(self), ZK_UNUSED(a);
    return 0;
}

static int pin_accept(zk_io_op *self, const zk_op_args *a) {
    ZK_UNUSED(a);
    self->op.addrlen = sizeof self->op.addr;
    return 0;
}

/* (new fd, peer address).  The fd is the caller's from here on; if the
 * tuple cannot be made it is closed, never leaked. */
static PyObject *accept_to_python(zk_io_op *self, int64_t result) {
    PyObject *addr = sockaddr_to_python(&self->op.addr, self->op.addrlen);
    PyObject *r = addr ? Py_BuildValue("(iN)", (int)result, addr) : NULL;
    if (r == NULL)
        close((int)result);
    return r;
}

static int pin_connect(zk_io_op *self, const zk_op_args *a) {
    if (a->address == NULL || a->address == Py_None) {
        PyErr_SetString(PyExc_TypeError, "connect needs an address");
        return -1;
    }
    return sockaddr_from_python(self->op.fd, a->address, &self->op);
}

/* arg: the most bytes to receive.  RECV pins nothing: the data arrives in
 * memory the port or the attempt chose (port_buffer, op.h), at most
 * ZK_SCRATCH bytes at a time. */
static int pin_recv_lazy(zk_io_op *self, const zk_op_args *a) {
    Py_ssize_t n = size_arg(a->arg, "recv");
    if (n < 0)
        return -1;
    self->op.buf = NULL;
    self->op.len = (size_t)n < ZK_SCRATCH ? (size_t)n : ZK_SCRATCH;
    return 0;
}

/* A copy of what arrived, wherever it is (op->buf). */
static PyObject *recv_lazy_to_python(zk_io_op *self, int64_t result) {
    if (result == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    return PyBytes_FromStringAndSize(self->op.buf, (Py_ssize_t)result);
}

/* arg: the most bytes to receive, into a bytes object made for the op. */
static int pin_recv(zk_io_op *self, const zk_op_args *a) {
    Py_ssize_t n = size_arg(a->arg, "recv");
    if (n < 0)
        return -1;
    self->own_buf = PyBytes_FromStringAndSize(NULL, n);
    if (self->own_buf == NULL)
        return -1;
    self->op.buf = PyBytes_AS_STRING(self->own_buf);
    self->op.len = (size_t)n;
    return 0;
}

/* The bytes object itself, shrunk to what arrived (no copy). */
static PyObject *recv_to_python(zk_io_op *self, int64_t result) {
    PyObject *b = self->own_buf;
    self->own_buf = NULL;
    if (result != PyBytes_GET_SIZE(b)) {
        if (result == 0) {
            Py_DECREF(b);
            return PyBytes_FromStringAndSize(NULL, 0);
        }
        if (_PyBytes_Resize(&b, (Py_ssize_t)result) < 0)
            return NULL;
    }
    return b;
}

/* arg: a writable buffer, filled from args->offset on. */
static int pin_recv_into(zk_io_op *self, const zk_op_args *a) {
    if (PyObject_GetBuffer(a->arg, &self->view, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "recv_into needs a writable buffer, not %.100s",
                         Py_TYPE(a->arg)->tp_name);
        }
        return -1;
    }
    return use_view(self, a->offset);
}

/* arg: any bytes-like object, sent from args->offset on; never SIGPIPE. */
static int pin_send(zk_io_op *self, const zk_op_args *a) {
    if (PyObject_GetBuffer(a->arg, &self->view, PyBUF_SIMPLE) < 0)
        return -1;
    self->op.flags |= MSG_NOSIGNAL;
    return use_view(self, a->offset);
}

static void use_msg(zk_io_op *self, int with_name) {
    zk_op *op = &self->op;
    op->iov.iov_base = op->buf;
    op->iov.iov_len = rw_len(op);
    memset(&op->msg, 0, sizeof op->msg);
    op->msg.msg_name = with_name ? &op->addr : NULL;
    op->msg.msg_namelen = with_name ? (with_name > 0 ? op->addrlen : sizeof op->addr) : 0;
    op->msg.msg_iov = &op->iov;
    op->msg.msg_iovlen = 1;
}

static int pin_recvmsg(zk_io_op *self, const zk_op_args *a) {
    if (pin_recv(self, a) < 0)
        return -1;
    use_msg(self, -1);
    return 0;
}

/* (data, source address or None, msg_flags: MSG_TRUNC when the datagram
 * was longer than asked). */
static PyObject *recvmsg_to_python(zk_io_op *self, int64_t result) {
    int msg_flags = self->op.msg.msg_flags;
    PyObject *addr = sockaddr_to_python(&self->op.addr, self->op.msg.msg_namelen);
    if (addr == NULL)
        return NULL;
    PyObject *data = recv_to_python(self, result);
    if (data == NULL) {
        Py_DECREF(addr);
        return NULL;
    }
    return Py_BuildValue("(NNi)", data, addr, msg_flags);
}

static int pin_sendmsg(zk_io_op *self, const zk_op_args *a) {
    int named = a->address != NULL && a->address != Py_None;
    if (named && sockaddr_from_python(self->op.fd, a->address, &self->op) < 0)
        return -1;
    if (PyObject_GetBuffer(a->arg, &self->view, PyBUF_SIMPLE) < 0)
        return -1;
    if (use_view(self, 0) < 0)
        return -1;
    self->op.flags |= MSG_NOSIGNAL;
    use_msg(self, named);
    return 0;
}

static int pin_shutdown(zk_io_op *self, const zk_op_args *a) {
    ZK_UNUSED(self);
    if (a->flags != SHUT_RD && a->flags != SHUT_WR && a->flags != SHUT_RDWR) {
        PyErr_Format(PyExc_ValueError, "shutdown how must be SHUT_RD, SHUT_WR or SHUT_RDWR, "
                     "not %d", a->flags);
        return -1;
    }
    return 0;
}

static int pin_poll(zk_io_op *self, const zk_op_args *a) {
    ZK_UNUSED(self);
    if (a->flags <= 0 || a->flags > 0xffff) {
        PyErr_Format(PyExc_ValueError, "poll events must be poll bits (POLLIN, POLLOUT, ...), "
                     "not %d", a->flags);
        return -1;
    }
    return 0;
}

/* ---- Python: files --------------------------------------------------------- */

/* arg: a writable buffer, filled from its start; offset: the file offset
 * (-1: the file position). */
static int pin_read_into(zk_io_op *self, const zk_op_args *a) {
    if (PyObject_GetBuffer(a->arg, &self->view, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "readinto needs a writable buffer, not %.100s",
                         Py_TYPE(a->arg)->tp_name);
        }
        return -1;
    }
    self->op.offset = a->offset;
    return use_view(self, 0);
}

/* One bytes object of `extra` bytes (zeroed) followed by the encoded paths,
 * each with its NUL: own_buf, so it lives exactly as long as the op.
 * Paths are str, bytes or os.PathLike (PyUnicode_FSConverter: embedded NUL
 * is a ValueError, as for os.open). */
static int pin_paths(zk_io_op *self, PyObject *first, PyObject *second, size_t extra) {
    PyObject *p1 = NULL, *p2 = NULL;
    if (!PyUnicode_FSConverter(first, &p1))
        return -1;
    if (second != NULL && !PyUnicode_FSConverter(second, &p2)) {
        Py_DECREF(p1);
        return -1;
    }
    size_t n1 = (size_t)PyBytes_GET_SIZE(p1) + 1;
    size_t n2 = p2 ? (size_t)PyBytes_GET_SIZE(p2) + 1 : 0;
    /* Align the paths after a struct statx. */
    extra = (extra + 15) & ~(size_t)15;
    self->own_buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(extra + n1 + n2));
    if (self->own_buf == NULL) {
        Py_DECREF(p1);
        Py_XDECREF(p2);
        return -1;
    }
    char *base = PyBytes_AS_STRING(self->own_buf);
    memset(base, 0, extra);
    memcpy(base + extra, PyBytes_AS_STRING(p1), n1);
    if (p2)
        memcpy(base + extra + n1, PyBytes_AS_STRING(p2), n2);
    Py_DECREF(p1);
    Py_XDECREF(p2);
    self->op.buf = base + extra;
    self->op.iov.iov_base = extra ? (void *)base : (p2 ? base + extra + n1 : NULL);
    return 0;
}

/* arg: the path; flags: open(2) flags (O_CLOEXEC is always added);
 * offset: the mode. */
static int pin_openat(zk_io_op *self, const zk_op_args *a) {
    self->op.flags |= O_CLOEXEC;
    self->op.len = (size_t)(a->offset & 07777);
    return pin_paths(self, a->arg, NULL, 0);
}

static PyObject *fd_to_python(zk_io_op *self, int64_t result) {
    ZK_UNUSED(self);
    return PyLong_FromLongLong(result);
}

/* arg: the path ("" with AT_EMPTY_PATH: the fd itself); flags: AT_*;
 * offset: the STATX_* mask. */
static int pin_statx(zk_io_op *self, const zk_op_args *a) {
    self->op.len = (size_t)(uint32_t)a->offset;
    return pin_paths(self, a->arg, NULL, sizeof(struct statx));
}

static PyObject *nsec_of(const struct statx_timestamp *t) {
    return PyLong_FromLongLong((long long)t->tv_sec * 1000000000LL + (long long)t->tv_nsec);
}

/* (mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns,
 *  blksize, blocks, rdev, btime_ns or None, attributes, mask):
 * zokio/fs builds an os.stat_result from it. */
static PyObject *statx_to_python(zk_io_op *self, int64_t result) {
    ZK_UNUSED(result);
    const struct statx *sx = (const struct statx *)PyBytes_AS_STRING(self->own_buf);
    PyObject *btime = (sx->stx_mask & STATX_BTIME) ? nsec_of(&sx->stx_btime) : Py_NewRef(Py_None);
    return Py_BuildValue(
        "(IKKIIIKNNNIKKNKI)", (unsigned)sx->stx_mode, (unsigned long long)sx->stx_ino,
        (unsigned long long)makedev(sx->stx_dev_major, sx->stx_dev_minor),
        (unsigned)sx->stx_nlink, (unsigned)sx->stx_uid, (unsigned)sx->stx_gid,
        (unsigned long long)sx->stx_size, nsec_of(&sx->stx_atime), nsec_of(&sx->stx_mtime),
        nsec_of(&sx->stx_ctime), (unsigned)sx->stx_blksize, (unsigned long long)sx->stx_blocks,
        (unsigned long long)makedev(sx->stx_rdev_major, sx->stx_rdev_minor), btime,
        (unsigned long long)sx->stx_attributes, (unsigned)sx->stx_mask);
}

/* arg: the old path; address: the new path; flags: RENAME_*. */
static int pin_renameat(zk_io_op *self, const zk_op_args *a) {
    if (a->address == NULL) {
        PyErr_SetString(PyExc_TypeError, "rename needs a new path");
        return -1;
    }
    return pin_paths(self, a->arg, a->address, 0);
}

/* arg: the path; flags: 0 or AT_REMOVEDIR. */
static int pin_unlinkat(zk_io_op *self, const zk_op_args *a) {
    return pin_paths(self, a->arg, NULL, 0);
}

/* arg: the path; offset: the mode. */
static int pin_mkdirat(zk_io_op *self, const zk_op_args *a) {
    self->op.len = (size_t)(a->offset & 07777);
    return pin_paths(self, a->arg, NULL, 0);
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
        .to_python = recv_to_python,
    },
    [ZK_OP_WRITE] = {
        .name = "write",
        .uring_opcode = IORING_OP_WRITE,
        .uring_prep = prep_rw,
        .attempt = attempt_write,
        .epoll_events = EPOLLOUT,
        .pin = pin_write,
        .to_python = count_to_python,
    },
    [ZK_OP_ACCEPT] = {
        .name = "accept",
        .eager = 1,
        .uring_multishot = 1,
        .uring_opcode = IORING_OP_ACCEPT,
        .uring_prep = prep_accept,
        .attempt = attempt_accept,
        .epoll_events = EPOLLIN,
        .pin = pin_accept,
        .to_python = accept_to_python,
    },
    [ZK_OP_CONNECT] = {
        .name = "connect",
        .uring_opcode = IORING_OP_CONNECT,
        .uring_prep = prep_connect,
        .attempt = attempt_connect,
        .epoll_events = EPOLLOUT,
        .pin = pin_connect,
        .to_python = none_to_python,
    },
    [ZK_OP_RECV] = {
        .name = "recv",
        .eager = 1,
        .port_buffer = 1,
        .uring_opcode = IORING_OP_RECV,
        .uring_prep = prep_sock,
        .attempt = attempt_recv,
        .epoll_events = EPOLLIN,
        .pin = pin_recv_lazy,
        .to_python = recv_lazy_to_python,
    },
    [ZK_OP_RECV_INTO] = {
        .name = "recv_into",
        .eager = 1,
        .uring_opcode = IORING_OP_RECV,
        .uring_prep = prep_sock,
        .attempt = attempt_recv,
        .epoll_events = EPOLLIN,
        .pin = pin_recv_into,
        .to_python = count_to_python,
    },
    [ZK_OP_SEND] = {
        .name = "send",
        .eager = 1,
        .uring_opcode = IORING_OP_SEND,
        .uring_prep = prep_sock,
        .attempt = attempt_send,
        .epoll_events = EPOLLOUT,
        .pin = pin_send,
        .to_python = count_to_python,
    },
    [ZK_OP_RECVMSG] = {
        .name = "recvmsg",
        .eager = 1,
        .uring_opcode = IORING_OP_RECVMSG,
        .uring_prep = prep_msg,
        .attempt = attempt_recvmsg,
        .epoll_events = EPOLLIN,
        .pin = pin_recvmsg,
        .to_python = recvmsg_to_python,
    },
    [ZK_OP_SENDMSG] = {
        .name = "sendmsg",
        .eager = 1,
        .uring_opcode = IORING_OP_SENDMSG,
        .uring_prep = prep_msg,
        .attempt = attempt_sendmsg,
        .epoll_events = EPOLLOUT,
        .pin = pin_sendmsg,
        .to_python = count_to_python,
    },
    [ZK_OP_SHUTDOWN] = {
        .name = "shutdown",
        .uring_opcode = IORING_OP_SHUTDOWN,
        .uring_prep = prep_shutdown,
        .attempt = attempt_shutdown,
        .epoll_events = EPOLLOUT,  /* never waits: shutdown does not block */
        .pin = pin_shutdown,
        .to_python = none_to_python,
    },
    [ZK_OP_CLOSE] = {
        .name = "close",
        .uring_opcode = IORING_OP_CLOSE,
        .uring_prep = prep_close,
        .attempt = attempt_close,
        .epoll_events = EPOLLOUT,  /* never waits */
        .closes_fd = 1,
        .pin = pin_nothing,
        .to_python = none_to_python,
    },
    [ZK_OP_POLL] = {
        .name = "poll",
        .eager = 1,
        .uring_opcode = IORING_OP_POLL_ADD,
        .uring_prep = prep_poll,
        .attempt = attempt_poll,
        .epoll_events = 0,  /* the op's own poll bits */
        .pin = pin_poll,
        .to_python = count_to_python,
    },
    [ZK_OP_READ_INTO] = {
        .name = "read_into",
        .uring_opcode = IORING_OP_READ,
        .uring_prep = prep_rw,
        .attempt = attempt_read,
        .epoll_events = EPOLLIN,
        .pin = pin_read_into,
        .to_python = count_to_python,
    },
    [ZK_OP_OPENAT] = {
        .name = "openat",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_OPENAT,
        .uring_prep = prep_openat,
        .attempt = attempt_openat,
        .epoll_events = EPOLLOUT,  /* never waits */
        .pin = pin_openat,
        .to_python = fd_to_python,
    },
    [ZK_OP_STATX] = {
        .name = "statx",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_STATX,
        .uring_prep = prep_statx,
        .attempt = attempt_statx,
        .epoll_events = EPOLLOUT,
        .pin = pin_statx,
        .to_python = statx_to_python,
    },
    [ZK_OP_FSYNC] = {
        .name = "fsync",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_FSYNC,
        .uring_prep = prep_fsync,
        .attempt = attempt_fsync,
        .epoll_events = EPOLLOUT,
        .pin = pin_nothing,
        .to_python = none_to_python,
    },
    [ZK_OP_RENAMEAT] = {
        .name = "renameat",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_RENAMEAT,
        .uring_prep = prep_renameat,
        .attempt = attempt_renameat,
        .epoll_events = EPOLLOUT,
        .pin = pin_renameat,
        .to_python = none_to_python,
    },
    [ZK_OP_UNLINKAT] = {
        .name = "unlinkat",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_UNLINKAT,
        .uring_prep = prep_unlinkat,
        .attempt = attempt_unlinkat,
        .epoll_events = EPOLLOUT,
        .pin = pin_unlinkat,
        .to_python = none_to_python,
    },
    [ZK_OP_MKDIRAT] = {
        .name = "mkdirat",
        .uring_optional = 1,
        .uring_opcode = IORING_OP_MKDIRAT,
        .uring_prep = prep_mkdirat,
        .attempt = attempt_mkdirat,
        .epoll_events = EPOLLOUT,
        .pin = pin_mkdirat,
        .to_python = none_to_python,
    },
};
