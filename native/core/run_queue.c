/* run_queue.c -- the scheduler's run queues (see run_queue.h).
 *
 * zk_local_queue follows the algorithm of Tokio's multi_thread local queue
 * (scheduler/multi_thread/queue.rs); the code here is our own.
 *
 * Indices are free-running 32-bit counters that wrap; a slot is
 * buffer[index & mask].  The head word packs two of them:
 *
 *     head = (steal << 32) | real
 *
 *   real   next item the owner pops.
 *   steal  first item not yet released by a stealer.  Equal to real except
 *          while a stealer is copying the range [steal, real) out of the
 *          buffer; the owner must not overwrite those slots until the
 *          stealer sets steal = real again.
 *
 * So slots [steal, tail) are occupied, the owner may write at most up to
 * steal + capacity, and tail - steal <= capacity always.
 *
 * Memory-ordering overview (each atomic op below names its partner):
 *
 *  (T) tail: the owner writes buffer slots with relaxed stores and then
 *      publishes them with a release store of tail; a stealer acquire-loads
 *      tail before reading those slots.
 *  (S) head/steal: a stealer reads the slots it claimed and then releases
 *      them with an acq_rel CAS that sets steal = real; the owner
 *      acquire-loads head before deciding there is room to write, so the
 *      stealer's reads happen-before the owner's overwrite.  The same pairing
 *      protects a destination queue: its owner (the stealer) acquire-loads
 *      its own head before writing into it.
 *  (C) head/claim: claim CASes (owner pop, stealer claim, overflow claim) are
 *      acq_rel on success and acquire on failure, so each CAS observes every
 *      earlier head update it races with.  Mutual exclusion of slots is
 *      provided by the CAS itself (only one party can move a given range out
 *      of [steal/real, tail)).
 *
 * Items in a slot are read by exactly one party: whoever moved `real` (or,
 * for an overflow, both indices) past it with a successful CAS.
 */
#include "core/run_queue.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* zk_inject_queue                                                          */
/* ------------------------------------------------------------------------ */

#define ZK_INJECT_INITIAL_CAPACITY 64

int
zk_inject_init(zk_inject_queue *q)
{
    zk_mutex_init(&q->lock);
    q->items = (void **)malloc(ZK_INJECT_INITIAL_CAPACITY * sizeof(void *));
    if (q->items == NULL) {
        zk_mutex_destroy(&q->lock);
        return -1;
    }
    q->capacity = ZK_INJECT_INITIAL_CAPACITY;
    q->head = 0;
    /* Plain init: nobody else can see q yet. */
    atomic_init(&q->len, 0);
    return 0;
}

void
zk_inject_destroy(zk_inject_queue *q)
{
    free(q->items);
    q->items = NULL;
    q->capacity = 0;
    q->head = 0;
    atomic_store_explicit(&q->len, 0, memory_order_relaxed);
    zk_mutex_destroy(&q->lock);
}

/* Lock held.  Make room for `extra` more items; 0 or -1 (no memory, queue
 * unchanged). */
static int
inject_reserve_locked(zk_inject_queue *q, size_t extra)
{
    /* Under the lock: relaxed is enough, every writer of len holds it. */
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    if (extra > SIZE_MAX / 2 - len) {
        return -1;
    }
    size_t need = len + extra;
    if (need <= q->capacity) {
        return 0;
    }
    size_t newcap = q->capacity ? q->capacity : ZK_INJECT_INITIAL_CAPACITY;
    while (newcap < need) {
        newcap *= 2;
    }
    if (newcap > SIZE_MAX / sizeof(void *)) {
        return -1;
    }
    void **items = (void **)malloc(newcap * sizeof(void *));
    if (items == NULL) {
        return -1;
    }
    /* Unwrap the old ring into [0, len). */
    size_t first = q->capacity - q->head;
    if (first > len) {
        first = len;
    }
    if (len > 0) {
        memcpy(items, q->items + q->head, first * sizeof(void *));
        memcpy(items + first, q->items, (len - first) * sizeof(void *));
    }
    free(q->items);
    q->items = items;
    q->capacity = newcap;
    q->head = 0;
    return 0;
}

/* Lock held, room reserved.  Append one item. */
static inline void
inject_append_locked(zk_inject_queue *q, size_t *len, void *item)
{
    q->items[(q->head + *len) & (q->capacity - 1)] = item;
    (*len)++;
}

/* Lock held.  Publish the new length.  Release pairs with the acquire load
 * in zk_inject_len() / the lock-free empty check in the pops, so a reader
 * that sees a non-zero length also sees the queue state that produced it
 * (the items themselves are only read under the lock). */
static inline void
inject_publish_len_locked(zk_inject_queue *q, size_t len)
{
    atomic_store_explicit(&q->len, len, memory_order_release);
}

int
zk_inject_push(zk_inject_queue *q, void *item)
{
    zk_mutex_lock(&q->lock);
    if (inject_reserve_locked(q, 1) < 0) {
        zk_mutex_unlock(&q->lock);
        return -1;
    }
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    inject_append_locked(q, &len, item);
    inject_publish_len_locked(q, len);
    zk_mutex_unlock(&q->lock);
    return 0;
}

int
zk_inject_push_batch(zk_inject_queue *q, void **items, size_t n)
{
    if (n == 0) {
        return 0;
    }
    zk_mutex_lock(&q->lock);
    if (inject_reserve_locked(q, n) < 0) {
        zk_mutex_unlock(&q->lock);
        return -1;
    }
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        inject_append_locked(q, &len, items[i]);
    }
    inject_publish_len_locked(q, len);
    zk_mutex_unlock(&q->lock);
    return 0;
}

void *
zk_inject_pop(zk_inject_queue *q)
{
    /* Lock-free empty check (a hint; re-checked under the lock).  Acquire
     * pairs with the release store in inject_publish_len_locked(). */
    if (atomic_load_explicit(&q->len, memory_order_acquire) == 0) {
        return NULL;
    }
    zk_mutex_lock(&q->lock);
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    void *item = NULL;
    if (len > 0) {
        item = q->items[q->head];
        q->head = (q->head + 1) & (q->capacity - 1);
        inject_publish_len_locked(q, len - 1);
    }
    zk_mutex_unlock(&q->lock);
    return item;
}

size_t
zk_inject_pop_batch(zk_inject_queue *q, void **out, size_t max)
{
    if (max == 0) {
        return 0;
    }
    /* Lock-free empty check; pairs with inject_publish_len_locked(). */
    if (atomic_load_explicit(&q->len, memory_order_acquire) == 0) {
        return 0;
    }
    zk_mutex_lock(&q->lock);
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    size_t n = len < max ? len : max;
    size_t mask = q->capacity - 1;
    for (size_t i = 0; i < n; i++) {
        out[i] = q->items[(q->head + i) & mask];
    }
    if (n > 0) {
        q->head = (q->head + n) & mask;
        inject_publish_len_locked(q, len - n);
    }
    zk_mutex_unlock(&q->lock);
    return n;
}

/* ------------------------------------------------------------------------ */
/* zk_local_queue                                                           */
/* ------------------------------------------------------------------------ */

static inline uint64_t
pack(uint32_t steal, uint32_t real)
{
    return ((uint64_t)steal << 32) | (uint64_t)real;
}

static inline uint32_t
unpack_steal(uint64_t head)
{
    return (uint32_t)(head >> 32);
}

static inline uint32_t
unpack_real(uint64_t head)
{
    return (uint32_t)head;
}

/* Slot access.  Slots are _Atomic so that the (benign, by construction never
 * overlapping) accesses from different threads are not data races in the C11
 * sense; all slot accesses are relaxed and get their ordering from the head /
 * tail pairings above.  Building with -DZK_RUN_QUEUE_PLAIN_SLOTS (test builds
 * only, e.g. with -fsanitize=thread) accesses them as plain memory instead,
 * so that ThreadSanitizer reports any slot access that is not ordered by
 * those pairings. */
static inline void *
slot_load(zk_local_queue *q, uint32_t pos)
{
#ifdef ZK_RUN_QUEUE_PLAIN_SLOTS
    return *(void *const *)&q->buffer[pos & q->mask];
#else
    return atomic_load_explicit(&q->buffer[pos & q->mask], memory_order_relaxed);
#endif
}

static inline void
slot_store(zk_local_queue *q, uint32_t pos, void *item)
{
#ifdef ZK_RUN_QUEUE_PLAIN_SLOTS
    *(void **)&q->buffer[pos & q->mask] = item;
#else
    atomic_store_explicit(&q->buffer[pos & q->mask], item, memory_order_relaxed);
#endif
}

void
zk_local_init(zk_local_queue *q, uint32_t capacity)
{
    if (capacity < 2) {
        capacity = 2;
    }
    if (capacity > ZK_LOCAL_QUEUE_MAX) {
        capacity = ZK_LOCAL_QUEUE_MAX;
    }
    /* Round down to a power of two. */
    while (capacity & (capacity - 1)) {
        capacity &= capacity - 1;
    }
    q->capacity = capacity;
    q->mask = capacity - 1;
    /* Plain init: the queue is not shared yet; whoever publishes q to other
     * threads (thread creation, a lock, a release store) orders these. */
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    for (uint32_t i = 0; i < ZK_LOCAL_QUEUE_MAX; i++) {
        atomic_init(&q->buffer[i], NULL);
    }
}

/* Owner only.  Tail is written only by the owner, so the owner reads its own
 * tail relaxed. */
static inline uint32_t
owner_tail(zk_local_queue *q)
{
    return atomic_load_explicit(&q->tail, memory_order_relaxed);
}

/* Owner only.  Write the item at position `tail` and publish it. */
static inline void
push_back_finish(zk_local_queue *q, void *item, uint32_t tail)
{
    /* Relaxed slot store; published by the release store of tail below. */
    slot_store(q, tail, item);
    /* (T) release <-> acquire load of tail in steal_into2(). */
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
}

/* Owner only, queue full (tail - real == capacity) and no steal in progress
 * (steal == real == `real`).  Claim the oldest capacity/2 items with one CAS
 * and move them plus `item` to `overflow` in one batch.
 *
 * Returns 0 on success, 1 if the CAS lost against a stealer (nothing done;
 * the caller re-examines the queue), -1 if the inject queue could not grow
 * (nothing done). */
static int
push_overflow(zk_local_queue *q, void *item, uint32_t real, uint32_t tail,
              zk_inject_queue *overflow)
{
    const uint32_t take = q->capacity / 2;
    (void)tail;

    /* Reserve room in the inject queue first and keep its lock across the
     * claim, so that a failed allocation can still leave everything in
     * place (the header promises "nothing was moved"). */
    zk_mutex_lock(&overflow->lock);
    if (inject_reserve_locked(overflow, (size_t)take + 1) < 0) {
        zk_mutex_unlock(&overflow->lock);
        return -1;
    }

    uint64_t expected = pack(real, real);
    uint64_t next = pack(real + take, real + take);
    /* (C) claim: acq_rel on success / acquire on failure, racing with a
     * stealer's claim CAS in steal_into2().  Its release half also orders
     * our earlier reads of popped slots before any stealer that observes the
     * new head.  After success the range [real, real + take) is ours: no
     * stealer can claim it and we (the owner) do not overwrite it before we
     * have copied it below. */
    if (!atomic_compare_exchange_strong_explicit(&q->head, &expected, next,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire)) {
        zk_mutex_unlock(&overflow->lock);
        return 1;
    }

    size_t len = atomic_load_explicit(&overflow->len, memory_order_relaxed);
    for (uint32_t i = 0; i < take; i++) {
        /* Relaxed: these slots were written by this thread. */
        void *t = slot_load(q, real + i);
        inject_append_locked(overflow, &len, t);
    }
    inject_append_locked(overflow, &len, item);
    inject_publish_len_locked(overflow, len);
    zk_mutex_unlock(&overflow->lock);
    return 0;
}

int
zk_local_push_back(zk_local_queue *q, void *item, zk_inject_queue *overflow)
{
    uint32_t tail;
    for (;;) {
        /* (S) acquire <-> the acq_rel CAS that sets steal = real at the end
         * of steal_into2(): a stealer's reads of [old steal, real) happen
         * before we reuse those slots. */
        uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
        uint32_t steal = unpack_steal(head);
        uint32_t real = unpack_real(head);
        tail = owner_tail(q);

        if ((uint32_t)(tail - steal) < q->capacity) {
            break;  /* room */
        }
        if (steal != real) {
            /* Full, but a stealer is about to free half the ring.  Do not
             * wait for it: this one item goes to the inject queue. */
            return zk_inject_push(overflow, item) < 0 ? -1 : 0;
        }
        int r = push_overflow(q, item, real, tail, overflow);
        if (r <= 0) {
            return r;
        }
        /* Lost the race with a stealer: look again. */
    }
    push_back_finish(q, item, tail);
    return 0;
}

void *
zk_local_pop(zk_local_queue *q)
{
    /* Acquire: start from a head that includes every completed steal. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t real;
    for (;;) {
        uint32_t steal = unpack_steal(head);
        real = unpack_real(head);
        uint32_t tail = owner_tail(q);
        if (real == tail) {
            return NULL;
        }
        uint32_t next_real = real + 1;
        uint64_t next;
        if (steal == real) {
            next = pack(next_real, next_real);
        } else {
            /* A steal is in progress; leave its marker alone. */
            next = pack(steal, next_real);
        }
        /* (C) acq_rel / acquire, racing with the stealer's claim CAS and its
         * final steal = real CAS in steal_into2(). */
        if (atomic_compare_exchange_weak_explicit(&q->head, &head, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            break;
        }
    }
    /* Relaxed: the slot was written by this thread (the owner). */
    return slot_load(q, real);
}

/* Claim up to half of src (rounded up, at most `room`) and copy it into dst
 * starting at dst_tail, without publishing it in dst.  Returns the number of
 * items copied (0: nothing to steal, or another steal is in progress). */
static uint32_t
steal_into2(zk_local_queue *src, zk_local_queue *dst, uint32_t dst_tail,
            uint32_t room)
{
    /* (C) acquire: pairs with the owner's and other stealers' CASes on head. */
    uint64_t prev = atomic_load_explicit(&src->head, memory_order_acquire);
    uint64_t next;
    uint32_t n;
    for (;;) {
        uint32_t steal = unpack_steal(prev);
        uint32_t real = unpack_real(prev);
        if (steal != real) {
            return 0;  /* another stealer is copying out of src */
        }
        /* (T) acquire <-> release store of tail in push_back_finish(): the
         * slots [real, tail) written by src's owner are visible to us. */
        uint32_t tail = atomic_load_explicit(&src->tail, memory_order_acquire);
        uint32_t avail = tail - real;
        if (avail > src->capacity) {
            /* Torn view: head moved on after we read it.  Reload. */
            prev = atomic_load_explicit(&src->head, memory_order_acquire);
            continue;
        }
        n = avail - avail / 2;
        if (n > room) {
            n = room;
        }
        if (n == 0) {
            return 0;
        }
        next = pack(steal, real + n);
        /* (C) claim: acq_rel on success / acquire on failure.  Success moves
         * [real, real + n) out of the owner's reach while steal still marks
         * the start of our range, so the owner will not overwrite it. */
        if (atomic_compare_exchange_weak_explicit(&src->head, &prev, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            break;
        }
    }

    uint32_t first = unpack_steal(next);
    for (uint32_t i = 0; i < n; i++) {
        /* Relaxed slot load: visibility via the (T) acquire above. */
        void *t = slot_load(src, first + i);
        /* Relaxed slot store into dst (we own dst); published by the caller's
         * release store of dst->tail. */
        slot_store(dst, dst_tail + i, t);
    }

    /* Release our range: steal = real.  The owner may have popped meanwhile
     * (real moved on), so retry with its new real. */
    prev = next;
    for (;;) {
        uint32_t real = unpack_real(prev);
        next = pack(real, real);
        /* (S) release half <-> the owner's acquire load of head in
         * zk_local_push_back() (and a stealer's acquire load of its own dst
         * head in zk_local_steal_into()): our slot reads above happen before
         * the owner overwrites those slots.  Acquire on failure: we re-read
         * the owner's latest pop. */
        if (atomic_compare_exchange_weak_explicit(&src->head, &prev, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            return n;
        }
        /* Only the owner may have changed head, and it keeps steal. */
    }
}

void *
zk_local_steal_into(zk_local_queue *src, zk_local_queue *dst)
{
    if (src == dst) {
        return NULL;
    }
    /* dst is owned by the caller: its tail is ours. */
    uint32_t dst_tail = owner_tail(dst);
    /* (S) acquire <-> the final acq_rel CAS of a steal *from dst*: those
     * stealers' reads of dst's slots happen before we overwrite them. */
    uint64_t dst_head = atomic_load_explicit(&dst->head, memory_order_acquire);
    uint32_t used = dst_tail - unpack_steal(dst_head);
    if (used > dst->capacity / 2) {
        /* dst more than half full: stealing would not help. */
        return NULL;
    }
    /* Room in dst counted from steal (slots still being copied out of dst
     * by another stealer are not free). */
    uint32_t room = dst->capacity - used;

    uint32_t n = steal_into2(src, dst, dst_tail, room);
    if (n == 0) {
        return NULL;
    }
    n--;
    /* The last copied item is returned, not published in dst.  Relaxed: we
     * wrote it ourselves. */
    void *ret = slot_load(dst, dst_tail + n);
    if (n > 0) {
        /* (T) release <-> acquire load of dst->tail by anyone stealing from
         * dst in steal_into2(). */
        atomic_store_explicit(&dst->tail, dst_tail + n, memory_order_release);
    }
    return ret;
}

size_t
zk_local_len(zk_local_queue *q)
{
    /* Acquire loads: a racy but coherent snapshot (approximate by
     * contract).  head first, then tail; tail only grows, so tail - real can
     * overshoot when head moved meanwhile -- clamp. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    uint32_t len = tail - unpack_real(head);
    if (len > q->capacity) {
        /* Either wrapped negative (tail read stale on a non-owner thread
         * relative to a newer head) or overshoot. */
        return (int32_t)len < 0 ? 0 : q->capacity;
    }
    return len;
}

size_t
zk_local_remaining(zk_local_queue *q)
{
    /* (S) acquire, as in zk_local_push_back(): free slots are counted from
     * steal, so a steal in progress still occupies its range. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t tail = owner_tail(q);
    return q->capacity - (uint32_t)(tail - unpack_steal(head));
}
