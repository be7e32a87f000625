/* run_queue.h -- the scheduler's queues (after Tokio scheduler/multi_thread/queue.rs).
 *
 * zk_local_queue: a bounded single-producer ring owned by one worker.  The
 * owner pushes and pops without locks; any other worker may steal half of it
 * with one CAS.  The head word packs two 32-bit indices, (steal << 32) | real:
 * `real` is the next item the owner pops, `steal` trails it while a steal is
 * copying items out.  While steal != real a steal is in progress and a second
 * stealer backs off -- one stealer per queue at a time.
 *
 * zk_inject_queue: the shared overflow / cross-thread queue, a growable ring
 * under a mutex, with an atomic length so an empty check takes no lock.
 *
 * Items are opaque non-NULL pointers (task references); the queues never
 * touch what they point at.
 */
#ifndef ZOKIO_RUN_QUEUE_H
#define ZOKIO_RUN_QUEUE_H

#include "core/compat.h"

#define ZK_LOCAL_QUEUE_MAX 256

typedef struct zk_inject_queue {
    zk_mutex lock;
    void **items;        /* ring buffer, capacity is a power of two */
    size_t capacity;
    size_t head;         /* index of the oldest item */
    _Atomic size_t len;  /* written under lock; read lock-free */
} zk_inject_queue;

int zk_inject_init(zk_inject_queue *q);      /* 0 or -1 (no memory) */
void zk_inject_destroy(zk_inject_queue *q);  /* frees the ring, not items */
int zk_inject_push(zk_inject_queue *q, void *item);                 /* 0 / -1 */
int zk_inject_push_batch(zk_inject_queue *q, void **items, size_t n); /* 0 / -1 */
void *zk_inject_pop(zk_inject_queue *q);     /* NULL when empty */
/* Pop up to max items into out; returns how many. */
size_t zk_inject_pop_batch(zk_inject_queue *q, void **out, size_t max);
static inline size_t zk_inject_len(zk_inject_queue *q) {
    return atomic_load_explicit(&q->len, memory_order_acquire);
}

typedef struct zk_local_queue {
    _Atomic uint64_t head;   /* (steal << 32) | real */
    _Atomic uint32_t tail;   /* written only by the owner (release) */
    uint32_t capacity;       /* power of two, <= ZK_LOCAL_QUEUE_MAX */
    uint32_t mask;
    _Atomic(void *) buffer[ZK_LOCAL_QUEUE_MAX];
} zk_local_queue;

/* capacity: power of two in [2, ZK_LOCAL_QUEUE_MAX]; tests shrink it. */
void zk_local_init(zk_local_queue *q, uint32_t capacity);

/* Owner only.  Push to the back.  When the ring is full, move half of it plus
 * `item` to `overflow` in one batch.  Returns 0, or -1 if the overflow push
 * failed for lack of memory (then nothing was moved and item was not queued). */
int zk_local_push_back(zk_local_queue *q, void *item, zk_inject_queue *overflow);

/* Owner only.  Pop from the front; NULL when empty. */
void *zk_local_pop(zk_local_queue *q);

/* Any thread except src's owner; dst must be owned by the caller.  Steal half
 * of src (rounded up), move all but one into dst, return the one (NULL when
 * nothing was stolen).  Refuses (returns NULL) when dst is more than half
 * full, or when another steal from src is in progress. */
void *zk_local_steal_into(zk_local_queue *src, zk_local_queue *dst);

/* Approximate length, any thread. */
size_t zk_local_len(zk_local_queue *q);
/* Number of free slots; owner only. */
size_t zk_local_remaining(zk_local_queue *q);

#endif
