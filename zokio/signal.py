"""zokio.signal: await OS signals from any task, on any worker.

``await zokio.signal.ctrl_c()`` returns at the next SIGINT;
``async for _ in zokio.signal.listen(signal.SIGHUP): reload()`` runs once per
arrival.  Several listeners of one signal each see every arrival.

How (native/io/signal.c has the details): while a signal has at least one
listener, its disposition is a C handler that writes the signal number
into a pipe; a daemon thread, ``zokio.signal.dispatch``, reads the pipe and wakes
the listeners (each keeps a count, so arrivals between two ``recv`` calls
are not lost, though the kernel itself merges a signal that arrives while
one of the same kind is pending).  When a signal's last listener is
closed, its previous disposition comes back exactly as it was: Python's
handler, the default action, or "ignored".  Signals nobody listens for
through zokio are never touched, so ``signal.signal`` handlers keep
working for them.

With ``block_on``: while SIGINT has zokio listeners, Ctrl-C goes to them and
``block_on`` does not raise ``KeyboardInterrupt``; after the last one
closes, Ctrl-C interrupts ``block_on`` again.
"""
from __future__ import annotations

import os
import signal as _signal
import threading
from typing import Any, Optional

from . import _native
from ._api import Oneshot

__all__ = ["SignalListener", "ctrl_c", "listen"]

# Signals that report a fault in the thread that got them: running a
# handler that returns would re-execute the faulting instruction.
_FORBIDDEN = frozenset(getattr(_signal, n) for n in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL",
                                                       "SIGKILL", "SIGSTOP")
                       if hasattr(_signal, n))

_lock = threading.RLock()  # guards _listeners and every listener's state; reentrant:
#                           a collection inside it may finalize another listener
_listeners: dict[int, list["SignalListener"]] = {}
_dispatcher: Optional[threading.Thread] = None


def _dispatch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 512)
        except InterruptedError:
            continue
        if not data:
            return
        woken = []
        with _lock:
            for signum in data:
                for listener in _listeners.get(signum, ()):
                    listener._pending += 1
                    cell = listener._waiting
                    if cell is not None:
                        listener._waiting = None
                        woken.append(cell)
        for cell in woken:
            cell.set(None)


class SignalListener:
    """Arrivals of one signal.  ``await recv()`` for the next one (or one
    that came since the last call); ``async for`` to loop; ``close()`` (or
    ``async with``) to stop listening."""

    __slots__ = ("signum", "_pending", "_waiting", "_closed", "__weakref__")

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self._pending = 0
        self._waiting: Optional[Oneshot] = None
        self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending={self._pending}"
        return f"<zokio.signal.SignalListener {_signal.Signals(self.signum).name} {state}>"

    async def recv(self) -> int:
        """Wait for the next arrival; returns the signal number.  Arrivals
        while nobody waited are counted and returned at once.  Cancel-safe:
        a cancelled call consumes no arrival.  One task at a time."""
        while True:
            with _lock:
                if self._closed:
                    raise RuntimeError("this signal listener is closed")
                if self._pending:
                    self._pending -= 1
                    return self.signum
                if self._waiting is not None:
                    raise RuntimeError("another task is already waiting on this signal listener")
                cell = self._waiting = Oneshot()
            try:
                await cell
            finally:
                with _lock:
                    if self._waiting is cell:
                        self._waiting = None

    def close(self) -> None:
        """Stop listening.  The last listener of a signal puts its previous
        disposition back.  A task waiting in ``recv`` gets RuntimeError."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            group = _listeners.get(self.signum, [])
            if self in group:
                group.remove(self)
            last = not group
            if last:
                _listeners.pop(self.signum, None)
                _native.signal_restore(self.signum)
            cell, self._waiting = self._waiting, None
        if cell is not None:
            cell.set(None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # interpreter teardown

    def __aiter__(self) -> "SignalListener":
        return self

    async def __anext__(self) -> int:
        try:
            return await self.recv()
        except RuntimeError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    async def __aenter__(self) -> "SignalListener":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __enter__(self) -> "SignalListener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _after_fork_in_child() -> None:
    # The parent's listeners and dispatcher thread do not exist here, and the
    # pipe is the parent's: start from nothing.
    global _lock, _dispatcher
    _lock = threading.RLock()
    for group in _listeners.values():
        for listener in group:
            listener._closed = True
            listener._waiting = None
    _listeners.clear()
    _dispatcher = None
    _native.signal_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def listen(signum: int) -> SignalListener:
    """Start listening for ``signum`` (from now on: arrivals before this call
    are not seen).  Any thread.  ``ValueError`` for signals that cannot be
    handled (SIGKILL, SIGSTOP) or that report faults (SIGSEGV, SIGBUS,
    SIGFPE, SIGILL)."""
    global _dispatcher
    signum = int(signum)
    if signum in _FORBIDDEN:
        raise ValueError(f"zokio.signal cannot listen for {_signal.Signals(signum).name}")
    if not 0 < signum < _signal.NSIG:
        raise ValueError(f"signal number out of range: {signum}")
    listener = SignalListener(signum)
    with _lock:
        if _dispatcher is None:
            fd = _native.signal_pipe()
            _dispatcher = threading.Thread(target=_dispatch, args=(fd,),
                                           name="zokio.signal.dispatch", daemon=True)
            _dispatcher.start()
        group = _listeners.setdefault(signum, [])
        if not group:
            try:
                _native.signal_install(signum)
            except BaseException:
                _listeners.pop(signum, None)
                raise
        group.append(listener)
        listener._closed = False
    return listener


async def ctrl_c() -> None:
    """Wait for the next SIGINT (Ctrl-C).  While it waits, Ctrl-C does not
    interrupt ``block_on``."""
    with listen(_signal.SIGINT) as listener:
        await listener.recv()
