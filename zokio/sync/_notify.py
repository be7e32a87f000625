"""Notify, Event, Condition and Barrier.

Notify and Event are native (native/sync/notify.c): one wait list each.
Condition parks on a Notify that never stores a permit; Barrier parks each
round on an Event."""
from __future__ import annotations

import threading

from .._native import Event, Notify
from ._locks import Lock

__all__ = ["Notify", "Event", "Condition", "Barrier"]


class Condition:
    """asyncio's Condition across worker threads: ``async with cond``,
    ``await cond.wait()``, ``await cond.wait_for(predicate)``,
    ``cond.notify(n=1)``, ``cond.notify_all()``.  notify needs the lock held
    (a plain thread may hold it through ``acquire_blocking``)."""

    __slots__ = ("_lock", "_waiters", "__weakref__")

    def __init__(self, lock: Lock | None = None):
        if lock is None:
            lock = Lock()
        self._lock = lock
        self._waiters = Notify()  # only notify(n) and notify_waiters: no stored permit

    def __aenter__(self):
        return self._lock.__aenter__()

    def __aexit__(self, *exc):
        return self._lock.__aexit__(*exc)

    def acquire(self):
        return self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    async def wait(self) -> bool:
        """Release the lock, wait for notify(), take the lock back.  The lock
        is held again when wait() returns or raises (also when cancelled; a
        notification that arrived with the cancel is passed on)."""
        if not self._lock.locked():
            raise RuntimeError("cannot wait on an un-acquired lock")
        w = self._waiters.notified()  # parked before the lock goes
        self._lock.release()
        notified = closing = False
        try:
            await w
            notified = True
            return True
        except GeneratorExit:
            # The coroutine is being closed (runtime shutdown past its
            # deadline): it may not await again.  Take the lock back only if
            # that needs no wait, so that the caller's `async with` exit
            # releases what it holds.
            closing = True
            self._lock.try_acquire()
            raise
        finally:
            if not closing:
                error = None
                while True:
                    try:
                        await self._lock.acquire()
                        break
                    except GeneratorExit:
                        raise
                    except BaseException as e:  # an interrupt while re-locking
                        if error is None:
                            error = e
                if error is not None:
                    if notified:
                        self._waiters.notify(1)
                    raise error

    async def wait_for(self, predicate):
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> int:
        """Wake up to n waiters (FIFO); returns how many."""
        if not self._lock.locked():
            raise RuntimeError("cannot notify on an un-acquired lock")
        return self._waiters.notify(n)

    def notify_all(self) -> int:
        if not self._lock.locked():
            raise RuntimeError("cannot notify on an un-acquired lock")
        return self._waiters.notify_waiters()

    def __repr__(self) -> str:
        return f"<Condition {self._lock!r} waiting={self._waiters.waiting}>"


class Barrier:
    """``await barrier.wait()`` returns once `parties` tasks have called it;
    each gets its arrival index (0 .. parties-1; the last to arrive gets
    parties-1).  Reusable: the next round starts at once.  A wait that is
    cancelled still counts as an arrival (as Tokio's), so the other parties
    of its round are not stranded."""

    __slots__ = ("_parties", "_count", "_event", "_mutex", "_rounds", "__weakref__")

    def __init__(self, parties: int):
        if not isinstance(parties, int) or parties < 1:
            raise ValueError(f"parties must be an int >= 1, got {parties!r}")
        self._parties = parties
        self._count = 0
        self._rounds = 0
        self._event = Event()
        # Guards three fields for a few bytecodes, never across an await.
        self._mutex = threading.Lock()

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return self._count

    async def wait(self) -> int:
        with self._mutex:
            index = self._count
            event = self._event
            if index + 1 == self._parties:
                self._count = 0
                self._rounds += 1
                self._event = Event()
            else:
                self._count = index + 1
        if index + 1 == self._parties:
            event.set()
        else:
            await event.wait()
        return index

    def __repr__(self) -> str:
        return f"<Barrier parties={self._parties} waiting={self._count}>"
