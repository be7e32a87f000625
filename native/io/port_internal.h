/* port_internal.h -- what port.c shares with the two backends.
 *
 * Not part of the contract (that is port.h).  Every zk_port starts with a
 * zk_port_common: the backend's vtable, the wake channel (an eventfd that
 * both backends watch) and the in-flight count.  port.c dispatches through the
 * vtable and owns the wake protocol; port_uring.c / port_epoll.c translate
 * kernel events.  Pure C: no Python API here.
 */
#ifndef ZOKIO_PORT_INTERNAL_H
#define ZOKIO_PORT_INTERNAL_H

#include "io/port.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct zk_port_vtable {
    /* Optional: the part of close that waits for the kernel (detached). */
    void (*drain)(zk_port *port);
    /* Optional: drop what the port keeps for a file (zk_port_forget_fd). */
    void (*forget_fd)(zk_port *port, int fd, uint64_t dev, uint64_t ino);
    /* Optional: zk_port_take_queued. */
    int (*take_queued)(zk_port *port, zk_op *op);
    void (*close)(zk_port *port);
    int (*submit)(zk_port *port, zk_op *op);
    void (*cancel)(zk_port *port, zk_op *op);
    int (*wait)(zk_port *port, int64_t timeout_ns);
    int (*process)(zk_port *port);
    /* Give a provided buffer back once its op's `complete` returned (NULL
     * for a backend that has none). */
    void (*recycle)(zk_port *port, uint16_t bid);
} zk_port_vtable;

/* backend_flags bits, shared vocabulary of both backends. */
#define ZK_OPF_INFLIGHT 0x1u       /* owned by the port, `complete` not yet run */
#define ZK_OPF_READY 0x2u          /* result known, queued for delivery */
#define ZK_OPF_CANCEL_SENT 0x4u    /* a cancel was issued (do not issue twice) */
#define ZK_OPF_CANCEL_DEFERRED 0x8u /* io_uring: cancel SQE not yet queued */
#define ZK_OPF_PBUF 0x10u          /* io_uring: the data is in provided buffer
                                      backend_bid, recycled after `complete` */
#define ZK_OPF_BUFSEL 0x20u        /* io_uring: submitted with BUFFER_SELECT */
#define ZK_OPF_PARKED 0x40u        /* io_uring: waits in a multishot listener's
                                      queue, not in the kernel */

/* A FIFO of ops linked through backend_next/backend_prev (doubly linked so
 * that an op can be unlinked from the middle in O(1)). */
typedef struct zk_op_list {
    zk_op *head;
    zk_op *tail;
} zk_op_list;

static inline void zk_op_list_push(zk_op_list *l, zk_op *op)
{
    op->backend_next = NULL;
    op->backend_prev = l->tail;
    if (l->tail)
        l->tail->backend_next = op;
    else
        l->head = op;
    l->tail = op;
}

static inline void zk_op_list_unlink(zk_op_list *l, zk_op *op)
{
    if (op->backend_prev)
        op->backend_prev->backend_next = op->backend_next;
    else
        l->head = op->backend_next;
    if (op->backend_next)
        op->backend_next->backend_prev = op->backend_prev;
    else
        l->tail = op->backend_prev;
    op->backend_next = op->backend_prev = NULL;
}

static inline zk_op *zk_op_list_pop(zk_op_list *l)
{
    zk_op *op = l->head;
    if (op)
        zk_op_list_unlink(l, op);
    return op;
}

/* Common head of every port.  `notified` is the only field touched by other
 * threads (zk_port_wake); it sits on its own cache line. */
typedef struct zk_port_common {
    const zk_port_vtable *vt;
    zk_backend backend;
    int wake_fd;        /* eventfd, EFD_NONBLOCK|EFD_CLOEXEC */
    size_t inflight;    /* submitted, `complete` not yet called */
    bool closing;       /* zk_port_close in progress: submit refuses */
    zk_op_list ready;   /* results known, `complete` not yet called (FIFO) */
    zk_port_stats stats; /* owner thread only */
    /* 1 while a wake is pending (its eventfd write already done); 0 otherwise.
     * Set by zk_port_wake (exchange, seq_cst); cleared by the owner when a
     * zk_port_wait starts or ends (exchange, seq_cst).  A wake that finds it
     * already 1 costs no syscall. */
    _Alignas(64) atomic_int notified;
    char pad_[64 - sizeof(atomic_int)];
} zk_port_common;

/* Backend constructors: allocate a port whose first member is a
 * zk_port_common, fill it with zk_port_common_init, return NULL + *err. */
zk_port *zk_port_uring_open(int *err);
zk_port *zk_port_epoll_open(int *err);

/* The reason io_uring is unusable (positive errno), or 0 when usable. */
int zk_port_uring_unavailable_reason(void);

/* Port.c helpers used by the backends. */
/* Zeroed memory aligned for zk_port_common (its cache-line member); free()
 * releases it.  NULL when out of memory. */
void *zk_port_alloc(size_t size);
int zk_port_common_init(zk_port_common *c, zk_backend backend,
                        const zk_port_vtable *vt);
void zk_port_common_fini(zk_port_common *c);
/* Called by wait() on entry: true when a wake is pending (do not block). */
bool zk_port_wake_consume(zk_port_common *c);
/* Called by process() after the kernel reported the eventfd readable. */
void zk_port_wake_drain(zk_port_common *c);
/* Queue an op's result for delivery by process(). */
static inline void zk_port_post(zk_port_common *c, zk_op *op, int64_t result)
{
    op->backend_result = result;
    op->backend_flags |= ZK_OPF_READY;
    zk_op_list_push(&c->ready, op);
}
/* Deliver the ops queued in c->ready when called (calls `complete`).  Ops
 * queued by those callbacks (epoll: a resubmitted op that finished at once)
 * wait for the next call, so a callback that resubmits cannot loop here
 * forever.  Returns the number delivered. */
int zk_port_deliver_ready(zk_port_common *c);

#endif
