/* port_uring.c -- the io_uring backend of the completion port (port.h).
 *
 * Raw syscalls, no liburing.  One ring per worker thread, created on it.
 *
 * The kernel quirks this file relies on
 * -------------------------------------
 *
 * Setup flags.  We ask for SINGLE_ISSUER (6.0), DEFER_TASKRUN (6.1),
 * COOP_TASKRUN + TASKRUN_FLAG (5.19) and SUBMIT_ALL (5.18) and step down to
 * fewer flags whenever io_uring_setup says EINVAL (older kernel, or a
 * combination it rejects).  SINGLE_ISSUER makes the kernel skip its own
 * locking on submission; in exchange every io_uring_enter must come from the
 * thread that created the ring, any other thread gets -EEXIST.  That is why
 * zk_port_wake never enters the ring: it only writes an eventfd.
 *
 * DEFER_TASKRUN.  Completions are not posted to the CQ ring when the I/O
 * finishes; they wait as task work until the owner calls io_uring_enter with
 * IORING_ENTER_GETEVENTS.  So "is the CQ empty?" is not "is nothing done?":
 * every wait enters with GETEVENTS (even with a zero timeout when the kernel
 * set IORING_SQ_TASKRUN, or always when TASKRUN_FLAG was refused), and
 * process() enters with GETEVENTS when sq.flags says task work or a CQ
 * overflow is pending.  CQ overflow: with FEAT_NODROP the kernel parks
 * completions that did not fit in an internal list and raises
 * IORING_SQ_CQ_OVERFLOW; entering with GETEVENTS after we made room flushes
 * them back into the ring.  Old kernels answer -EBUSY to a submission while
 * the overflow list is non-empty; we reap and retry.
 *
 * Memory ordering with the kernel.  We write SQEs, then store-release the SQ
 * tail; the kernel's load-acquire of the tail then sees whole SQEs.  We
 * load-acquire the CQ tail before reading CQEs (the kernel store-released it
 * after writing them) and store-release the CQ head after we are done
 * reading, so the kernel never overwrites a CQE we still read.  The SQ array
 * is filled once (array[i] = i) at setup.
 *
 * Why POLL_ADD for the wake eventfd.  A READ on an eventfd would also work
 * as a wake channel, but a 6.15 regression made eventfd reads issued through
 * io_uring block instead of arming a poll (found by libxev).  So we watch the
 * eventfd with a multishot POLL_ADD (5.13: IORING_POLL_ADD_MULTI; each CQE
 * carries IORING_CQE_F_MORE while the poll stays armed) and drain it with a
 * plain non-blocking read(2) in process().  When a wake CQE arrives without
 * F_MORE the poll has ended and process() arms a new one (single-shot if the
 * kernel rejected multishot with -EINVAL).
 *
 * Cancellation gets two CQEs.  IORING_OP_ASYNC_CANCEL has its own CQE
 * (0, -ENOENT or -EALREADY) which we tag user_data = 0 and ignore; the
 * cancelled op then completes with its own CQE (-ECANCELED, or its real
 * result if it won the race).  The op's buffer belongs to the kernel until
 * that second CQE, so `complete` runs only then.
 *
 * Drain before unmap.  Closing the ring fd does cancel outstanding requests,
 * but asynchronously: a read still in an io-wq worker can write into its
 * buffer after close(2) returned.  The caller frees buffers right after
 * `complete`, so zk_port_close cancels every op, then waits (GETEVENTS with a
 * timeout, re-sending cancels every second) until each op's own CQE came
 * back, and only then unmaps the rings and closes the fd.
 *
 * Closing a ring interrupts its owner later.  After close(ring_fd) the
 * kernel's io_ring_exit_work queues task work (TWA_SIGNAL) on every task that
 * used the ring; it makes that thread's next interruptible sleep (an
 * epoll_wait, a futex) return EINTR, some milliseconds after we returned.
 * Harmless at worker exit; it is why the availability probe (port.c) runs on
 * a throwaway thread, and why waits must treat EINTR as a spurious return.
 *
 * user_data.  A CQE's user_data is the zk_op pointer.  Two tags that no
 * pointer can equal mark our own requests: 0 (cancel SQEs; their CQEs are
 * dropped) and 1 (the wake poll).
 *
 * Offsets.  With FEAT_RW_CUR_POS (5.6), off = -1 means "the file position"
 * for READ/WRITE, which is what op->offset == -1 asks for (prep_rw, op.c).
 *
 * What each op puts in its SQE is its row in op.h's table: this file writes
 * the opcode and user_data and lets the row fill in the rest.
 *
 * Batching.  zk_port_submit only writes SQEs into the ring; nothing enters
 * the kernel until the scheduler's next zk_port_wait (its maintenance pass,
 * or parking), which hands every SQE of the pass to the kernel in one
 * io_uring_enter, and zk_port_process reaps every CQE there is.  get_sqe
 * enters early only when the SQ (256 entries) is full.  port_stats() counts
 * enters and SQEs (test_net_ops.py checks 50 ops -> a few enters).
 *
 * Provided buffers.  A row with port_buffer (RECV) may be submitted without
 * a buffer: the SQE says IOSQE_BUFFER_SELECT and the kernel takes one of the
 * port's PBUF_ENTRIES buffers (IORING_REGISTER_PBUF_RING, 5.19) only when
 * data arrives, so an idle receive pins no memory.  The CQE names the buffer
 * (IORING_CQE_F_BUFFER, id in the upper 16 bits); op->buf points into it
 * while `complete` copies the data out, and zk_port_deliver_ready hands it
 * back to the ring right after (recycle).  When the ring is empty the
 * receive fails with -ENOBUFS although data waits: process() resubmits it
 * into memory malloc'd for it (op->buf_owned, freed by the op's owner).  A
 * kernel that refuses the ring gets malloc'd memory at submit instead.
 *
 * Multishot ACCEPT.  A row with uring_multishot (ACCEPT) never goes to the
 * kernel by itself: the port keeps one record per listening fd
 * (ms_listener) whose single ACCEPT SQE with IORING_ACCEPT_MULTISHOT (5.19)
 * yields a CQE per connection while IORING_CQE_F_MORE says it is armed.
 * An ACCEPT op parks in the record (ZK_OPF_PARKED) and the next CQE is
 * its connection.  The SQE carries no address buffer (one buffer cannot
 * serve many CQEs): the peer address is getpeername()'s.
 *
 * A connection that arrives with nobody waiting on this port goes to the
 * listener's accept_share: one queue per listening file, shared by its
 * records on every port, because the accepting task may have moved to
 * another worker since its last accept.  Ports whose records have ops
 * parked are woken (share_pending, zk_port_wake) and take what was shared.
 * An ACCEPT takes the oldest shared connection before it parks, and
 * zk_port_take_queued lets the op leaf take one without suspending: a busy
 * server accepts a burst at once instead of one connection per reap, a
 * run-queue pass apart.  A record with nobody waiting ends its SQE when
 * another port's record waits (the acceptor is there now), when 256 are
 * shared, or when its last parked op is cancelled; the kernel's backlog
 * holds the rest, and an idle listener is not held by the kernel.  A
 * CLOSE of the fd ends the waiters (-EBADF) and closes what is shared;
 * zk_port_close lets go of the record (the last port to let go closes what
 * nobody took) and waits (2 s at most) for each SQE's last CQE, which may
 * still carry a connection to close.  A listener closed with plain close(2)
 * while its SQE is armed stays open in the kernel (the SQE holds the
 * file): zokio.net sends zk_port_forget_fd to every port before closing a
 * listener, and the record whose file that is (fd number and identity) is
 * retired like a CLOSE's.
 *
 * CLOSE.  A row with closes_fd is preceded by an ASYNC_CANCEL keyed on the
 * fd (IORING_ASYNC_CANCEL_FD | _ALL, 5.19): every op of this ring on that
 * file ends.  Those ops get -ECANCELED without us having asked (no
 * ZK_OPF_CANCEL_SENT), which handle_cqe reports as -EBADF: the fd was
 * closed under them.  Ops on other workers' rings are not reached here
 * (they hold their own reference to the file): the Op leaf cancels them
 * through their workers before the CLOSE is submitted (op_leaf.c, the
 * registry of ops by fd).
 */
#define _GNU_SOURCE
#include "io/port_internal.h"

#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Constants newer than the oldest header we build against. */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SQ_CQ_OVERFLOW
#define IORING_SQ_CQ_OVERFLOW (1U << 1)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_POLL_ADD_MULTI
#define IORING_POLL_ADD_MULTI (1U << 0)
#endif
#ifndef IORING_CQE_F_MORE
#define IORING_CQE_F_MORE (1U << 1)
#endif
#ifndef IORING_FEAT_SINGLE_MMAP
#define IORING_FEAT_SINGLE_MMAP (1U << 0)
#endif

/* struct io_uring_getevents_arg (5.11), spelled out so that we do not depend
 * on the header having it. */
struct zk_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t pad;
    uint64_t ts;
};

#define TAG_IGNORE 0ull /* cancel SQEs: their own CQE is dropped */
#define TAG_WAKE 1ull   /* the POLL_ADD on the wake eventfd */

/* The provided-buffer ring: PBUF_ENTRIES buffers of PBUF_SIZE bytes per
 * port, group PBUF_BGID.  Anonymous memory: a buffer costs resident memory
 * only once the kernel wrote into it. */
#define PBUF_ENTRIES 32u
#define PBUF_SIZE 65536u
#define PBUF_BGID 0

#define SQ_ENTRIES 256u
#define CQ_ENTRIES 4096u
#define CLOSE_POLL_NS 100000000ll   /* close(): wait slice, 100 ms */
#define CLOSE_RECANCEL_SLICES 10    /* close(): re-send cancels every 1 s */

/* Connections accepted for a listening file that no op on the accepting
 * port was waiting for.  One per file (dev, ino), shared by that file's
 * records on every port, so that an ACCEPT on any worker finds them: the
 * acceptor may have moved to another worker since its last accept, and a
 * connection kept by the old worker's port alone would wait for it forever.
 * Everything in it is under share_lock (a plain mutex: nothing done while
 * holding it can block or call into Python). */
typedef struct accept_share {
    dev_t dev;
    ino_t ino;
    int refs;            /* records (any port) that point here */
    bool dead;           /* the file was closed: connections are closed */
    int *fds;            /* FIFO of accepted fds */
    size_t head, n, cap; /* n is also read without the lock (a hint) */
    struct ms_listener *waiting; /* records with parked ops, any port */
    struct accept_share *next;
} accept_share;

static pthread_mutex_t share_lock = PTHREAD_MUTEX_INITIALIZER;
static accept_share *shares;

/* A listening fd served by a multishot ACCEPT (rows with uring_multishot).
 * Its SQE's user_data is the record's address with bit 0 set (op records
 * are 8-aligned, so no op has that bit; TAG_WAKE is 1, which no record is). */
typedef struct ms_listener {
    int fd;
    dev_t dev;           /* which file the fd named when the record was made: */
    ino_t ino;           /* a later file with the same number is another one */
    bool armed;          /* the multishot SQE is in the kernel */
    bool cancel_sent;    /* asked the kernel to end it */
    bool need_arm;       /* process() must (re)arm it: ops wait */
    bool closed;         /* its fd was closed: unlinked, freed once !armed */
    bool single;         /* the kernel refused multishot: one-shot SQEs */
    bool in_waiting;     /* linked in share->waiting (share_lock) */
    zk_op_list waiters;  /* ops parked here (ZK_OPF_PARKED), FIFO */
    accept_share *share; /* NULL once retired */
    struct uring_port *port;
    struct ms_listener *waiting_next; /* share->waiting (share_lock) */
    struct ms_listener *next;
} ms_listener;

#define MS_TAG 1ull
#define MS_READY_MAX 256u  /* shared connections before SQEs are ended */

typedef struct uring_port {
    zk_port_common c; /* must be first */
    int ring_fd;
    unsigned setup_flags;
    unsigned features;

    /* Mappings.  cq_ring == sq_ring when FEAT_SINGLE_MMAP. */
    void *sq_ring;
    size_t sq_ring_sz;
    void *cq_ring;
    size_t cq_ring_sz;
    struct io_uring_sqe *sqes;
    size_t sqes_sz;

    /* SQ: the kernel writes khead; we write ktail. */
    unsigned *sq_khead;
    unsigned *sq_ktail;
    unsigned *sq_kflags;
    unsigned sq_mask;
    unsigned sq_entries;
    unsigned sq_tail; /* our copy of ktail (we are its only writer) */

    /* CQ: the kernel writes ktail; we write khead. */
    unsigned *cq_khead;
    unsigned *cq_ktail;
    struct io_uring_cqe *cqes;
    unsigned cq_mask;

    /* Ops whose own CQE has not been reaped yet (the kernel may still touch
     * their buffers).  Linked through backend_next/backend_prev. */
    zk_op_list kernel;
    size_t deferred_cancels; /* ops with ZK_OPF_CANCEL_DEFERRED */

    /* Provided buffers (IORING_REGISTER_PBUF_RING, 5.19); pbuf_ring NULL
     * when the kernel refused it (ops then get malloc'd memory at submit). */
    struct io_uring_buf_ring *pbuf_ring;
    size_t pbuf_ring_sz;
    char *pbuf_mem;
    uint16_t pbuf_tail;
    zk_op_list nobufs;   /* -ENOBUFS: resubmitted by process() */

    ms_listener *listeners; /* open (not closed) multishot listeners */
    ms_listener *ms_zombies; /* closed, their SQE not ended yet */
    size_t ms_armed;        /* multishot SQEs in the kernel (all records) */
    size_t ms_need_arm;     /* records with need_arm */
    int share_pending;      /* atomic: another port shared connections for
                               a record of ours with waiters */

    bool wake_armed;     /* a POLL_ADD on wake_fd is in the kernel / SQ */
    bool wake_multishot; /* false once the kernel rejected POLL_ADD_MULTI */
    bool wake_seen;      /* a wake CQE was reaped: drain wake_fd */
    int wake_errors;     /* consecutive failed wake polls */
    bool drain_leaked;   /* u_drain could not wait for every op: keep the
                            ring and the buffers mapped forever */
} uring_port;

#define U(port) ((uring_port *)(port))

/* ------------------------------------------------------------------------ */
/* Syscalls and ring access                                                  */

static int sys_enter(zk_port_common *c, int fd, unsigned to_submit,
                     unsigned min_complete, unsigned flags, void *arg,
                     size_t argsz)
{
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags,
                     arg, argsz);
    c->stats.enters++;
    if (r > 0)
        c->stats.sqes += (uint64_t)r; /* SQEs the kernel consumed */
    return r < 0 ? -errno : (int)r;
}

static inline unsigned load_acquire(const unsigned *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline unsigned load_relaxed(const unsigned *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void store_release(unsigned *p, unsigned v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* SQEs written but not yet consumed by the kernel. */
static inline unsigned sq_pending(const uring_port *u)
{
    return u->sq_tail - load_acquire(u->sq_khead);
}

static inline bool cq_nonempty(const uring_port *u)
{
    return load_acquire(u->cq_ktail) != load_relaxed(u->cq_khead);
}

/* Does the kernel hold work that only a GETEVENTS enter will post? */
static inline bool need_getevents(const uring_port *u)
{
    unsigned f = load_relaxed(u->sq_kflags);
    if (f & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN))
        return true;
    /* DEFER_TASKRUN without TASKRUN_FLAG: we cannot tell, so assume yes. */
    return (u->setup_flags & IORING_SETUP_DEFER_TASKRUN)
           && !(u->setup_flags & IORING_SETUP_TASKRUN_FLAG);
}

/* ---- multishot ACCEPT ---------------------------------------------------- */

/* The peer address of an accepted fd, into the op (multishot SQEs carry no
 * address buffer: one buffer cannot serve many connections). */
static void ms_fill_addr(zk_op *op, int fd)
{
    op->addrlen = sizeof op->addr;
    if (getpeername(fd, (struct sockaddr *)&op->addr, &op->addrlen) < 0)
        op->addrlen = 0;
}

/* ---- the shared queue (every function here runs under share_lock) ---- */

static bool share_push(accept_share *s, int fd)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        int *r = malloc(cap * sizeof *r);
        if (!r)
            return false;
        for (size_t i = 0; i < s->n; i++)
            r[i] = s->fds[(s->head + i) % s->cap];
        free(s->fds);
        s->fds = r;
        s->head = 0;
        s->cap = cap;
    }
    s->fds[(s->head + s->n) % s->cap] = fd;
    __atomic_store_n(&s->n, s->n + 1, __ATOMIC_RELAXED);
    return true;
}

static int share_pop(accept_share *s)
{
    if (!s->n)
        return -1;
    int fd = s->fds[s->head];
    s->head = (s->head + 1) % s->cap;
    __atomic_store_n(&s->n, s->n - 1, __ATOMIC_RELAXED);
    return fd;
}

static void share_close_all(accept_share *s)
{
    int fd;
    while ((fd = share_pop(s)) >= 0)
        close(fd);
}

/* Link or unlink the record in its share's list of records with waiters,
 * so that connections shared by other ports wake its port. */
static void share_set_waiting(ms_listener *l, bool want)
{
    if (l->in_waiting == want)
        return;
    accept_share *s = l->share;
    if (want) {
        l->waiting_next = s->waiting;
        s->waiting = l;
    } else {
        for (ms_listener **pp = &s->waiting; *pp; pp = &(*pp)->waiting_next) {
            if (*pp == l) {
                *pp = l->waiting_next;
                break;
            }
        }
        l->waiting_next = NULL;
    }
    l->in_waiting = want;
}

/* ---- records ---- */

/* The file's share (made on first use), with one more reference. */
static accept_share *share_ref(dev_t dev, ino_t ino)
{
    pthread_mutex_lock(&share_lock);
    accept_share *s = shares;
    while (s && !(s->dev == dev && s->ino == ino && !s->dead))
        s = s->next;
    if (!s && (s = calloc(1, sizeof *s)) != NULL) {
        s->dev = dev;
        s->ino = ino;
        s->next = shares;
        shares = s;
    }
    if (s)
        s->refs++;
    pthread_mutex_unlock(&share_lock);
    return s;
}

/* The record lets go of its share.  `file_closed`: the listener is gone
 * (a CLOSE, forget_fd, or its number now names another file), so nobody
 * can ever accept what the share holds: close it, and close what other
 * ports' records still add.  The last reference frees the share, closing
 * what it holds (a runtime going away while the listener lives on gives
 * up connections nobody accepted, as the kernel's backlog would on close). */
static void share_unref(ms_listener *l, bool file_closed)
{
    accept_share *s = l->share;
    if (!s)
        return;
    pthread_mutex_lock(&share_lock);
    share_set_waiting(l, false);
    l->share = NULL;
    if (file_closed) {
        s->dead = true;
        share_close_all(s);
    }
    if (--s->refs == 0) {
        share_close_all(s);
        for (accept_share **pp = &shares; *pp; pp = &(*pp)->next) {
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        }
        free(s->fds);
        free(s);
    }
    pthread_mutex_unlock(&share_lock);
}

/* Keep the share's list of waiting records true to l's waiters. */
static void ms_sync_waiting(ms_listener *l)
{
    bool want = l->waiters.head != NULL && l->share != NULL;
    if (want == l->in_waiting)
        return; /* only this port's thread changes it */
    pthread_mutex_lock(&share_lock);
    share_set_waiting(l, want);
    pthread_mutex_unlock(&share_lock);
}

static void ms_free(ms_listener *l)
{
    free(l);
}

static void ms_unlink(ms_listener **head, ms_listener *l)
{
    for (ms_listener **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            l->next = NULL;
            return;
        }
    }
}

static ms_listener *ms_find(uring_port *u, int fd)
{
    for (ms_listener *l = u->listeners; l; l = l->next)
        if (l->fd == fd)
            return l;
    return NULL;
}

static void ms_set_need_arm(uring_port *u, ms_listener *l, bool v)
{
    if (l->need_arm != v) {
        l->need_arm = v;
        if (v)
            u->ms_need_arm++;
        else
            u->ms_need_arm--;
    }
}

static struct io_uring_sqe *get_sqe(uring_port *u, int *err);
static inline void commit_sqe(uring_port *u);
static bool queue_cancel(uring_port *u, uint64_t target);

/* Queue the listener's ACCEPT SQE (multishot unless refused).  Never
 * called from inside reap(): get_sqe may reap. */
static int ms_arm(uring_port *u, ms_listener *l)
{
    int err = 0;
    struct io_uring_sqe *sqe = get_sqe(u, &err);
    if (!sqe)
        return err;
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = l->fd;
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    sqe->ioprio = l->single ? 0 : IORING_ACCEPT_MULTISHOT;
    sqe->user_data = (uint64_t)(uintptr_t)l | MS_TAG;
    commit_sqe(u);
    l->armed = true;
    l->cancel_sent = false;
    u->ms_armed++;
    u->c.stats.ms_arms++;
    ms_set_need_arm(u, l, false);
    return 0;
}

/* End the listener's SQE (nobody waits here, or too many queued). */
static void ms_disarm(uring_port *u, ms_listener *l)
{
    if (l->armed && !l->cancel_sent && queue_cancel(u, (uint64_t)(uintptr_t)l | MS_TAG))
        l->cancel_sent = true;
}

/* A connection came to a record with no op waiting on this port: into the
 * share, waking the ports whose records have waiters.  The SQE ends when
 * another port's record waits (the acceptor moved there) or the share is
 * full (the kernel's backlog holds the rest); an acceptor that is merely
 * between two accepts on this worker keeps it. */
static void ms_share_connection(uring_port *u, ms_listener *l, int fd)
{
    accept_share *s = l->share;
    bool stop = true;
    pthread_mutex_lock(&share_lock);
    if (s && !s->dead && share_push(s, fd)) {
        for (ms_listener *w = s->waiting; w; w = w->waiting_next) {
            __atomic_store_n(&w->port->share_pending, 1, __ATOMIC_RELEASE);
            zk_port_wake((zk_port *)w->port);
        }
        stop = s->waiting != NULL || s->n >= MS_READY_MAX;
        fd = -1;
    }
    pthread_mutex_unlock(&share_lock);
    if (fd >= 0)
        close(fd); /* nobody can ever take it */
    if (stop)
        ms_disarm(u, l);
}

/* Shared connections to this record's waiters, oldest first. */
static void ms_take_shared(uring_port *u, ms_listener *l)
{
    if (!l->share || !l->waiters.head || !__atomic_load_n(&l->share->n, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&share_lock);
    int fd;
    while (l->waiters.head && (fd = share_pop(l->share)) >= 0) {
        zk_op *w = zk_op_list_pop(&l->waiters);
        w->backend_flags &= ~ZK_OPF_PARKED;
        ms_fill_addr(w, fd);
        zk_port_post(&u->c, w, fd);
    }
    share_set_waiting(l, l->waiters.head != NULL);
    pthread_mutex_unlock(&share_lock);
}

/* process(): another port shared connections while ops of ours waited. */
static void ms_take_shared_all(uring_port *u)
{
    for (ms_listener *l = u->listeners; l; l = l->next)
        ms_take_shared(u, l);
}

static void ms_handle_cqe(uring_port *u, ms_listener *l, int32_t res, uint32_t flags)
{
    bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        l->armed = false;
        u->ms_armed--;
    }
    if (res >= 0) {
        u->c.stats.ms_accepts++;
        zk_op *w = l->closed || u->c.closing ? NULL : zk_op_list_pop(&l->waiters);
        if (w) {
            w->backend_flags &= ~ZK_OPF_PARKED;
            ms_fill_addr(w, res);
            zk_port_post(&u->c, w, res);
            ms_sync_waiting(l);
        } else if (l->closed || u->c.closing) {
            close(res); /* nobody can ever take it */
        } else {
            ms_share_connection(u, l, res);
        }
    } else if (res == -EINVAL && !l->single && !more && l->waiters.head) {
        l->single = true; /* IORING_ACCEPT_MULTISHOT unknown (before 5.19) */
    } else if (res != -ECANCELED) {
        /* EMFILE, ENFILE, ENOBUFS, EINVAL (shut down), ...: the first
         * waiter gets it; the others wait for the next SQE. */
        zk_op *w = zk_op_list_pop(&l->waiters);
        if (w) {
            w->backend_flags &= ~ZK_OPF_PARKED;
            zk_port_post(&u->c, w, res);
            ms_sync_waiting(l);
        }
    }
    if (!l->armed) {
        if (l->closed) {
            ms_unlink(&u->ms_zombies, l);
            ms_free(l);
            return;
        }
        ms_set_need_arm(u, l, l->waiters.head != NULL && !u->c.closing);
    }
}

/* process(): arm the listeners whose ops wait with no SQE in the kernel. */
static void ms_arm_pending(uring_port *u)
{
    for (ms_listener *l = u->listeners; l && u->ms_need_arm; l = l->next) {
        if (!l->need_arm)
            continue;
        if (l->armed) {
            ms_set_need_arm(u, l, false);
            continue;
        }
        int err = ms_arm(u, l);
        if (err) {
            /* No SQE: fail the waiters rather than strand them. */
            zk_op *w;
            while ((w = zk_op_list_pop(&l->waiters)) != NULL) {
                w->backend_flags &= ~ZK_OPF_PARKED;
                zk_port_post(&u->c, w, -(int64_t)err);
            }
            ms_sync_waiting(l);
            ms_set_need_arm(u, l, false);
        }
    }
}

static void ms_retire(uring_port *u, ms_listener *l, int64_t result);

/* The port's record for op->fd's file, made on first use.  The fd may have
 * been closed with close(2) and its number reused by another listener since
 * the record was made: check which file it is (one fstat per ACCEPT), so
 * that connections queued for the old file are never handed out for the
 * new one.  NULL with *err set on failure. */
static ms_listener *ms_record(uring_port *u, int fd, int *err)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        *err = errno;
        return NULL;
    }
    ms_listener *l = ms_find(u, fd);
    if (l && (l->dev != sb.st_dev || l->ino != sb.st_ino)) {
        ms_disarm(u, l);
        ms_retire(u, l, -EBADF);
        l = NULL;
    }
    if (!l) {
        l = calloc(1, sizeof *l);
        if (!l || !(l->share = share_ref(sb.st_dev, sb.st_ino))) {
            free(l);
            *err = ENOMEM;
            return NULL;
        }
        l->fd = fd;
        l->dev = sb.st_dev;
        l->ino = sb.st_ino;
        l->port = u;
        l->next = u->listeners;
        u->listeners = l;
    }
    return l;
}

/* submit() of a uring_multishot op: a shared connection at once, else park
 * the op and make sure the listener's SQE is (or will be) in the kernel. */
static int ms_submit(uring_port *u, zk_op *op)
{
    int err = 0;
    ms_listener *l = ms_record(u, op->fd, &err);
    if (!l)
        return err;
    /* Taking from the share and joining its waiting records is one step
     * under the lock: a connection shared in between would wake nobody. */
    pthread_mutex_lock(&share_lock);
    int fd = share_pop(l->share);
    if (fd < 0) {
        op->backend_flags |= ZK_OPF_PARKED;
        zk_op_list_push(&l->waiters, op);
        share_set_waiting(l, true);
    }
    pthread_mutex_unlock(&share_lock);
    if (fd >= 0) {
        ms_fill_addr(op, fd);
        zk_port_post(&u->c, op, fd);
        return 0;
    }
    if (!l->armed) {
        /* (An SQE being cancelled ends soon: its last CQE re-arms.) */
        err = ms_arm(u, l);
        if (err) {
            zk_op_list_unlink(&l->waiters, op);
            op->backend_flags &= ~ZK_OPF_PARKED;
            ms_sync_waiting(l);
            return err;
        }
    }
    return 0;
}

/* zk_port_take_queued: the oldest shared connection for op->fd's file. */
static int u_take_queued(zk_port *port, zk_op *op)
{
    uring_port *u = U(port);
    ms_listener *l = ms_find(u, op->fd);
    if (!l || !l->share || !__atomic_load_n(&l->share->n, __ATOMIC_RELAXED))
        return -1;
    struct stat sb;  /* the same file, not one that reuses the number */
    if (fstat(op->fd, &sb) < 0 || l->dev != sb.st_dev || l->ino != sb.st_ino)
        return -1;   /* submit() retires the stale record */
    pthread_mutex_lock(&share_lock);
    int fd = share_pop(l->share);
    pthread_mutex_unlock(&share_lock);
    if (fd >= 0)
        ms_fill_addr(op, fd);
    return fd;
}

/* cancel() of a parked op: it is not in the kernel, it ends here. */
static void ms_cancel(uring_port *u, zk_op *op)
{
    ms_listener *l = ms_find(u, op->fd);
    if (l) {
        zk_op_list_unlink(&l->waiters, op);
        ms_sync_waiting(l);
    }
    op->backend_flags &= ~ZK_OPF_PARKED;
    zk_port_post(&u->c, op, -ECANCELED);
    /* Nobody waits: stop accepting, so that the kernel stops holding the
     * listener (and connections stay in its backlog). */
    if (l && !l->waiters.head)
        ms_disarm(u, l);
}

/* The listener's fd goes (a CLOSE op: result -EBADF for its waiters; the
 * port's close: -ECANCELED): waiters end, the share is let go (closing
 * what it holds when the file is gone), the record lives on as a zombie
 * until its SQE's last CQE. */
static void ms_retire(uring_port *u, ms_listener *l, int64_t result)
{
    ms_unlink(&u->listeners, l);
    l->closed = true;
    ms_set_need_arm(u, l, false);
    share_unref(l, result == -EBADF);
    zk_op *w;
    while ((w = zk_op_list_pop(&l->waiters)) != NULL) {
        w->backend_flags &= ~ZK_OPF_PARKED;
        zk_port_post(&u->c, w, result);
    }
    if (l->armed) {
        l->next = u->ms_zombies;
        u->ms_zombies = l;
    } else {
        ms_free(l);
    }
}

/* A CLOSE of fd: its SQE ends through the cancel-by-fd before the CLOSE. */
static void ms_close_fd(uring_port *u, int fd)
{
    ms_listener *l = ms_find(u, fd);
    if (l)
        ms_retire(u, l, -EBADF);
}

/* zk_port_forget_fd: the listener is being closed, maybe from another
 * worker; its record here must not outlive it. */
static void u_forget_fd(zk_port *port, int fd, uint64_t dev, uint64_t ino)
{
    uring_port *u = U(port);
    ms_listener *l = ms_find(u, fd);
    if (l && (uint64_t)l->dev == dev && (uint64_t)l->ino == ino) {
        ms_disarm(u, l);
        ms_retire(u, l, -EBADF);
    }
}

static void handle_cqe(uring_port *u, uint64_t user_data, int32_t res,
                       uint32_t flags)
{
    if (user_data == TAG_IGNORE)
        return;
    if (user_data == TAG_WAKE) {
        u->wake_seen = true;
        if (!(flags & IORING_CQE_F_MORE)) {
            u->wake_armed = false;
            if (res == -EINVAL && u->wake_multishot)
                u->wake_multishot = false; /* retry single-shot */
            else if (res < 0 && res != -ECANCELED)
                u->wake_errors++;
        }
        if (res >= 0)
            u->wake_errors = 0;
        return;
    }
    if (user_data & MS_TAG) {
        ms_handle_cqe(u, (ms_listener *)(uintptr_t)(user_data & ~MS_TAG), res,
                      flags);
        return;
    }
    zk_op *op = (zk_op *)(uintptr_t)user_data;
    zk_op_list_unlink(&u->kernel, op);
    /* Cancelled though we never asked: a CLOSE of its fd did (u_submit). */
    if (res == -ECANCELED && !(op->backend_flags & ZK_OPF_CANCEL_SENT))
        res = -EBADF;
    if (flags & IORING_CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        op->buf = u->pbuf_mem + (size_t)bid * PBUF_SIZE;
        op->backend_bid = bid;
        op->backend_flags |= ZK_OPF_PBUF;
        u->c.stats.pbuf_used++;
    } else if (res == -ENOBUFS && (op->backend_flags & ZK_OPF_BUFSEL)) {
        /* The ring ran dry while data waited: process() resubmits the op
         * into memory of its own. */
        if (!u->c.closing && !(op->backend_flags & ZK_OPF_CANCEL_SENT)) {
            u->c.stats.pbuf_misses++;
            zk_op_list_push(&u->nobufs, op);
            return;
        }
        res = -ECANCELED;
    }
    op->backend_flags &= ~ZK_OPF_BUFSEL;
    if (op->backend_flags & ZK_OPF_CANCEL_DEFERRED) {
        op->backend_flags &= ~ZK_OPF_CANCEL_DEFERRED;
        u->deferred_cancels--;
    }
    zk_port_post(&u->c, op, res);
}

/* Move every CQE in the ring to its op (no callbacks run here).  Returns the
 * number of CQEs consumed. */
static unsigned reap(uring_port *u)
{
    unsigned n = 0;
    for (;;) {
        unsigned head = load_relaxed(u->cq_khead);
        unsigned tail = load_acquire(u->cq_ktail); /* pairs with the kernel */
        if (head == tail)
            break;
        while (head != tail) {
            const struct io_uring_cqe *cqe = &u->cqes[head & u->cq_mask];
            uint64_t ud = cqe->user_data;
            int32_t res = cqe->res;
            uint32_t fl = cqe->flags;
            head++;
            n++;
            handle_cqe(u, ud, res, fl);
        }
        store_release(u->cq_khead, head); /* the slots are free again */
    }
    return n;
}

/* Hand queued SQEs to the kernel; with `getevents` also run deferred task
 * work and flush overflowed CQEs.  Returns >= 0 or -errno. */
static int flush(uring_port *u, bool getevents)
{
    unsigned pending = sq_pending(u);
    if (!pending && !getevents)
        return 0;
    return sys_enter(&u->c, u->ring_fd, pending, 0,
                     getevents ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
}

/* A free SQE (zeroed), flushing the SQ when it is full.  NULL with *err set
 * when the kernel will not take more right now. */
static struct io_uring_sqe *get_sqe(uring_port *u, int *err)
{
    for (int attempt = 0;; attempt++) {
        if (sq_pending(u) < u->sq_entries) {
            struct io_uring_sqe *sqe = &u->sqes[u->sq_tail & u->sq_mask];
            memset(sqe, 0, sizeof *sqe);
            return sqe;
        }
        if (attempt == 4) {
            *err = EAGAIN;
            return NULL;
        }
        int r = flush(u, false);
        if (r == -EBUSY || r == -EAGAIN) {
            /* Old kernels refuse submissions while CQEs sit in the overflow
             * list: make room in the CQ ring and let the kernel flush. */
            reap(u);
            flush(u, true);
            reap(u);
        } else if (r < 0 && r != -EINTR) {
            *err = -r;
            return NULL;
        }
    }
}

static inline void commit_sqe(uring_port *u)
{
    u->sq_tail++;
    store_release(u->sq_ktail, u->sq_tail); /* SQE contents before tail */
}

/* Hand buffer `bid` to the kernel (again).  The ring's tail overlays the
 * last field of bufs[0], so entries are written field by field. */
static void pbuf_add(uring_port *u, uint16_t bid)
{
    struct io_uring_buf *b = &u->pbuf_ring->bufs[u->pbuf_tail & (PBUF_ENTRIES - 1)];
    b->addr = (uint64_t)(uintptr_t)(u->pbuf_mem + (size_t)bid * PBUF_SIZE);
    b->len = PBUF_SIZE;
    b->bid = bid;
    u->pbuf_tail++;
    __atomic_store_n(&u->pbuf_ring->tail, u->pbuf_tail, __ATOMIC_RELEASE);
}

static void u_recycle(zk_port *port, uint16_t bid)
{
    uring_port *u = U(port);
    if (u->pbuf_ring)
        pbuf_add(u, bid);
}

/* Register the provided-buffer ring; on any refusal the port works
 * without it. */
static void setup_pbuf(uring_port *u)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t ring_sz = PBUF_ENTRIES * sizeof(struct io_uring_buf);
    ring_sz = (ring_sz + (size_t)page - 1) & ~((size_t)page - 1);
    void *ring = mmap(NULL, ring_sz, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED)
        return;
    void *mem = mmap(NULL, (size_t)PBUF_ENTRIES * PBUF_SIZE,
                     PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        munmap(ring, ring_sz);
        return;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)ring;
    reg.ring_entries = PBUF_ENTRIES;
    reg.bgid = PBUF_BGID;
    if (syscall(__NR_io_uring_register, u->ring_fd, IORING_REGISTER_PBUF_RING,
                &reg, 1) < 0) {
        munmap(mem, (size_t)PBUF_ENTRIES * PBUF_SIZE);
        munmap(ring, ring_sz);
        return;
    }
    u->pbuf_ring = ring;
    u->pbuf_ring_sz = ring_sz;
    u->pbuf_mem = mem;
    u->pbuf_tail = 0;
    for (unsigned i = 0; i < PBUF_ENTRIES; i++)
        pbuf_add(u, (uint16_t)i);
}

/* Resubmit the ops that found the ring empty, each into memory of its
 * own (freed by the op's owner: buf_owned). */
static void retry_nobufs(uring_port *u)
{
    zk_op *op;
    while ((op = zk_op_list_pop(&u->nobufs)) != NULL) {
        op->backend_flags &= ~ZK_OPF_BUFSEL;
        if (op->backend_flags & ZK_OPF_CANCEL_SENT) {
            zk_port_post(&u->c, op, -ECANCELED);
            continue;
        }
        int err = 0;
        op->buf = malloc(op->len);
        struct io_uring_sqe *sqe = op->buf ? get_sqe(u, &err) : NULL;
        if (!sqe) {
            free(op->buf);
            op->buf = NULL;
            zk_port_post(&u->c, op, -(int64_t)(err ? err : ENOMEM));
            continue;
        }
        op->buf_owned = 1;
        const zk_op_desc *desc = &zk_op_descs[op->opcode];
        sqe->opcode = desc->uring_opcode;
        desc->uring_prep(sqe, op);
        sqe->user_data = (uint64_t)(uintptr_t)op;
        commit_sqe(u);
        zk_op_list_push(&u->kernel, op);
    }
}

static bool queue_cancel(uring_port *u, uint64_t target)
{
    int err;
    struct io_uring_sqe *sqe = get_sqe(u, &err);
    if (!sqe)
        return false;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = TAG_IGNORE;
    commit_sqe(u);
    return true;
}

static void arm_wake(uring_port *u)
{
    if (u->wake_armed || u->c.closing || u->wake_errors >= 3)
        return;
    int err;
    struct io_uring_sqe *sqe = get_sqe(u, &err);
    if (!sqe)
        return; /* try again at the next wait/process */
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = u->c.wake_fd;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    sqe->poll32_events = __builtin_bswap32((uint32_t)POLLIN);
#else
    sqe->poll32_events = POLLIN;
#endif
    sqe->len = u->wake_multishot ? IORING_POLL_ADD_MULTI : 0;
    sqe->user_data = TAG_WAKE;
    commit_sqe(u);
    u->wake_armed = true;
}

/* Queue the cancels that found the SQ full earlier. */
static void retry_deferred_cancels(uring_port *u)
{
    for (zk_op *op = u->kernel.head; op && u->deferred_cancels;
         op = op->backend_next) {
        if (!(op->backend_flags & ZK_OPF_CANCEL_DEFERRED))
            continue;
        if (!queue_cancel(u, (uint64_t)(uintptr_t)op))
            return;
        op->backend_flags &= ~ZK_OPF_CANCEL_DEFERRED;
        u->deferred_cancels--;
    }
}

/* ------------------------------------------------------------------------ */
/* The vtable                                                                */

static int u_submit(zk_port *port, zk_op *op)
{
    uring_port *u = U(port);
    const zk_op_desc *desc = &zk_op_descs[op->opcode]; /* checked by port.c */
    if (desc->uring_multishot)
        return ms_submit(u, op);
    int err = 0;
    struct io_uring_sqe *sqe = get_sqe(u, &err);
    if (!sqe)
        return err;
    if (desc->closes_fd) {
        ms_close_fd(u, op->fd);
        /* First cancel every op of this ring on the fd (5.19: by fd, all of
         * them); they end with -EBADF (handle_cqe).  SQEs are issued in
         * order, so the cancel runs while the fd still names the file. */
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->fd = op->fd;
        sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
        sqe->user_data = TAG_IGNORE;
        commit_sqe(u);
        sqe = get_sqe(u, &err);
        if (!sqe)
            return err;
    }
    sqe->opcode = desc->uring_opcode;
    desc->uring_prep(sqe, op);
    if (desc->port_buffer && op->buf == NULL && op->len > 0) {
        if (u->pbuf_ring) {
            /* The kernel picks a buffer when data arrives. */
            sqe->flags |= IOSQE_BUFFER_SELECT;
            sqe->buf_group = PBUF_BGID;
            sqe->addr = 0;
            if (sqe->len > PBUF_SIZE)
                sqe->len = PBUF_SIZE;
            op->backend_flags |= ZK_OPF_BUFSEL;
        } else {
            op->buf = malloc(op->len);
            if (!op->buf)
                return ENOMEM; /* the SQE was not committed */
            op->buf_owned = 1;
            sqe->addr = (uint64_t)(uintptr_t)op->buf;
        }
    }
    sqe->user_data = (uint64_t)(uintptr_t)op;
    commit_sqe(u);
    zk_op_list_push(&u->kernel, op);
    return 0;
}

static void u_cancel(zk_port *port, zk_op *op)
{
    uring_port *u = U(port);
    if (op->backend_flags & ZK_OPF_PARKED) {
        ms_cancel(u, op);
        return;
    }
    op->backend_flags |= ZK_OPF_CANCEL_SENT;
    if (!queue_cancel(u, (uint64_t)(uintptr_t)op)) {
        op->backend_flags |= ZK_OPF_CANCEL_DEFERRED;
        u->deferred_cancels++;
    }
}

static int u_wait(zk_port *port, int64_t timeout_ns)
{
    uring_port *u = U(port);
    if (u->deferred_cancels)
        retry_deferred_cancels(u);
    arm_wake(u);

    bool woken = zk_port_wake_consume(&u->c);
    bool block = timeout_ns != 0 && !woken && !u->c.ready.head
                 && !cq_nonempty(u)
                 && !(load_relaxed(u->sq_kflags) & IORING_SQ_CQ_OVERFLOW);
    int r = 0;
    if (!block) {
        unsigned pending = sq_pending(u);
        if (pending || need_getevents(u))
            r = sys_enter(&u->c, u->ring_fd, pending, 0, IORING_ENTER_GETEVENTS,
                          NULL, 0);
    } else {
        struct __kernel_timespec ts;
        struct zk_getevents_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.sigmask_sz = _NSIG / 8;
        if (timeout_ns > 0) {
            ts.tv_sec = timeout_ns / 1000000000ll;
            ts.tv_nsec = timeout_ns % 1000000000ll;
            arg.ts = (uint64_t)(uintptr_t)&ts;
        }
        r = sys_enter(&u->c, u->ring_fd, sq_pending(u), 1,
                      IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
                      sizeof arg);
    }
    zk_port_wake_consume(&u->c);
    if (r >= 0 || r == -ETIME || r == -EINTR || r == -EBUSY || r == -EAGAIN)
        return 0; /* -EBUSY/-EAGAIN: process() flushes and reaps */
    return -r;
}

static int u_process(zk_port *port)
{
    uring_port *u = U(port);
    reap(u);
    /* Overflowed CQEs come back at most a ring's worth per enter; bound the
     * loop so a flood cannot starve the caller (the next wait sees the flag
     * and does not block). */
    for (int i = 0; i < 8; i++) {
        if (!(load_relaxed(u->sq_kflags)
              & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN)))
            break;
        if (flush(u, true) < 0)
            break;
        if (!reap(u))
            break;
    }
    if (u->nobufs.head)
        retry_nobufs(u);
    if (__atomic_load_n(&u->share_pending, __ATOMIC_RELAXED)
        && __atomic_exchange_n(&u->share_pending, 0, __ATOMIC_ACQ_REL))
        ms_take_shared_all(u);
    if (u->ms_need_arm)
        ms_arm_pending(u);
    if (u->wake_seen) {
        u->wake_seen = false;
        zk_port_wake_drain(&u->c);
    }
    arm_wake(u); /* queued; the next wait hands it to the kernel */
    return zk_port_deliver_ready(&u->c);
}

static void u_free(uring_port *u)
{
    if (u->sqes)
        munmap(u->sqes, u->sqes_sz);
    if (u->cq_ring && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_ring_sz);
    if (u->sq_ring)
        munmap(u->sq_ring, u->sq_ring_sz);
    if (u->ring_fd >= 0)
        close(u->ring_fd);
    while (u->listeners) {
        ms_listener *l = u->listeners;
        u->listeners = l->next;
        ms_free(l);
    }
    while (u->ms_zombies) {
        ms_listener *l = u->ms_zombies;
        u->ms_zombies = l->next;
        ms_free(l);
    }
    if (u->pbuf_ring) {
        munmap(u->pbuf_mem, (size_t)PBUF_ENTRIES * PBUF_SIZE);
        munmap(u->pbuf_ring, u->pbuf_ring_sz);
    }
    zk_port_common_fini(&u->c);
    free(u);
}

static void u_drain(zk_port *port)
{
    uring_port *u = U(port);
    if (u->c.closing)
        return;
    u->c.closing = true;
    zk_op *nb;
    while ((nb = zk_op_list_pop(&u->nobufs)) != NULL)
        zk_port_post(&u->c, nb, -ECANCELED);
    while (u->listeners) {
        ms_listener *l = u->listeners;
        ms_disarm(u, l);
        ms_retire(u, l, -ECANCELED);
    }

    /* 1. Ask the kernel to give back every op (and the wake poll). */
    for (zk_op *op = u->kernel.head; op; op = op->backend_next) {
        if (op->backend_flags & ZK_OPF_CANCEL_SENT
            && !(op->backend_flags & ZK_OPF_CANCEL_DEFERRED))
            continue;
        op->backend_flags |= ZK_OPF_CANCEL_SENT;
        if (queue_cancel(u, (uint64_t)(uintptr_t)op)) {
            if (op->backend_flags & ZK_OPF_CANCEL_DEFERRED) {
                op->backend_flags &= ~ZK_OPF_CANCEL_DEFERRED;
                u->deferred_cancels--;
            }
        }
    }
    if (u->wake_armed)
        queue_cancel(u, TAG_WAKE);

    /* 2. Wait for each op's own CQE: until then the kernel may still write
     * into its buffer. */
    bool leak = false;
    int slices = 0;
    while (u->kernel.head || u->ms_armed) {
        /* Multishot SQEs pin no memory of ours but may still install
         * accepted fds (closed by ms_handle_cqe): wait for them a while. */
        if (!u->kernel.head && ++slices >= 2 * CLOSE_RECANCEL_SLICES)
            break;
        struct __kernel_timespec ts = {0, CLOSE_POLL_NS};
        struct zk_getevents_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.sigmask_sz = _NSIG / 8;
        arg.ts = (uint64_t)(uintptr_t)&ts;
        int r = sys_enter(&u->c, u->ring_fd, sq_pending(u), 1,
                          IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
                          sizeof arg);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY
            && r != -EAGAIN) {
            /* E.g. -EEXIST: closed from a thread that is not the owner.
             * We cannot drain, so we must not unmap or hand buffers back. */
            leak = true;
            break;
        }
        reap(u);
        if (u->kernel.head && ++slices % CLOSE_RECANCEL_SLICES == 0) {
            /* A cancel may have found the op between states (-ENOENT or
             * -EALREADY); ask again. */
            for (zk_op *op = u->kernel.head; op; op = op->backend_next)
                if (!queue_cancel(u, (uint64_t)(uintptr_t)op))
                    break;
        }
    }
    /* Best effort for the wake poll: it pins no user memory. */
    if (!leak && u->wake_armed) {
        flush(u, true);
        reap(u);
    }
    u->drain_leaked = leak;
}

/* Hand every op back and free the ring.  The wait for the kernel is
 * u_drain's, which the worker runs detached before this (zk_port_drain). */
static void u_close(zk_port *port)
{
    uring_port *u = U(port);
    u_drain(port);
    bool leak = u->drain_leaked;

    /* 3. Hand every finished op back.  Callbacks cannot add more: submit
     * refuses while closing. */
    while (u->c.ready.head)
        zk_port_deliver_ready(&u->c);

    if (leak)
        return; /* ops still in the kernel keep the ring and the port alive */
    u_free(u);
}

static const zk_port_vtable uring_vtable = {
    .drain = u_drain,
    .forget_fd = u_forget_fd,
    .take_queued = u_take_queued,
    .close = u_close,
    .submit = u_submit,
    .cancel = u_cancel,
    .wait = u_wait,
    .process = u_process,
    .recycle = u_recycle,
};

/* ------------------------------------------------------------------------ */
/* Setup                                                                     */

static int setup_ring(uring_port *u)
{
    /* Most capable first; step down on EINVAL. */
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
            | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
            | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
            | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
            | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN
            | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
            | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SUBMIT_ALL,
        0,
    };
    struct io_uring_params p;
    long fd = -1;
    int err = EINVAL;
    for (int cqsize = 1; cqsize >= 0 && fd < 0; cqsize--) {
        for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
            memset(&p, 0, sizeof p);
            p.flags = flag_sets[i];
            if (cqsize) {
                p.flags |= IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
                p.cq_entries = CQ_ENTRIES;
            }
            fd = syscall(__NR_io_uring_setup, SQ_ENTRIES, &p);
            if (fd >= 0)
                break;
            err = errno;
            if (err != EINVAL)
                return err;
        }
    }
    if (fd < 0)
        return err;
    u->ring_fd = (int)fd;
    u->setup_flags = p.flags;
    u->features = p.features;

    u->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) {
        if (u->cq_ring_sz > u->sq_ring_sz)
            u->sq_ring_sz = u->cq_ring_sz;
        u->cq_ring_sz = u->sq_ring_sz;
    }
    void *sq = mmap(NULL, u->sq_ring_sz, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, u->ring_fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        return errno;
    u->sq_ring = sq;
    if (single) {
        u->cq_ring = sq;
    } else {
        void *cq = mmap(NULL, u->cq_ring_sz, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_POPULATE, u->ring_fd,
                        IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED)
            return errno;
        u->cq_ring = cq;
    }
    u->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    void *sqes = mmap(NULL, u->sqes_sz, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, u->ring_fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED)
        return errno;
    u->sqes = sqes;

    char *sqb = u->sq_ring, *cqb = u->cq_ring;
    u->sq_khead = (unsigned *)(sqb + p.sq_off.head);
    u->sq_ktail = (unsigned *)(sqb + p.sq_off.tail);
    u->sq_kflags = (unsigned *)(sqb + p.sq_off.flags);
    u->sq_mask = *(unsigned *)(sqb + p.sq_off.ring_mask);
    u->sq_entries = *(unsigned *)(sqb + p.sq_off.ring_entries);
    unsigned *array = (unsigned *)(sqb + p.sq_off.array);
    for (unsigned i = 0; i < u->sq_entries; i++)
        array[i] = i;
    u->sq_tail = load_relaxed(u->sq_ktail);

    u->cq_khead = (unsigned *)(cqb + p.cq_off.head);
    u->cq_ktail = (unsigned *)(cqb + p.cq_off.tail);
    u->cq_mask = *(unsigned *)(cqb + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cqb + p.cq_off.cqes);
    return 0;
}

zk_port *zk_port_uring_open(int *err)
{
    uring_port *u = zk_port_alloc(sizeof *u);
    if (!u) {
        *err = ENOMEM;
        return NULL;
    }
    u->ring_fd = -1;
    u->c.wake_fd = -1;
    u->wake_multishot = true;
    int e = zk_port_common_init(&u->c, ZK_BACKEND_URING, &uring_vtable);
    if (!e)
        e = setup_ring(u);
    if (e) {
        u_free(u);
        *err = e;
        return NULL;
    }
    setup_pbuf(u);
    arm_wake(u); /* submitted by the first wait */
    return (zk_port *)u;
}
