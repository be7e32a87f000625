"""Channels of zokio.sync.

mpsc (``channel``, ``unbounded_channel``) is native (native/sync/channel.c):
its Sender and Receiver are C types, so ``await tx.send(x)`` on a channel
with room and ``await rx.recv()`` on one with items never build a coroutine
frame.

``oneshot`` is a native channel of capacity 1 behind a sender that sends
once.  ``broadcast`` and ``watch`` are small Python classes over native
pieces: each keeps its state behind one ``threading.Lock`` held only
for O(1) work that never awaits, and parks a task on a ``zokio.Oneshot``
cell (a plain thread on a ``threading.Event``) that a sender completes after
releasing the lock.  A wake carries nothing: the woken side takes what it
wants under the lock, so a cancelled wait loses nothing and a late wake is
harmless.
"""
from __future__ import annotations

import threading
from typing import Any, Generic, Optional, Tuple, TypeVar

from .. import _native
# One reading of a timeout for every wait outside a task (native ones:
# core/timeout_arg.h).
from .._runtime import _deadline_after as _deadline, _remaining
from ._errors import ChannelClosed, Lagged, QueueEmpty, QueueFull

__all__ = [
    "channel", "unbounded_channel", "Sender", "Receiver",
    "oneshot", "OneshotSender", "OneshotReceiver",
    "broadcast", "BroadcastSender", "BroadcastReceiver",
    "watch", "WatchSender", "WatchReceiver",
]

T = TypeVar("T")

_native._channel_errors(ChannelClosed, QueueFull, QueueEmpty)

Sender = _native.ChannelSender
Receiver = _native.ChannelReceiver
_Oneshot = _native.Oneshot
_Event = threading.Event


def channel(capacity: int) -> Tuple[Sender, Receiver]:
    """A bounded mpsc channel: ``send`` waits while ``capacity`` items are
    buffered.  Returns ``(Sender, Receiver)``."""
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"channel capacity must be an int, not {type(capacity).__name__}")
    return _native.mpsc_channel(capacity)


def unbounded_channel() -> Tuple[Sender, Receiver]:
    """An mpsc channel whose ``send`` never waits.  Returns ``(Sender, Receiver)``."""
    return _native.mpsc_channel(None)


# ---- shared helpers ---------------------------------------------------------


def _wake(waiters) -> None:
    """Complete every parked waiter (outside the lock)."""
    for w in waiters:
        w.set() if type(w) is _Event else w.set(None)


def _refuse_on_worker(what: str) -> None:
    if _native.current_scheduler() is not None:
        raise RuntimeError(f"{what}() would block a zokio worker thread; await the async "
                           f"form in a task (the _blocking variants are for plain threads)")


class _Parking:
    """What every Python channel shares: a lock and the parked waiters (an
    insertion-ordered dict used as a set).

    The lock is reentrant because ``__del__`` of a dropped half takes it,
    and the collector may run that finalizer inside any critical section of
    the same thread (at an allocation or a call).  Such a finalizer only
    counts a half out and wakes the waiters, and every wait registers its
    waiter BEFORE its last look at the state, so a change made by it
    anywhere in a critical section is either seen or wakes the waiter."""

    __slots__ = ("lock", "waiters")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.waiters: dict = {}

    def take_waiters_locked(self):
        w = self.waiters
        if not w:
            return ()
        self.waiters = {}
        return w

    async def park(self, try_take):
        """Run ``try_take()`` under the lock until it returns something
        other than _EMPTY; park a task between tries."""
        while True:
            cell = _Oneshot()
            with self.lock:
                self.waiters[cell] = None
                try:
                    r = try_take()
                except BaseException:
                    self.waiters.pop(cell, None)
                    raise
                if r is not _EMPTY:
                    self.waiters.pop(cell, None)
                    return r
            try:
                await cell
            finally:
                if not cell.done():  # cancelled: leave the list
                    with self.lock:
                        self.waiters.pop(cell, None)

    def park_blocking(self, try_take, timeout: Optional[float], what: str):
        _refuse_on_worker(what)
        deadline = _deadline(timeout)
        while True:
            ev = _Event()
            with self.lock:
                self.waiters[ev] = None
                try:
                    r = try_take()
                except BaseException:
                    self.waiters.pop(ev, None)
                    raise
                if r is not _EMPTY:
                    self.waiters.pop(ev, None)
                    return r
            ok = ev.wait(_remaining(deadline))
            if not ok:
                with self.lock:
                    self.waiters.pop(ev, None)
                    r = try_take()  # a last look: a value may have landed
                if r is not _EMPTY:
                    return r
                raise TimeoutError("timed out")


class _Empty:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<empty>"


_EMPTY: Any = _Empty()


# ---- oneshot ------------------------------------------------------------------
#
# A oneshot is a native mpsc channel of capacity 1 whose sender sends once:
# the value waits in the ring, the receiver's wait is the channel's, and a
# sender dropped unsent ends the channel like the last mpsc sender.


class OneshotSender(Generic[T]):
    """Sends one value, from any thread (``send`` never waits).  Dropped or
    closed without sending, it ends the channel with ChannelClosed."""

    __slots__ = ("_tx", "_once", "__weakref__")

    def __init__(self, tx) -> None:
        self._tx = tx
        self._once = threading.Lock()   # acquired by the one send or close

    def send(self, value: T) -> None:
        """Deliver ``value``.  RuntimeError if already sent or closed;
        ChannelClosed (``item`` = value) if the receiver is gone."""
        if not self._once.acquire(False):
            raise RuntimeError("this oneshot sender was already used")
        try:
            self._tx.try_send(value)
        finally:
            self._tx.close()

    try_send = send
    send_blocking = send

    def close(self) -> None:
        """Give up without sending: the receiver gets ChannelClosed."""
        if self._once.acquire(False):
            self._tx.close()

    def is_closed(self) -> bool:
        """True once the receiver is gone (or this sender was used)."""
        return self._tx.is_closed()

    def __repr__(self) -> str:
        return f"<zokio.sync.OneshotSender {'used' if self._once.locked() else 'pending'}>"


class OneshotReceiver(Generic[T]):
    """``await rx`` (or ``await rx.recv()``) gets the value; ChannelClosed if
    the sender was dropped or closed without sending (or the value was
    already received)."""

    __slots__ = ("_rx", "__weakref__")

    def __init__(self, rx) -> None:
        self._rx = rx

    def recv(self):
        """Awaitable: the value.  Cancel-safe: a cancelled recv leaves the
        value for the next one."""
        return self._rx.recv()

    def __await__(self):
        return self._rx.recv().__await__()

    def try_recv(self) -> T:
        """The value if sent; QueueEmpty if not yet; ChannelClosed if it
        never will be (or was already received)."""
        return self._rx.try_recv()

    def recv_blocking(self, timeout: Optional[float] = None) -> T:
        """Plain threads: wait (TimeoutError after ``timeout`` seconds)."""
        return self._rx.recv_blocking(timeout)

    def close(self) -> None:
        """Refuse the value: a later send raises ChannelClosed.  A value
        already sent can still be received."""
        self._rx.close()

    def __repr__(self) -> str:
        return f"<zokio.sync.OneshotReceiver {'sent' if len(self._rx) else 'empty'}>"


def oneshot() -> Tuple[OneshotSender, OneshotReceiver]:
    """A channel for one value: ``(OneshotSender, OneshotReceiver)``."""
    tx, rx = _native.mpsc_channel(1)
    return OneshotSender(tx), OneshotReceiver(rx)


# ---- broadcast ---------------------------------------------------------------


class _BroadcastState(_Parking):
    __slots__ = ("capacity", "ring", "tail", "senders", "receivers")

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.ring: list = [None] * capacity
        self.tail = 0            # sequence number of the next message
        self.senders = 1
        self.receivers = 0


class _CountedSender:
    """What broadcast and watch senders share: each one counts in its
    state's ``senders``; the last one closed (or collected) ends the
    receivers' waits."""

    __slots__ = ("_s", "_closed", "__weakref__")
    _kind = "sender"

    def __init__(self, state: Any) -> None:
        self._s = state
        self._closed = False

    def clone(self):
        s = self._s
        with s.lock:
            if self._closed:
                raise ChannelClosed(f"this {self._kind} was closed")
            s.senders += 1
            return type(self)(s)

    def close(self) -> None:
        """This sender is done; receivers end (after what is retained) when
        every sender is closed or dropped."""
        s = self._s
        with s.lock:
            if self._closed:
                return
            self._closed = True
            s.senders -= 1
            waiters = s.take_waiters_locked() if s.senders == 0 else ()
        _wake(waiters)

    def is_closed(self) -> bool:
        with self._s.lock:
            return self._closed or self._s.receivers == 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class BroadcastSender(_CountedSender, Generic[T]):
    """Sends to every receiver subscribed at the time.  ``send`` never
    waits: a slow receiver is overwritten (it then gets Lagged)."""

    __slots__ = ()
    _kind = "broadcast sender"

    def send(self, value: T) -> int:
        """Send to every receiver; returns how many there are.
        ChannelClosed (``item`` = value) if there are none."""
        s = self._s
        with s.lock:
            if self._closed:
                raise ChannelClosed("this broadcast sender was closed")
            if s.receivers == 0:
                err = ChannelClosed("no broadcast receiver")
                err.item = value
                raise err
            s.ring[s.tail % s.capacity] = value
            s.tail += 1
            n = s.receivers
            waiters = s.take_waiters_locked()
        _wake(waiters)
        return n

    try_send = send
    send_blocking = send

    def subscribe(self) -> "BroadcastReceiver[T]":
        """A new receiver that sees every message sent from now on."""
        s = self._s
        with s.lock:
            s.receivers += 1
            return BroadcastReceiver(s, s.tail)

    def receiver_count(self) -> int:
        with self._s.lock:
            return self._s.receivers



class _CountedReceiver:
    """What broadcast and watch receivers share: each one counts in its
    state's ``receivers``; iteration takes messages until the channel ends.
    A subclass defines ``_take_locked``."""

    __slots__ = ("_s", "_closed", "__weakref__")

    def close(self) -> None:
        s = self._s
        with s.lock:
            if self._closed:
                return
            self._closed = True
            s.receivers -= 1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __aiter__(self):
        return self

    async def __anext__(self) -> T:
        try:
            return await self._s.park(self._take_locked)
        except ChannelClosed:
            raise StopAsyncIteration from None


class BroadcastReceiver(_CountedReceiver, Generic[T]):
    """Receives every message sent after it subscribed, in order."""

    __slots__ = ("_next",)

    def __init__(self, state: _BroadcastState, start: int) -> None:
        self._s = state
        self._next = start
        self._closed = False

    def _take_locked(self):
        s = self._s
        if self._closed:
            raise ChannelClosed("this broadcast receiver was closed")
        oldest = s.tail - s.capacity
        if self._next < oldest:
            missed = oldest - self._next
            self._next = oldest
            raise Lagged(missed)
        if self._next < s.tail:
            v = s.ring[self._next % s.capacity]
            self._next += 1
            return v
        if s.senders == 0:
            raise ChannelClosed("every broadcast sender is gone")
        return _EMPTY

    async def recv(self) -> T:
        """The next message.  Lagged (with ``missed``) once if this receiver
        fell more than ``capacity`` behind; ChannelClosed once every sender
        is gone and everything retained was read.  Cancel-safe."""
        return await self._s.park(self._take_locked)

    def try_recv(self) -> T:
        with self._s.lock:
            r = self._take_locked()
        if r is _EMPTY:
            raise QueueEmpty("no new broadcast message")
        return r

    def recv_blocking(self, timeout: Optional[float] = None) -> T:
        return self._s.park_blocking(self._take_locked, timeout, "recv_blocking")

    def resubscribe(self) -> "BroadcastReceiver[T]":
        """A new receiver starting at the newest message (not this one's
        position)."""
        s = self._s
        with s.lock:
            s.receivers += 1
            return BroadcastReceiver(s, s.tail)

    def __len__(self) -> int:
        """Messages retained that this receiver has not read yet."""
        s = self._s
        with s.lock:
            return s.tail - max(self._next, s.tail - s.capacity)



def broadcast(capacity: int) -> Tuple[BroadcastSender, BroadcastReceiver]:
    """A channel where each receiver sees every message, keeping the last
    ``capacity`` for slow receivers.  Returns ``(BroadcastSender,
    BroadcastReceiver)``; ``tx.subscribe()`` makes more receivers."""
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"broadcast capacity must be an int, not {type(capacity).__name__}")
    if capacity < 1:
        raise ValueError("broadcast capacity must be at least 1")
    s = _BroadcastState(capacity)
    tx = BroadcastSender(s)
    return tx, tx.subscribe()


# ---- watch ---------------------------------------------------------------------


class _WatchState(_Parking):
    __slots__ = ("value", "version", "senders", "receivers")

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.version = 0
        self.senders = 1
        self.receivers = 0


class WatchSender(_CountedSender, Generic[T]):
    """Publishes the latest value; receivers are told that it changed."""

    __slots__ = ()
    _kind = "watch sender"

    def send(self, value: T) -> None:
        """Replace the value and notify every receiver.  ChannelClosed
        (``item`` = value, value not stored) if no receiver is left."""
        s = self._s
        with s.lock:
            if self._closed:
                raise ChannelClosed("this watch sender was closed")
            if s.receivers == 0:
                err = ChannelClosed("no watch receiver")
                err.item = value
                raise err
            s.value = value
            s.version += 1
            waiters = s.take_waiters_locked()
        _wake(waiters)

    try_send = send
    send_blocking = send

    def send_replace(self, value: T) -> T:
        """Store ``value`` even with no receiver; returns the previous one."""
        s = self._s
        with s.lock:
            if self._closed:
                raise ChannelClosed("this watch sender was closed")
            old, s.value = s.value, value
            s.version += 1
            waiters = s.take_waiters_locked()
        _wake(waiters)
        return old

    def borrow(self) -> T:
        with self._s.lock:
            return self._s.value

    def subscribe(self) -> "WatchReceiver[T]":
        """A receiver that has seen the current value."""
        s = self._s
        with s.lock:
            s.receivers += 1
            return WatchReceiver(s, s.version)

    def receiver_count(self) -> int:
        with self._s.lock:
            return self._s.receivers



class WatchReceiver(_CountedReceiver, Generic[T]):
    """Sees the latest value and waits for changes."""

    __slots__ = ("_seen",)

    def __init__(self, state: _WatchState, seen: int) -> None:
        self._s = state
        self._seen = seen
        self._closed = False

    def borrow(self) -> T:
        """The latest value (does not mark it seen)."""
        with self._s.lock:
            return self._s.value

    def borrow_and_update(self) -> T:
        """The latest value, marked seen."""
        s = self._s
        with s.lock:
            self._seen = s.version
            return s.value

    def has_changed(self) -> bool:
        """A value this receiver has not seen was sent."""
        s = self._s
        with s.lock:
            return s.version != self._seen

    def _take_locked(self):
        s = self._s
        if self._closed:
            raise ChannelClosed("this watch receiver was closed")
        if s.version != self._seen:
            self._seen = s.version
            return s.value
        if s.senders == 0:
            raise ChannelClosed("every watch sender is gone")
        return _EMPTY

    async def changed(self) -> None:
        """Wait until a value this receiver has not seen is sent, and mark
        it seen.  ChannelClosed once every sender is gone.  Cancel-safe."""
        await self._s.park(self._take_locked)

    async def recv(self) -> T:
        """``changed()`` then the value it saw."""
        return await self._s.park(self._take_locked)

    def try_recv(self) -> T:
        """The value if it changed since last seen (marked seen);
        QueueEmpty if not; ChannelClosed if it never will."""
        with self._s.lock:
            r = self._take_locked()
        if r is _EMPTY:
            raise QueueEmpty("no change")
        return r

    def recv_blocking(self, timeout: Optional[float] = None) -> T:
        """Plain threads: wait for a change and return the value."""
        return self._s.park_blocking(self._take_locked, timeout, "recv_blocking")

    def clone(self) -> "WatchReceiver[T]":
        s = self._s
        with s.lock:
            s.receivers += 1
            return WatchReceiver(s, self._seen)



def watch(initial: T) -> Tuple[WatchSender, WatchReceiver]:
    """A channel that keeps only the latest value.  Returns ``(WatchSender,
    WatchReceiver)``; the receiver has seen ``initial``."""
    s = _WatchState(initial)
    tx = WatchSender(s)
    return tx, tx.subscribe()
