/* timer_wheel.c -- hierarchical timing wheel (see timer_wheel.h).
 *
 * Geometry.  Level k has 64 slots of 64^k ticks each, so level k covers
 * 64^(k+1) ticks and the whole wheel 64^6 = 2^36 ticks (~199 days at the
 * scheduler's 250 us tick; later deadlines wait in the overflow slot).
 * A time t is read as six base-64 digits: digit k = (t >> 6k) & 63.
 *
 * Where an entry lives.  For an entry with deadline d > elapsed, let k be the
 * digit holding the highest bit in which d and elapsed differ.  All digits
 * above k agree, and digit k of d is larger than digit k of elapsed (d is the
 * larger number).  The entry is filed at level k, slot digit_k(d).  That slot
 * "starts" at d with its low 6k bits cleared: the first tick at which the
 * entry's position has to be reconsidered.  Consequences we rely on:
 *
 *   (a) every occupied slot at level k has index > digit_k(elapsed), so the
 *       next occupied slot of a level is a ctz of the occupied bits above the
 *       current digit -- never a scan;
 *   (b) every slot of level k starts before every slot of level k+1 (level k
 *       lives inside the current 64^(k+1) block, level k+1 in later ones),
 *       so the first level with an occupied slot holds the next expiry, and
 *       no two occupied slots start at the same tick;
 *   (c) while elapsed moves forward but stays below an entry's slot start,
 *       the rule above keeps giving the same level and slot, so advancing
 *       elapsed never invalidates a filing.  The position of an entry is a
 *       function of (deadline, elapsed) alone, which also makes equal
 *       deadlines share a slot and fire in insertion order (slots are FIFO).
 *
 * Turning.  zk_wheel_poll repeatedly takes the earliest occupied slot; if it
 * starts at T <= now, elapsed jumps straight to T (nothing lies in between,
 * by (b)), entries with deadline T become pending, the others are re-filed
 * relative to the new elapsed, which puts them at a strictly lower level
 * (cascading: d and T agree above digit k, and T's digits up to k are zero).
 * Each entry cascades at most 5 times, and each poll costs O(levels) per
 * occupied slot visited, independent of how far `now` jumps.
 *
 * Beyond the range.  If d and elapsed differ above bit 35 the entry cannot be
 * placed by the rule; it goes to level 5 slot 0, which the rule never uses
 * (by (a) a rule-filed level-5 entry has digit > digit_5(elapsed) >= 0).  We
 * give that slot the meaning "the start of the next 2^36 block", the last
 * slot start in the wheel and still <= d (d lies in a later block), and it
 * is what zk_wheel_next_expiration reports for it (a lower bound).  When
 * poll reaches that slot nothing else is in the wheel, so instead of
 * stopping at the block boundary it jumps elapsed to min(now, earliest
 * overflow deadline) -- found while walking the list it must re-file
 * anyway -- and re-files from there.  Thus a poll far into the future does
 * not hop block by block (2^28 hops for a deadline near 2^64), and overflow
 * entries still fire at their exact deadline.
 *
 * Slot lists are doubly linked with the head's prev pointing at the tail, so
 * one pointer per slot gives O(1) append-at-tail and O(1) unlink.  Entries
 * that are due but not yet handed out sit on the pending list; they are still
 * "linked" (count includes them, zk_wheel_remove takes them out) and are
 * marked with level == ZK_PENDING_LEVEL.
 */
#include "core/timer_wheel.h"

#include <string.h>

#define ZK_SLOT_BITS 6
#define ZK_SLOT_MASK ((uint64_t)ZK_WHEEL_SLOTS - 1)
/* Bits covered by the whole wheel: 6 levels x 6 bits. */
#define ZK_WHEEL_BITS (ZK_SLOT_BITS * ZK_WHEEL_LEVELS)
/* Level 5, slot 0: entries farther than the wheel's range (see top). */
#define ZK_OVERFLOW_LEVEL (ZK_WHEEL_LEVELS - 1)
#define ZK_OVERFLOW_SLOT 0
/* entry->level of an entry on the pending list. */
#define ZK_PENDING_LEVEL 0xFF

_Static_assert(ZK_WHEEL_SLOTS == 64, "occupied bitmaps are 64-bit words");
_Static_assert(ZK_WHEEL_BITS < 64, "level shifts must stay below 64");

static inline unsigned digit(uint64_t t, unsigned level)
{
    return (unsigned)((t >> (ZK_SLOT_BITS * level)) & ZK_SLOT_MASK);
}

/* Start of the next 2^36 block after `elapsed`: when the overflow slot is
 * processed.  Only called while the overflow slot is occupied, which implies
 * some deadline lies in a later block, so this cannot wrap around. */
static inline uint64_t overflow_start(uint64_t elapsed)
{
    return ((elapsed >> ZK_WHEEL_BITS) + 1) << ZK_WHEEL_BITS;
}

/* ---- slot lists (head->prev is the tail) ------------------------------ */

static void slot_append(zk_timer_wheel *w, zk_timer_entry *e)
{
    zk_timer_entry **head = &w->slots[e->level][e->slot];
    e->next = NULL;
    if (*head == NULL) {
        e->prev = e;
        *head = e;
        w->occupied[e->level] |= (uint64_t)1 << e->slot;
    } else {
        zk_timer_entry *tail = (*head)->prev;
        tail->next = e;
        e->prev = tail;
        (*head)->prev = e;
    }
}

static void slot_unlink(zk_timer_wheel *w, zk_timer_entry *e)
{
    zk_timer_entry **head = &w->slots[e->level][e->slot];
    if (e == *head) {
        *head = e->next;
        if (*head != NULL)
            (*head)->prev = e->prev;   /* inherit the tail pointer */
        else
            w->occupied[e->level] &= ~((uint64_t)1 << e->slot);
    } else {
        e->prev->next = e->next;
        if (e->next != NULL)
            e->next->prev = e->prev;
        else
            (*head)->prev = e->prev;   /* e was the tail */
    }
    e->prev = e->next = NULL;
}

/* ---- pending list (plain doubly linked, NULL-terminated) --------------- */

static void pending_append(zk_timer_wheel *w, zk_timer_entry *e)
{
    e->level = ZK_PENDING_LEVEL;
    e->slot = 0;
    e->next = NULL;
    e->prev = w->pending_tail;
    if (w->pending_tail != NULL)
        w->pending_tail->next = e;
    else
        w->pending_head = e;
    w->pending_tail = e;
}

static void pending_unlink(zk_timer_wheel *w, zk_timer_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        w->pending_head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        w->pending_tail = e->prev;
    e->prev = e->next = NULL;
}

/* ---- filing ----------------------------------------------------------- */

/* File an entry with deadline > elapsed at its position (see top). */
static void file_entry(zk_timer_wheel *w, zk_timer_entry *e)
{
    uint64_t diff = w->elapsed ^ e->deadline;   /* != 0 since d > elapsed */
    if (diff >> ZK_WHEEL_BITS) {
        e->level = ZK_OVERFLOW_LEVEL;
        e->slot = ZK_OVERFLOW_SLOT;
    } else {
        unsigned top = 63u - (unsigned)__builtin_clzll(diff);
        e->level = (uint8_t)(top / ZK_SLOT_BITS);
        e->slot = (uint8_t)digit(e->deadline, e->level);
    }
    slot_append(w, e);
}

/* Earliest occupied slot: returns 1 and sets *start, *level and *slot, or
 * returns 0 if the wheel (not counting pending) is empty.  The flag is
 * separate because a slot may legitimately start at UINT64_MAX, the value
 * of ZK_WHEEL_NEVER. */
static int next_slot(const zk_timer_wheel *w, uint64_t *start,
                     unsigned *level, unsigned *slot)
{
    for (unsigned k = 0; k < ZK_WHEEL_LEVELS; k++) {
        unsigned cur = digit(w->elapsed, k);
        /* Slots strictly after the current digit; by (a) there are no
         * others, except the overflow slot handled below.  cur == 63 would
         * make the shift 64 (undefined), and leaves no slot after it. */
        uint64_t later =
            cur == 63 ? 0 : w->occupied[k] & (~(uint64_t)0 << (cur + 1));
        if (later) {
            unsigned s = (unsigned)__builtin_ctzll(later);
            unsigned shift = ZK_SLOT_BITS * k;
            /* Keep the digits above k from elapsed, put s at digit k and
             * zeros below. */
            uint64_t block = w->elapsed >> (shift + ZK_SLOT_BITS)
                                        << (shift + ZK_SLOT_BITS);
            *start = block | ((uint64_t)s << shift);
            *level = k;
            *slot = s;
            return 1;
        }
    }
    if (w->occupied[ZK_OVERFLOW_LEVEL] & ((uint64_t)1 << ZK_OVERFLOW_SLOT)) {
        *start = overflow_start(w->elapsed);
        *level = ZK_OVERFLOW_LEVEL;
        *slot = ZK_OVERFLOW_SLOT;
        return 1;
    }
    return 0;
}

/* ---- public API ------------------------------------------------------- */

void zk_wheel_init(zk_timer_wheel *w, uint64_t now)
{
    memset(w, 0, sizeof(*w));
    w->elapsed = now;
}

int zk_wheel_insert(zk_timer_wheel *w, zk_timer_entry *e)
{
    if (e->deadline <= w->elapsed) {
        /* Due already: the caller fires it.  Filing it would break (a). */
        e->linked = 0;
        return 0;
    }
    file_entry(w, e);
    e->linked = 1;
    w->count++;
    return 1;
}

void zk_wheel_remove(zk_timer_wheel *w, zk_timer_entry *e)
{
    if (!e->linked)
        return;
    if (e->level == ZK_PENDING_LEVEL)
        pending_unlink(w, e);
    else
        slot_unlink(w, e);
    e->linked = 0;
    w->count--;
}

uint64_t zk_wheel_next_expiration(const zk_timer_wheel *w)
{
    /* Pending entries are due at exactly elapsed: nothing can be earlier. */
    if (w->pending_head != NULL)
        return w->pending_head->deadline;
    /* A timer due at UINT64_MAX reads as ZK_WHEEL_NEVER here; it can only
     * fire once the clock reaches the end of uint64_t, so that is harmless. */
    uint64_t start;
    unsigned level, slot;
    return next_slot(w, &start, &level, &slot) ? start : ZK_WHEEL_NEVER;
}

zk_timer_entry *zk_wheel_poll(zk_timer_wheel *w, uint64_t now)
{
    for (;;) {
        zk_timer_entry *e = w->pending_head;
        if (e != NULL) {
            /* Pending deadlines equal elapsed; the check only matters if a
             * caller passes a `now` older than a previous one. */
            if (e->deadline > now)
                return NULL;
            pending_unlink(w, e);
            e->linked = 0;
            w->count--;
            return e;
        }

        uint64_t start;
        unsigned level, slot;
        if (!next_slot(w, &start, &level, &slot) || start > now) {
            /* Nothing starts in (elapsed, now]: jump, (c) keeps filings
             * valid. */
            if (now > w->elapsed)
                w->elapsed = now;
            return NULL;
        }

        zk_timer_entry *list = w->slots[level][slot];
        if (level == ZK_OVERFLOW_LEVEL && slot == ZK_OVERFLOW_SLOT) {
            /* The rest of the wheel is empty (it would come first by (b)),
             * so any point up to the earliest overflow deadline is a valid
             * place to jump to; see the top of the file. */
            uint64_t first = now;
            for (zk_timer_entry *it = list; it != NULL; it = it->next)
                if (it->deadline < first)
                    first = it->deadline;
            start = first;
        }

        /* By (b) no slot starts in (elapsed, start): jump to it, detach its
         * list and sort each entry into "due now" or "re-file lower". */
        w->elapsed = start;
        w->slots[level][slot] = NULL;
        w->occupied[level] &= ~((uint64_t)1 << slot);
        while (list != NULL) {
            zk_timer_entry *next = list->next;
            if (list->deadline <= start)   /* == start: start <= every d */
                pending_append(w, list);
            else
                file_entry(w, list);
            list = next;
        }
    }
}
