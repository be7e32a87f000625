/* port.c -- the backend-independent half of the completion port.
 *
 * Backend choice (the io_uring probe, AUTO resolution, ZOKIO_BACKEND), the
 * dispatch of zk_port_* to the backend's vtable, and the wake protocol that
 * both backends share.  The backends themselves are port_uring.c and
 * port_epoll.c; the contract is port.h.  Pure C.
 *
 * The wake protocol.  Each port has an eventfd (wake_fd) that its backend
 * watches, and an atomic flag `notified`:
 *
 *   zk_port_wake (any thread):  if exchange(notified, 1) was 0: write(wake_fd)
 *   zk_port_wait (owner):       if exchange(notified, 0) was 1: do not block;
 *                               ... block in the kernel ...;
 *                               exchange(notified, 0) on the way out
 *   zk_port_process (owner):    drain wake_fd if the kernel reported it
 *
 * A wake that runs while a wait is blocked wrote the eventfd, which ends the
 * wait.  A wake that runs outside a blocked wait leaves notified == 1, so the
 * next wait does not block.  Either way no wake is lost, and a wake that
 * finds the flag already set costs no syscall.  The price is an occasional
 * spurious return from wait (the eventfd can still be readable after the
 * flag was consumed); the scheduler re-checks its queues anyway.
 */
#define _GNU_SOURCE
#include "io/port_internal.h"

#include <linux/io_uring.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* ------------------------------------------------------------------------ */
/* The io_uring probe                                                        */

/* 0: not probed yet; 1: available; -errno: unavailable, and why. */
static atomic_int uring_probe_state = 0;
/* Bit k: row k is uring_optional and this kernel has its opcode.  Written
 * by the probe before uring_probe_state is published (release). */
static _Atomic uint64_t uring_optional_ok = 0;
_Static_assert(ZK_OP_COUNT <= 64, "uring_optional_ok has one bit per row");

static int probe_uring_once(void)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long fd = syscall(__NR_io_uring_setup, 4u, &p);
    if (fd < 0) {
        /* ENOSYS: old kernel or seccomp; EPERM/EACCES: seccomp or
         * kernel.io_uring_disabled; anything else: unusable all the same. */
        return errno ? errno : ENOSYS;
    }
    int reason = 0;
    /* What port_uring.c relies on beyond the opcodes. */
    const unsigned need_feat = IORING_FEAT_NODROP | IORING_FEAT_RW_CUR_POS
                               | IORING_FEAT_EXT_ARG;
    if ((p.features & need_feat) != need_feat)
        reason = EOPNOTSUPP;

    size_t sz = sizeof(struct io_uring_probe)
                + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, sz);
    if (!probe) {
        reason = ENOMEM;
    } else if (!reason) {
        if (syscall(__NR_io_uring_register, (int)fd, IORING_REGISTER_PROBE,
                    probe, 256) < 0) {
            reason = errno ? errno : EOPNOTSUPP;
        } else {
            /* The port's own opcodes, then every op's (op.h); a row marked
             * uring_optional is only recorded (uring_optional_ok). */
            int needed[2 + ZK_OP_COUNT];
            size_t n = 0;
            uint64_t optional_ok = 0;
            needed[n++] = IORING_OP_POLL_ADD;
            needed[n++] = IORING_OP_ASYNC_CANCEL;
            for (int code = 1; code < ZK_OP_COUNT; code++) {
                int opc = zk_op_descs[code].uring_opcode;
                if (!zk_op_descs[code].uring_optional)
                    needed[n++] = opc;
                else if (opc <= probe->last_op && opc < probe->ops_len
                         && (probe->ops[opc].flags & IO_URING_OP_SUPPORTED))
                    optional_ok |= (uint64_t)1 << code;
            }
            atomic_store_explicit(&uring_optional_ok, optional_ok, memory_order_relaxed);
            for (size_t i = 0; i < n; i++) {
                int opc = needed[i];
                if (opc > probe->last_op || opc >= probe->ops_len
                    || !(probe->ops[opc].flags & IO_URING_OP_SUPPORTED)) {
                    reason = EOPNOTSUPP;
                    break;
                }
            }
        }
    }
    free(probe);
    close((int)fd);
    return reason;
}

/* The probe runs on a throwaway thread.  Closing a ring makes the kernel's
 * io_ring_exit_work queue task work (TWA_SIGNAL) on every task that used the
 * ring, which interrupts that task's next blocking syscall with EINTR (seen
 * here: an epoll_wait 12 ms after the probe returned EINTR).  A thread that
 * has exited by then absorbs it instead of the caller. */
static void *probe_thread(void *arg)
{
    *(int *)arg = probe_uring_once();
    return NULL;
}

static int probe_uring(void)
{
    int reason = 0;
    pthread_t th;
    if (pthread_create(&th, NULL, probe_thread, &reason) != 0)
        return probe_uring_once();
    pthread_join(th, NULL);
    return reason;
}

int zk_port_uring_unavailable_reason(void)
{
    int s = atomic_load_explicit(&uring_probe_state, memory_order_acquire);
    if (s == 0) {
        /* Two threads may probe at once; both compute the same answer, the
         * first store wins and the other is harmless. */
        int reason = probe_uring();
        int want = reason ? -reason : 1;
        int expected = 0;
        if (!atomic_compare_exchange_strong_explicit(
                &uring_probe_state, &expected, want, memory_order_acq_rel,
                memory_order_acquire))
            want = expected;
        s = want;
    }
    return s == 1 ? 0 : -s;
}

int zk_port_uring_available(void)
{
    return zk_port_uring_unavailable_reason() == 0;
}

int zk_port_uring_supports(int opcode)
{
    const zk_op_desc *d = zk_op_desc_of(opcode);
    if (d == NULL || !zk_port_uring_available())
        return 0;
    if (!d->uring_optional)
        return 1;
    return (int)((atomic_load_explicit(&uring_optional_ok, memory_order_relaxed) >> opcode) & 1);
}

/* ------------------------------------------------------------------------ */
/* Backend choice                                                            */

static zk_backend backend_from_env(void)
{
    const char *v = getenv("ZOKIO_BACKEND");
    if (!v || !*v)
        return ZK_BACKEND_AUTO;
    if (!strcasecmp(v, "io_uring") || !strcasecmp(v, "uring")
        || !strcasecmp(v, "iouring"))
        return ZK_BACKEND_URING;
    if (!strcasecmp(v, "epoll"))
        return ZK_BACKEND_EPOLL;
    return ZK_BACKEND_AUTO; /* "auto" or unknown */
}

zk_backend zk_port_resolve_backend(zk_backend requested)
{
    if (requested == ZK_BACKEND_URING || requested == ZK_BACKEND_EPOLL)
        return requested;
    /* AUTO: the environment may force either backend.  A forced io_uring is
     * an explicit request: if io_uring is unusable, zk_port_open fails. */
    zk_backend env = backend_from_env();
    if (env != ZK_BACKEND_AUTO)
        return env;
    return zk_port_uring_available() ? ZK_BACKEND_URING : ZK_BACKEND_EPOLL;
}

const char *zk_port_backend_name(zk_backend backend)
{
    switch (backend) {
    case ZK_BACKEND_URING:
        return "io_uring";
    case ZK_BACKEND_EPOLL:
        return "epoll";
    default:
        return "auto";
    }
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                  */

#define COMMON(port) ((zk_port_common *)(port))

/* The port of this thread (each worker opens one, on its own thread). */
static _Thread_local zk_port *current_port;

zk_port *zk_port_current(void)
{
    return current_port;
}

void zk_port_get_stats(const zk_port *port, zk_port_stats *out)
{
    *out = ((const zk_port_common *)port)->stats;
}

zk_port *zk_port_open(zk_backend backend, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    switch (zk_port_resolve_backend(backend)) {
    case ZK_BACKEND_URING: {
        int reason = zk_port_uring_unavailable_reason();
        if (reason) {
            /* Explicit io_uring where the kernel (or seccomp) refuses it:
             * ENOSYS / EPERM / EACCES from setup, EOPNOTSUPP for a missing
             * opcode or feature. */
            *err = reason;
            return NULL;
        }
        zk_port *p = zk_port_uring_open(err);
        if (p)
            current_port = p;
        return p;
    }
    case ZK_BACKEND_EPOLL: {
        zk_port *p = zk_port_epoll_open(err);
        if (p)
            current_port = p;
        return p;
    }
    default:
        *err = EINVAL;
        return NULL;
    }
}

int zk_port_take_queued(zk_port *port, zk_op *op)
{
    if (port && COMMON(port)->vt->take_queued)
        return COMMON(port)->vt->take_queued(port, op);
    return -1;
}

void zk_port_forget_fd(zk_port *port, int fd, uint64_t dev, uint64_t ino)
{
    if (port && COMMON(port)->vt->forget_fd)
        COMMON(port)->vt->forget_fd(port, fd, dev, ino);
}

void zk_port_drain(zk_port *port)
{
    if (port && COMMON(port)->vt->drain)
        COMMON(port)->vt->drain(port);
}

void zk_port_close(zk_port *port)
{
    if (port) {
        if (current_port == port)
            current_port = NULL;
        COMMON(port)->vt->close(port);
    }
}

int zk_port_submit(zk_port *port, zk_op *op)
{
    zk_port_common *c = COMMON(port);
    if (c->closing)
        return ESHUTDOWN;
    if (!zk_op_desc_of(op->opcode))
        return EINVAL;
    if (!op->complete)
        return EINVAL;
    if (op->backend_flags & ZK_OPF_INFLIGHT)
        return EBUSY; /* the same op submitted twice */
    op->backend_next = op->backend_prev = NULL;
    op->backend_flags = ZK_OPF_INFLIGHT;
    op->backend_result = 0;
    int r = c->vt->submit(port, op);
    if (r == 0) {
        c->inflight++;
        c->stats.submitted++;
    }
    else
        op->backend_flags = 0;
    return r;
}

void zk_port_cancel(zk_port *port, zk_op *op)
{
    /* An op whose result is already known (queued for delivery) or whose
     * cancel was already issued needs nothing more. */
    if (!(op->backend_flags & ZK_OPF_INFLIGHT)
        || (op->backend_flags & (ZK_OPF_READY | ZK_OPF_CANCEL_SENT)))
        return;
    COMMON(port)->vt->cancel(port, op);
}

int zk_port_wait(zk_port *port, int64_t timeout_ns)
{
    return COMMON(port)->vt->wait(port, timeout_ns);
}

int zk_port_process(zk_port *port)
{
    return COMMON(port)->vt->process(port);
}

void zk_port_wake(zk_port *port)
{
    zk_port_common *c = COMMON(port);
    /* Cheap path: a wake is already pending. */
    if (atomic_load_explicit(&c->notified, memory_order_relaxed))
        return;
    if (atomic_exchange(&c->notified, 1) == 0) {
        uint64_t one = 1;
        ssize_t n;
        do {
            n = write(c->wake_fd, &one, sizeof one);
        } while (n < 0 && errno == EINTR);
        /* EAGAIN would mean the counter is at its maximum: already readable,
         * so the wait returns anyway. */
    }
}

size_t zk_port_inflight(const zk_port *port)
{
    return ((const zk_port_common *)port)->inflight;
}

zk_backend zk_port_backend(const zk_port *port)
{
    return ((const zk_port_common *)port)->backend;
}

/* ------------------------------------------------------------------------ */
/* Helpers for the backends                                                  */

void *zk_port_alloc(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, size) != 0)
        return NULL;
    memset(p, 0, size);
    return p;
}

int zk_port_common_init(zk_port_common *c, zk_backend backend,
                        const zk_port_vtable *vt)
{
    c->vt = vt;
    c->backend = backend;
    c->inflight = 0;
    c->closing = false;
    c->ready.head = c->ready.tail = NULL;
    atomic_init(&c->notified, 0);
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0)
        return errno ? errno : EMFILE;
    return 0;
}

void zk_port_common_fini(zk_port_common *c)
{
    if (c->wake_fd >= 0) {
        close(c->wake_fd);
        c->wake_fd = -1;
    }
}

bool zk_port_wake_consume(zk_port_common *c)
{
    if (!atomic_load_explicit(&c->notified, memory_order_relaxed))
        return false;
    return atomic_exchange(&c->notified, 0) != 0;
}

void zk_port_wake_drain(zk_port_common *c)
{
    uint64_t v;
    ssize_t n;
    do {
        n = read(c->wake_fd, &v, sizeof v);
    } while (n < 0 && errno == EINTR);
    /* EAGAIN: already drained (a coalesced or spurious report). */
}

int zk_port_deliver_ready(zk_port_common *c)
{
    /* Detach the current batch first: callbacks may submit, cancel or even
     * post new results; those go to c->ready for the next call. */
    zk_op_list batch = c->ready;
    c->ready.head = c->ready.tail = NULL;
    int n = 0;
    zk_op *op;
    while ((op = zk_op_list_pop(&batch)) != NULL) {
        int64_t result = op->backend_result;
        uint32_t flags = op->backend_flags;
        uint16_t bid = op->backend_bid;
        op->backend_flags = 0; /* the op leaves the port */
        c->inflight--;
        c->stats.completed++;
        n++;
        op->complete(op, result); /* may free the op */
        if (flags & ZK_OPF_PBUF)
            c->vt->recycle((zk_port *)c, bid);
    }
    return n;
}
