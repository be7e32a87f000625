/* timer_wheel.h -- hierarchical timing wheel (after Tokio runtime/time/wheel).
 *
 * 6 levels x 64 slots; level k slots span 64^k ticks.  The wheel does not know
 * what a tick is: the scheduler's is ZK_TICK_NS (250 us).
 * Entries are intrusive (embedded in the caller's timer object), so insert and
 * remove are O(1) and allocate nothing.  Single-threaded: the owning worker is
 * the only thread that touches a wheel; requests from other threads reach it
 * through the scheduler's mailbox.
 */
#ifndef ZOKIO_TIMER_WHEEL_H
#define ZOKIO_TIMER_WHEEL_H

#include <stdint.h>
#include <stddef.h>

#define ZK_WHEEL_LEVELS 6
#define ZK_WHEEL_SLOTS 64
#define ZK_WHEEL_NEVER UINT64_MAX

typedef struct zk_timer_entry {
    struct zk_timer_entry *prev;
    struct zk_timer_entry *next;
    uint64_t deadline;   /* absolute tick */
    uint8_t level;
    uint8_t slot;
    uint8_t linked;      /* 1 while the entry is in the wheel */
    uint8_t tag;         /* the caller's; the wheel never reads or writes it
                            (it fills padding, so it costs nothing) */
} zk_timer_entry;

typedef struct zk_timer_wheel {
    uint64_t elapsed;                     /* ticks processed so far */
    uint64_t occupied[ZK_WHEEL_LEVELS];   /* bit s set <=> slot s non-empty */
    zk_timer_entry *slots[ZK_WHEEL_LEVELS][ZK_WHEEL_SLOTS];
    size_t count;                         /* entries linked */
    /* internal: entries already due but not yet handed out by zk_wheel_poll */
    zk_timer_entry *pending_head;
    zk_timer_entry *pending_tail;
} zk_timer_wheel;

void zk_wheel_init(zk_timer_wheel *w, uint64_t now);

/* Insert an unlinked entry with entry->deadline set.  Returns 1 if inserted;
 * returns 0 (entry untouched and not linked) if deadline <= elapsed, meaning
 * the timer is already due and the caller fires it itself.  Deadlines farther
 * than the wheel's range are clamped to its last slot and re-filed as the
 * wheel turns, so they still fire at their exact deadline. */
int zk_wheel_insert(zk_timer_wheel *w, zk_timer_entry *e);

/* Unlink a linked entry, O(1).  No-op if the entry is not linked. */
void zk_wheel_remove(zk_timer_wheel *w, zk_timer_entry *e);

/* Smallest tick at which some entry is due (a lower bound is fine as long as
 * it is never later than the earliest deadline), or ZK_WHEEL_NEVER. */
uint64_t zk_wheel_next_expiration(const zk_timer_wheel *w);

/* Advance to `now` and return one due entry (deadline <= now), unlinked, or
 * NULL when none is left; call repeatedly until NULL.  Entries come out in
 * non-decreasing deadline order; an entry is never returned before its
 * deadline.  After NULL, elapsed == max(elapsed, now). */
zk_timer_entry *zk_wheel_poll(zk_timer_wheel *w, uint64_t now);

#endif
