/* port_epoll.c -- the epoll backend of the completion port (port.h).
 *
 * epoll reports readiness; the port promises completions.  The translation:
 * an op is first tried with its plain non-blocking syscall (the scheduler's
 * fds are O_NONBLOCK).  Anything but EAGAIN is its result.  On EAGAIN the op
 * waits in its fd's queue (readers or writers, FIFO) and the fd is registered
 * for the union of what its queues need; on readiness the queue's head ops
 * are retried, in order, until one says EAGAIN again.  Results are queued on
 * the port and handed to `complete` only in zk_port_process (or close), never
 * inside submit or cancel, exactly as with io_uring.
 *
 * The kernel quirks this file relies on
 * -------------------------------------
 *
 * EPOLLONESHOT, always.  After one event the registration is disarmed until
 * we EPOLL_CTL_MOD it.  We re-arm after retrying the queues, with the
 * interest recomputed from what is still waiting, so an fd never reports
 * readiness nobody waits for, and the interest of several ops on one fd (a
 * reader and a writer, or two readers) is one registration: epoll keys its
 * registrations by (fd, open file description), and a second EPOLL_CTL_ADD
 * of the same fd fails with EEXIST.  Hence the per-fd state (a small hash
 * table keyed by fd) holding both queues.  (trio uses the same rule: "we
 * always use EPOLLONESHOT".)
 *
 * EPOLL_CTL_DEL before the state goes.  epoll forgets an fd only when the
 * open file description dies, not when the fd number is closed: with a dup()
 * alive, a registration for a closed fd keeps firing, now for a number that
 * may belong to another file (libuv #4323).  So a registration that is
 * still armed when its fd's last waiter leaves (a cancel) is DELeted
 * synchronously; one whose EPOLLONESHOT already fired is disarmed and can
 * never fire again, so it stays (saving an ADD and a DEL per wait) until a
 * CLOSE op or the port's close DELs it (fd_forget).  ENOENT or EBADF from
 * DEL/MOD mean the fd was closed under us; we re-ADD or ignore.
 *
 * Regular files cannot be polled: EPOLL_CTL_ADD answers EPERM.  They never
 * say EAGAIN either, so they never reach epoll here: the first (blocking,
 * page-cache speed) pread/pwrite is the completion.  The scheduler sends
 * file I/O to its blocking pool on this backend when that matters.  Should a
 * pollable-looking fd still say EAGAIN and then EPERM, the op completes with
 * -EAGAIN rather than wait forever.
 *
 * Wake channel: the port's eventfd sits in the epoll set, level-triggered,
 * tagged with a data value no fd can have; process() drains it.
 *
 * POLL ops (row epoll_events 0) wait in a third queue per fd, each for its
 * own poll bits; they are retried before the readers so that they see the
 * readiness a reader then consumes, as io_uring's POLL_ADD does.
 *
 * CLOSE (row closes_fd): before close(2), the fd's waiters in this port end
 * with -EBADF and the fd is DELeted while its number still names it.  Ops
 * waiting on the fd in another worker's port are not reached here (their
 * registration silently goes with the file if this was its last fd): the Op
 * leaf cancels them through their workers (op_leaf.c, the registry of ops
 * by fd).
 *
 * An op the Op leaf already tried (op->tried: its eager attempt said
 * EAGAIN) goes straight to its queue: arming EPOLLONESHOT reports readiness
 * that arrived in between, so nothing is missed.
 */
#define _GNU_SOURCE
#include "io/port_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define TAG_WAKE UINT64_MAX /* epoll data of the wake eventfd */
#define MAX_EVENTS 64
#define INITIAL_BUCKETS 64

typedef struct fd_state {
    int fd;
    bool registered;       /* in the epoll set */
    uint32_t armed;        /* interest armed now (0 after the oneshot fired) */
    zk_op_list readers;    /* FIFO of ops waiting for EPOLLIN (READ) */
    zk_op_list writers;    /* FIFO of ops waiting for EPOLLOUT (WRITE) */
    zk_op_list pollers;    /* POLL ops (row epoll_events 0): each waits for
                              its own poll bits, independently of the rest */
    struct fd_state *next; /* hash chain */
} fd_state;

typedef struct epoll_port {
    zk_port_common c; /* must be first */
    int epfd;
    fd_state **buckets; /* chained hash table keyed by fd */
    size_t nbuckets;    /* power of two */
    size_t nstates;
    size_t waiting; /* ops in some fd's readers/writers queue */
    bool wake_seen; /* the wake eventfd was reported readable */
    /* The last epoll_wait since process() took everything the kernel had
     * (fewer than MAX_EVENTS): process() need not ask again.  The scheduler
     * always waits right before it processes, so without this every wake
     * cost a second, empty epoll_wait. */
    bool drained;
    struct epoll_event events[MAX_EVENTS];
} epoll_port;

#define E(port) ((epoll_port *)(port))

/* ------------------------------------------------------------------------ */
/* Per-fd state                                                              */

static inline size_t bucket_of(const epoll_port *e, int fd)
{
    return (size_t)(unsigned)fd & (e->nbuckets - 1); /* fds are dense */
}

static fd_state *fd_lookup(epoll_port *e, int fd)
{
    for (fd_state *s = e->buckets[bucket_of(e, fd)]; s; s = s->next)
        if (s->fd == fd)
            return s;
    return NULL;
}

static void fd_grow(epoll_port *e)
{
    size_t nb = e->nbuckets * 2;
    fd_state **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < e->nbuckets; i++) {
        fd_state *s = e->buckets[i];
        while (s) {
            fd_state *nx = s->next;
            size_t j = (size_t)(unsigned)s->fd & (nb - 1);
            s->next = b[j];
            b[j] = s;
            s = nx;
        }
    }
    free(e->buckets);
    e->buckets = b;
    e->nbuckets = nb;
}

static fd_state *fd_create(epoll_port *e, int fd)
{
    fd_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = fd;
    size_t b = bucket_of(e, fd);
    s->next = e->buckets[b];
    e->buckets[b] = s;
    if (++e->nstates > e->nbuckets)
        fd_grow(e);
    return s;
}

static void fd_remove(epoll_port *e, fd_state *st)
{
    fd_state **pp = &e->buckets[bucket_of(e, st->fd)];
    while (*pp != st)
        pp = &(*pp)->next;
    *pp = st->next;
    e->nstates--;
    free(st);
}

static int zk_epoll_ctl(epoll_port *e, int epfd, int op, int fd, struct epoll_event *ev)
{
    e->c.stats.ctls++;
    return epoll_ctl(epfd, op, fd, ev);
}

/* Make the registration match the queues: MOD/ADD with the union of the
 * interests, or DEL when nobody waits.  Returns 0 or a positive errno. */
static int fd_update_interest(epoll_port *e, fd_state *st)
{
    uint32_t want = (st->readers.head ? (uint32_t)EPOLLIN : 0u)
                    | (st->writers.head ? (uint32_t)EPOLLOUT : 0u);
    for (zk_op *p = st->pollers.head; p; p = p->backend_next)
        want |= (uint32_t)p->flags & (EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDHUP);
    if (!want) {
        if (st->registered && st->armed) {
            /* Still armed (its waiter was cancelled): DEL, so that it does
             * not fire for nobody, or for a later file with this number. */
            zk_epoll_ctl(e, e->epfd, EPOLL_CTL_DEL, st->fd, NULL);
            st->registered = false;
        }
        /* Disarmed (EPOLLONESHOT fired): keep the registration, the next
         * waiter re-arms it with one MOD instead of an ADD and a DEL. */
        st->armed = 0;
        return 0;
    }
    if (st->registered && st->armed == want)
        return 0; /* already armed for exactly this */
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want | EPOLLONESHOT;
    ev.data.u64 = (uint64_t)(uint32_t)st->fd;
    int r;
    if (st->registered) {
        r = zk_epoll_ctl(e, e->epfd, EPOLL_CTL_MOD, st->fd, &ev);
        if (r < 0 && errno == ENOENT) /* fd closed and reopened under us */
            r = zk_epoll_ctl(e, e->epfd, EPOLL_CTL_ADD, st->fd, &ev);
    } else {
        r = zk_epoll_ctl(e, e->epfd, EPOLL_CTL_ADD, st->fd, &ev);
        if (r < 0 && errno == EEXIST)
            r = zk_epoll_ctl(e, e->epfd, EPOLL_CTL_MOD, st->fd, &ev);
    }
    if (r < 0) {
        int err = errno;
        st->registered = false;
        st->armed = 0;
        return err;
    }
    st->registered = true;
    st->armed = want;
    return 0;
}

/* Forget an fd that nobody waits on: DEL whatever registration it has
 * (before the fd is closed) and drop its state. */
static void fd_forget(epoll_port *e, fd_state *st)
{
    if (st->registered)
        zk_epoll_ctl(e, e->epfd, EPOLL_CTL_DEL, st->fd, NULL);
    fd_remove(e, st);
}

/* An fd whose waiters all left keeps its state and its disarmed
 * registration (re-armed by the next waiter); only an armed one is DELeted
 * (fd_update_interest).  A disarmed registration never fires, so a stale
 * one -- the fd closed with os.close(), its file kept alive by a dup() --
 * is harmless, and a new file with the same number is ADDed when MOD says
 * ENOENT.  States are kept per fd number, so they are bounded by the fd
 * table; CLOSE ops and zk_port_close drop them (fd_forget). */
static void fd_release_if_idle(epoll_port *e, fd_state *st)
{
    if (!st->readers.head && !st->writers.head && !st->pollers.head)
        fd_update_interest(e, st);
}

/* ------------------------------------------------------------------------ */
/* Ops                                                                       */

/* The op's plain non-blocking syscall (its row in op.h). */
static inline int64_t do_io(zk_op *op)
{
    return zk_op_descs[op->opcode].attempt(op);
}

/* An op that waits for EPOLLOUT queues with the writers, a POLL with the
 * pollers, any other with the readers (its row says which readiness it
 * needs). */
static inline zk_op_list *queue_of(fd_state *st, const zk_op *op)
{
    uint32_t ev = zk_op_descs[op->opcode].epoll_events;
    if (ev == 0)
        return &st->pollers;
    return ev & EPOLLOUT ? &st->writers : &st->readers;
}

/* Retry every poller: each waits for its own bits, none blocks the next. */
static void run_pollers(epoll_port *e, zk_op_list *q)
{
    zk_op *op = q->head;
    while (op != NULL) {
        zk_op *next = op->backend_next;
        int64_t r = do_io(op);
        if (r != -EAGAIN) {
            zk_op_list_unlink(q, op);
            e->waiting--;
            zk_port_post(&e->c, op, r);
        }
        op = next;
    }
}

/* Retry a queue's ops in order until one would block. */
static void run_queue(epoll_port *e, zk_op_list *q)
{
    zk_op *op;
    while ((op = q->head) != NULL) {
        int64_t r = do_io(op);
        if (r == -EAGAIN)
            break;
        zk_op_list_unlink(q, op);
        e->waiting--;
        zk_port_post(&e->c, op, r);
    }
}

/* Fail every op of a queue with `result` (registration trouble). */
static void fail_queue(epoll_port *e, zk_op_list *q, int64_t result)
{
    zk_op *op;
    while ((op = zk_op_list_pop(q)) != NULL) {
        e->waiting--;
        zk_port_post(&e->c, op, result);
    }
}

static void rearm_or_fail(epoll_port *e, fd_state *st)
{
    int err = fd_update_interest(e, st);
    if (err) {
        /* Cannot watch this fd: complete its waiters rather than strand
         * them.  EPERM: not pollable, report what the syscall said. */
        int64_t res = err == EPERM ? -EAGAIN : -(int64_t)err;
        fail_queue(e, &st->readers, res);
        fail_queue(e, &st->writers, res);
        fail_queue(e, &st->pollers, res);
    }
    fd_release_if_idle(e, st);
}

static void handle_event(epoll_port *e, const struct epoll_event *ev)
{
    if (ev->data.u64 == TAG_WAKE) {
        e->wake_seen = true;
        return;
    }
    fd_state *st = fd_lookup(e, (int)(uint32_t)ev->data.u64);
    if (!st)
        return; /* stale: the state went away after epoll_wait filled ev */
    st->armed = 0; /* EPOLLONESHOT disarmed it */
    uint32_t m = ev->events;
    /* Pollers first: they report the readiness a reader may then consume
     * (as io_uring does: a poll fires on the wakeup itself). */
    if (st->pollers.head)
        run_pollers(e, &st->pollers);
    if (m & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        run_queue(e, &st->readers);
    if (m & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        run_queue(e, &st->writers);
    rearm_or_fail(e, st);
}

/* 0: the kernel has epoll_pwait2 (5.11), whose timeout is in ns; 1: it
 * refused it, epoll_wait's whole milliseconds are used. */
static int no_pwait2;

/* timeout_ns < 0: wait for an event; 0: do not block.  A timer tick is
 * shorter than a millisecond, so a timed wait rounded to epoll_wait's whole
 * ms would make timers late by up to one: epoll_pwait2 waits the ns. */
static int poll_events(epoll_port *e, int64_t timeout_ns)
{
    int n = -1;
    if (timeout_ns > 0 && !__atomic_load_n(&no_pwait2, __ATOMIC_RELAXED)) {
        struct timespec ts = {timeout_ns / 1000000000ll, timeout_ns % 1000000000ll};
        n = epoll_pwait2(e->epfd, e->events, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno == ENOSYS)
            __atomic_store_n(&no_pwait2, 1, __ATOMIC_RELAXED);
    }
    if (n < 0 && (timeout_ns <= 0 || __atomic_load_n(&no_pwait2, __ATOMIC_RELAXED))) {
        /* Round up: returning early would make the caller spin. */
        int64_t ms = timeout_ns < 0 ? -1 : (timeout_ns + 999999) / 1000000;
        n = epoll_wait(e->epfd, e->events, MAX_EVENTS, ms > 0x7fffffff ? 0x7fffffff : (int)ms);
    }
    e->c.stats.enters++;
    if (n < 0)
        return -errno;
    e->drained = n < MAX_EVENTS;
    for (int i = 0; i < n; i++)
        handle_event(e, &e->events[i]);
    return n;
}

/* ------------------------------------------------------------------------ */
/* The vtable                                                                */

static int e_submit(zk_port *port, zk_op *op)
{
    epoll_port *e = E(port);
    fd_state *st = fd_lookup(e, op->fd);
    if (st && zk_op_descs[op->opcode].closes_fd) {
        /* The fd is about to go: end its waiters (-EBADF) and DEL it while
         * the number still names it.  Ops on other workers' ports are
         * cancelled by the Op leaf (op_leaf.c). */
        fail_queue(e, &st->readers, -EBADF);
        fail_queue(e, &st->writers, -EBADF);
        fail_queue(e, &st->pollers, -EBADF);
        fd_forget(e, st);
        st = NULL;
    }
    if (st && queue_of(st, op)->head && queue_of(st, op) != &st->pollers) {
        /* Others wait in this direction: keep FIFO order (two writes to a
         * stream must not overtake each other).  The registration already
         * covers this direction. */
        zk_op_list_push(queue_of(st, op), op);
        e->waiting++;
        return 0;
    }
    /* An op whose caller just tried it (op->tried) waits at once: arming
     * the registration reports readiness that arrived since. */
    int64_t r = op->tried ? -EAGAIN : do_io(op);
    op->tried = 0;
    if (r != -EAGAIN) {
        zk_port_post(&e->c, op, r); /* delivered by process() */
        return 0;
    }
    if (!st) {
        st = fd_create(e, op->fd);
        if (!st)
            return ENOMEM;
    }
    zk_op_list_push(queue_of(st, op), op);
    e->waiting++;
    rearm_or_fail(e, st);
    return 0;
}

static void e_cancel(zk_port *port, zk_op *op)
{
    epoll_port *e = E(port);
    fd_state *st = fd_lookup(e, op->fd);
    if (!st)
        return; /* not waiting: its result is already queued */
    zk_op_list_unlink(queue_of(st, op), op);
    e->waiting--;
    zk_port_post(&e->c, op, -ECANCELED);
    rearm_or_fail(e, st);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int e_wait(zk_port *port, int64_t timeout_ns)
{
    epoll_port *e = E(port);
    bool woken = zk_port_wake_consume(&e->c);
    bool nonblock = timeout_ns == 0 || woken || e->c.ready.head;
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    int err = 0;
    for (;;) {
        int64_t left;
        if (nonblock) {
            left = 0;
        } else if (timeout_ns < 0) {
            left = -1;
        } else {
            left = deadline - now_ns();
            if (left <= 0)
                break;
        }
        int n = poll_events(e, left);
        if (n < 0) {
            if (n != -EINTR)
                err = -n;
            break;
        }
        if (nonblock || e->c.ready.head || e->wake_seen)
            break;
        /* Spurious readiness (the retry said EAGAIN again) or the timeout
         * rounded down: keep waiting until the deadline. */
    }
    zk_port_wake_consume(&e->c);
    return err;
}

static int e_process(zk_port *port)
{
    epoll_port *e = E(port);
    /* Readiness that arrived since the last wait, unless that wait was just
     * now and took all there was: what arrives after it is left for the
     * next wait, which is never far (maintenance or park). */
    if (e->waiting && !e->drained)
        poll_events(e, 0);
    e->drained = false;
    if (e->wake_seen) {
        e->wake_seen = false;
        zk_port_wake_drain(&e->c);
    }
    return zk_port_deliver_ready(&e->c);
}

static void e_free(epoll_port *e)
{
    if (e->buckets) {
        for (size_t i = 0; i < e->nbuckets; i++) {
            fd_state *s = e->buckets[i];
            while (s) {
                fd_state *nx = s->next;
                free(s);
                s = nx;
            }
        }
        free(e->buckets);
    }
    if (e->epfd >= 0)
        close(e->epfd);
    zk_port_common_fini(&e->c);
    free(e);
}

static void e_close(zk_port *port)
{
    epoll_port *e = E(port);
    e->c.closing = true;
    /* Nothing is in the kernel: cancel every waiter, DEL every fd. */
    for (size_t i = 0; i < e->nbuckets; i++) {
        fd_state *s;
        while ((s = e->buckets[i]) != NULL) {
            fail_queue(e, &s->readers, -ECANCELED);
            fail_queue(e, &s->writers, -ECANCELED);
            fail_queue(e, &s->pollers, -ECANCELED);
            fd_forget(e, s);
        }
    }
    while (e->c.ready.head)
        zk_port_deliver_ready(&e->c);
    e_free(e);
}

static const zk_port_vtable epoll_vtable = {
    .close = e_close,
    .submit = e_submit,
    .cancel = e_cancel,
    .wait = e_wait,
    .process = e_process,
    .recycle = NULL,
};

zk_port *zk_port_epoll_open(int *err)
{
    epoll_port *e = zk_port_alloc(sizeof *e);
    if (!e) {
        *err = ENOMEM;
        return NULL;
    }
    e->epfd = -1;
    e->c.wake_fd = -1;
    int rc = zk_port_common_init(&e->c, ZK_BACKEND_EPOLL, &epoll_vtable);
    if (!rc) {
        e->nbuckets = INITIAL_BUCKETS;
        e->buckets = calloc(e->nbuckets, sizeof *e->buckets);
        if (!e->buckets)
            rc = ENOMEM;
    }
    if (!rc) {
        e->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (e->epfd < 0)
            rc = errno;
    }
    if (!rc) {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN; /* level-triggered: drained by process() */
        ev.data.u64 = TAG_WAKE;
        if (zk_epoll_ctl(e, e->epfd, EPOLL_CTL_ADD, e->c.wake_fd, &ev) < 0)
            rc = errno;
    }
    if (rc) {
        e_free(e);
        *err = rc;
        return NULL;
    }
    return (zk_port *)e;
}
