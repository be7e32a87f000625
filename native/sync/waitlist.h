/* waitlist.h -- the one FIFO wait list every zokio.sync primitive and every
 * channel parks on (after trio's parking lot and Tokio's batch semaphore).
 *
 * A primitive (Semaphore, channel, Notify...) embeds one or more
 * zk_waitlist and owns one zk_mutex that guards both the lists and its own
 * state (permits, buffered messages).  Everything that decides who gets what
 * happens under that mutex; waking happens after it is released.
 *
 * A parked party is a zk_waiter: a leaf (core/leaf.h) awaited by exactly one
 * task, or waited on by one plain thread (zk_waiter_block).  Its life:
 *
 *     zk_waiter_new          not linked, not granted
 *       | zk_waitlist_push_locked (under the primitive's mutex)
 *     LINKED                 the list owns a reference
 *       | zk_waitlist_pop_locked / zk_waitlist_take_locked  -> GRANTED
 *       | zk_waitlist_remove_locked (a cancel)             -> REMOVED
 *     GRANTED                unlinked; the grant (permits, a message) is
 *       |                    the waiter's: zk_waiter_complete wakes it
 *       | the task resumes and takes the outcome          -> CONSUMED
 *       | the waiter dies unconsumed (task closed at shutdown, waiter
 *       |   dropped): give_back(owner, waiter) returns the grant
 *
 * Cancellation (a cancel or a timeout interrupt reaching a task suspended on
 * a waiter) is decided under the primitive's mutex, so it cannot race a
 * grant:
 *   still LINKED    -> removed (a partial grant is given back); the
 *                      interrupt is thrown now
 *   GRANTED         -> the task resumes with the grant first and the
 *                      interrupt is thrown at its next suspension
 *                      (ZK_INTERRUPT_LATER), so a permit or a message handed
 *                      over at the very moment of the cancel is never lost
 *   GRANTED, wake still in flight -> ZK_INTERRUPT_WAIT until it lands
 *
 * Locking rules (brief §7): the mutex is a zk_mutex (PyMutex on 3.13t, which
 * detaches while it waits).  Inside a critical section: no Python code, no
 * decref that can free an object, no allocation that can run the GC, no
 * blocking.  Collect what to wake or free, unlock, then act.
 */
#ifndef ZOKIO_WAITLIST_H
#define ZOKIO_WAITLIST_H

#include "core/leaf.h"

typedef struct zk_waitlist zk_waitlist;
typedef struct zk_waiter zk_waiter;

enum {
    ZK_WAITER_NEW = 0,
    ZK_WAITER_LINKED = 1,
    ZK_WAITER_GRANTED = 2,
    ZK_WAITER_REMOVED = 3,
};

/* Return an unconsumed grant to the primitive (permits back to the count,
 * a message back to the front of the buffer, then wake whoever can use it).
 * Called with the primitive's mutex NOT held, attached, from the cancel path
 * or from the waiter's dealloc; it takes the mutex itself.  It reads the
 * waiter (got, want, kind; it may steal `item`, leaving NULL) but takes and
 * drops no reference to it: from dealloc the waiter's count is already 0.
 * Called at most once per waiter (an exchange on `consumed` decides). */
typedef void (*zk_give_back_fn)(PyObject *owner, zk_waiter *w);

struct zk_waitlist {
    zk_mutex *lock;         /* the primitive's mutex (not owned) */
    zk_waiter *head;        /* FIFO: push at tail, grant from head */
    zk_waiter *tail;
    Py_ssize_t length;
    PyObject *owner;        /* the primitive embedding this list; borrowed
                               (a linked or granted waiter holds a strong
                               reference to it) */
    zk_give_back_fn give_back;  /* NULL: grants carry nothing to return */
};

struct zk_waiter {
    zk_leaf leaf;           /* completed = woken with its outcome */
    zk_waiter *prev, *next; /* under *list->lock while LINKED */
    zk_waitlist *list;      /* the list it was pushed on, or NULL */
    PyObject *owner;        /* strong, from push until consumed/given back */
    int waiter_state;       /* ZK_WAITER_*, under *list->lock */
    int kind;               /* the primitive's tag (reader / writer, ...) */
    Py_ssize_t want;        /* what it asks for (permits; 1 for a message) */
    Py_ssize_t got;         /* assigned so far (partial grants, Semaphore) */
    PyObject *item;         /* payload the primitive parks with the waiter
                               (a blocked sender's message), or NULL; strong */
    _Atomic int consumed;   /* the outcome reached its task or thread */
    _Atomic int blocking;   /* a plain thread waits in zk_waiter_block */
};

/* Init a list inside its primitive.  `lock` guards it; `owner` is the
 * primitive object. */
void zk_waitlist_init(zk_waitlist *wl, zk_mutex *lock, PyObject *owner,
                      zk_give_back_fn give_back);

/* A new waiter asking for `want` units with tag `kind`.  Attached; may run
 * the GC, so call it BEFORE taking the primitive's mutex.  New reference, or
 * NULL with an exception. */
zk_waiter *zk_waiter_new(Py_ssize_t want, int kind);

/* Under the mutex.  Append at the tail; the list takes a reference to the
 * waiter and the waiter one to the list's owner (taking references never
 * frees anything, so it is allowed here). */
void zk_waitlist_push_locked(zk_waitlist *wl, zk_waiter *w);

/* Under the mutex.  The head, or NULL; it stays linked. */
static inline zk_waiter *zk_waitlist_head_locked(zk_waitlist *wl) { return wl->head; }

/* Under the mutex.  Unlink the head and mark it GRANTED; returns the list's
 * reference to it (NULL if empty).  After unlocking, the caller completes it
 * with zk_waiter_complete, which consumes that reference. */
zk_waiter *zk_waitlist_pop_locked(zk_waitlist *wl);

/* Under the mutex.  Unlink a LINKED waiter from anywhere in the list, O(1),
 * and mark it GRANTED (take) or REMOVED (remove).  Returns the list's
 * reference, which the caller releases or completes after unlocking. */
zk_waiter *zk_waitlist_take_locked(zk_waitlist *wl, zk_waiter *w);
zk_waiter *zk_waitlist_remove_locked(zk_waitlist *wl, zk_waiter *w);

/* Mutex NOT held.  Wake a GRANTED waiter with `value` (stolen; NULL means
 * None) or `exc` (stolen exception instance, e.g. a closed channel's error);
 * consumes the reference the pop/take returned. */
void zk_waiter_complete(zk_waiter *w, PyObject *value, PyObject *exc);

/* Plain thread, attached: wait detached (futex on the leaf's done word)
 * until the waiter is completed or `timeout_ns` passes (< 0: forever).
 * Returns 1 if completed (the outcome is then consumed by this thread),
 * 0 on timeout (the caller removes it under the mutex; if the removal finds
 * it already GRANTED, the grant must be taken after all), -1 with
 * KeyboardInterrupt etc. from a signal check. */
int zk_waiter_block(zk_waiter *w, int64_t timeout_ns);

/* The outcome of a completed waiter as a new reference (value or raises
 * the stored exception); marks it consumed. */
PyObject *zk_waiter_take_outcome(zk_waiter *w);

/* Module init: the Waiter type and its leaf kind (ops: ready, register,
 * unregister, interrupt_mode as described above), then the primitives of
 * semaphore.c and notify.c (below). */
int zk_waitlist_types_init(PyObject *module, zk_state *st);

/* ---- shared by the primitives ------------------------------------------- */

/* An awaitable that is already complete with `value` (a new reference):
 * what an operation returns when it did not have to park.  Ready(None),
 * Ready(True) and Ready(False) are shared immortal instances (no allocation); other values
 * get a small new object.  semaphore.c. */
PyObject *zk_sync_ready(PyObject *value);

/* Module init of semaphore.c (BatchSemaphore, Guard, Ready; first) and of
 * notify.c (Notify, Event); zk_waitlist_types_init calls both. */
int zk_semaphore_types_init(PyObject *module, zk_state *st);
int zk_notify_types_init(PyObject *module, zk_state *st);

#endif
