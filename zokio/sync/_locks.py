"""Lock, Mutex, RwLock, Semaphore and BoundedSemaphore: every one of them is
a zokio._native.BatchSemaphore (native/sync/semaphore.c), a FIFO batch
semaphore with direct handoff.  The methods on the hot path (acquire,
release, ``async with``) are the native ones, inherited or aliased: an
uncontended acquire returns an already completed awaitable without running
any Python code."""
from __future__ import annotations

from .._native import BatchSemaphore as _Sem

__all__ = ["Lock", "Mutex", "RwLock", "Semaphore", "BoundedSemaphore"]

# BatchSemaphore(permits, bound, over_release): over_release says what a
# release past `bound` raises: 1 ValueError, 2 RuntimeError.
_VALUE_ERROR = 1
_RUNTIME_ERROR = 2

# An RwLock writer takes every permit; readers take one each.
_MAX_READERS = 1 << 30


class Semaphore(_Sem):
    """A counting semaphore.  ``await acquire(n=1)`` takes n permits, first
    come first served (a large request at the head is not overtaken by small
    ones); ``release(n=1)`` works from any thread."""

    __slots__ = ()

    def __new__(cls, permits: int = 1):
        if not isinstance(permits, int) or isinstance(permits, bool):
            raise TypeError(f"permits must be an int, not {type(permits).__name__}")
        return _Sem.__new__(cls, permits)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} available={self.available} waiting={self.waiting}>"


class BoundedSemaphore(Semaphore):
    """A Semaphore whose release past the initial count raises ValueError."""

    __slots__ = ()

    def __new__(cls, permits: int = 1):
        if not isinstance(permits, int) or isinstance(permits, bool):
            raise TypeError(f"permits must be an int, not {type(permits).__name__}")
        return _Sem.__new__(cls, permits, permits, _VALUE_ERROR)


class Lock(_Sem):
    """An async lock with FIFO handoff: ``release()`` hands the lock to the
    first waiter, nobody barges in.  ``release()`` works from any thread;
    releasing an unlocked Lock raises RuntimeError."""

    __slots__ = ()

    def __new__(cls):
        return _Sem.__new__(cls, 1, 1, _RUNTIME_ERROR)

    # acquire() (-> True once held), try_acquire(), release(), locked() and
    # ``async with`` are the native methods, inherited.

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<Lock {state} waiting={self.waiting}>"


class Mutex(_Sem):
    """A lock guarding a value (as Tokio's Mutex)::

        async with mutex as guard:
            guard.value += 1

    ``await mutex.lock()`` returns the guard (``guard.release()`` ends it);
    ``try_lock()`` returns a guard or None.  ``guard.value`` works only while
    that guard holds the lock; afterwards it raises RuntimeError."""

    __slots__ = ("_value",)

    def __new__(cls, value=None):
        self = _Sem.__new__(cls, 1, 1, _RUNTIME_ERROR)
        self._value = value
        return self

    # Native: a new guard over self, acquired (the await returns it).
    lock = _Sem._lock_guard
    __aenter__ = _Sem._lock_guard
    __aexit__ = _Sem._unlock_holder
    try_lock = _Sem._try_lock_guard

    def release(self) -> None:
        """Release the lock held through the current guard."""
        self._unlock_holder()

    def acquire(self, *args):
        raise TypeError("Mutex has no acquire(): use `async with mutex as guard` or "
                        "`guard = await mutex.lock()`")

    try_acquire = acquire_blocking = acquire

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<Mutex {state} waiting={self.waiting}>"


class RwLock:
    """A reader-writer lock guarding a value: many readers or one writer.

    ``async with rw.read() as g`` / ``async with rw.write() as g`` (or
    ``g = await rw.read()`` and ``g.release()``); ``try_read()`` /
    ``try_write()`` return a guard or None.  Fair (Tokio's design): one FIFO
    queue where a reader takes one permit and a writer takes all of them, so
    a queued writer blocks the readers that come after it (writer-preferring)
    and is itself served in turn (no starvation either way).  A read guard's
    ``value`` is read-only.  A guard dropped while it holds the lock releases
    it."""

    __slots__ = ("_sem", "_value", "_max", "__weakref__")

    def __init__(self, value=None, *, max_readers: int = _MAX_READERS):
        if max_readers < 1:
            raise ValueError("max_readers must be >= 1")
        self._value = value
        self._max = max_readers
        self._sem = _Sem(max_readers, max_readers, _RUNTIME_ERROR)

    def read(self):
        """An unacquired read guard: ``async with`` or ``await`` it."""
        return self._sem._guard(1, self, False)

    def write(self):
        """An unacquired write guard: ``async with`` or ``await`` it."""
        return self._sem._guard(self._max, self, True)

    def try_read(self):
        return self._sem._try_guard(1, self, False)

    def try_write(self):
        return self._sem._try_guard(self._max, self, True)

    @property
    def readers(self) -> int:
        """How many read guards hold the lock (``max_readers`` while written)."""
        return self._max - self._sem.available

    @property
    def waiting(self) -> int:
        return self._sem.waiting

    def __repr__(self) -> str:
        avail = self._sem.available
        if avail == self._max:
            state = "unlocked"
        elif avail == 0 and self._sem.waiting == 0:
            state = "locked"
        else:
            state = f"readers={self._max - avail}"
        return f"<RwLock {state} waiting={self._sem.waiting}>"
