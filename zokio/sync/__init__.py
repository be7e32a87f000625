"""zokio.sync: locks, semaphores, notifications and channels that work
across worker threads (and, for the sending and notifying side, from plain
threads).  Every primitive parks its waiters on one native FIFO wait list
(native/sync/waitlist.h)."""
