"""JoinSet: a set of spawned tasks joined in completion order (Tokio's
JoinSet).

Children complete on any worker; their done callbacks move them from the
running set to a FIFO of finished handles under a lock, and wake the tasks
waiting in join_next.  A finished child stays in that FIFO until it is
joined, so a join_next that is cancelled while it waits loses nothing.
"""
from __future__ import annotations

import threading
from collections import deque
from functools import partial
from typing import Any, Coroutine, Optional

from . import _native
from ._scope import CancelScope

Oneshot = _native.Oneshot
_spawn = _native.spawn


class JoinSet:
    """``js = zokio.JoinSet(); js.spawn(coro); r = await js.join_next()``.

    ``len(js)`` counts the children not yet joined (running or finished).
    ``join_next()`` returns the result of the next child to finish, or
    raises its exception (``Cancelled`` for a child that was cancelled, e.g.
    by ``abort_all``); on an empty set it returns ``None`` -- when children
    may return None, loop on ``while js:`` or use ``join_next_handle()``,
    which returns the finished JoinHandle (``None``: empty).  ``async with``
    aborts and waits for what is left at exit (``shutdown``)."""

    __slots__ = ("_lock", "_running", "_finished", "_waiters", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set = set()
        self._finished: deque = deque()
        self._waiters: list = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._running) + len(self._finished)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        with self._lock:
            r, f = len(self._running), len(self._finished)
        return f"<zokio.JoinSet running={r} finished={f}>"

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: Optional[str] = None) -> Any:
        """Spawn ``coro`` into the set; returns its JoinHandle."""
        h = _spawn(coro, name=name)
        with self._lock:
            self._running.add(h)
        h.add_done_callback(partial(self._on_done, h))
        return h

    def _on_done(self, h: Any) -> None:
        # On the worker that finished the child.
        with self._lock:
            if h not in self._running:
                return
            self._running.discard(h)
            self._finished.append(h)
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.set(None)

    def try_join_next_handle(self) -> Optional[Any]:
        """The next finished child's JoinHandle, removed from the set, or
        None if none has finished."""
        with self._lock:
            return self._finished.popleft() if self._finished else None

    def try_join_next(self) -> Any:
        """The next finished child's result (or raise its exception); None
        if none has finished yet."""
        h = self.try_join_next_handle()
        return None if h is None else h.result()

    async def join_next_handle(self) -> Optional[Any]:
        """Wait for the next child to finish and return its JoinHandle,
        removed from the set; None if the set is empty.  Cancel-safe: a
        child that finishes while the caller is cancelled stays for the next
        call."""
        while True:
            with self._lock:
                if self._finished:
                    return self._finished.popleft()
                if not self._running:
                    return None
                w = Oneshot()
                self._waiters.append(w)
            try:
                await w
            except BaseException:
                with self._lock:
                    try:
                        self._waiters.remove(w)
                    except ValueError:
                        pass
                raise

    async def join_next(self) -> Any:
        """The result of the next child to finish (completion order), or its
        exception raised; None if the set is empty."""
        with self._lock:
            h = self._finished.popleft() if self._finished else None
        if h is None:
            h = await self.join_next_handle()
            if h is None:
                return None
        return h.result()

    def abort_all(self) -> None:
        """Cancel every running child.  They stay in the set until joined
        (join_next raises their Cancelled) or until shutdown()."""
        with self._lock:
            kids = list(self._running)
        for h in kids:
            h.cancel()

    def detach_all(self) -> None:
        """Forget every child without cancelling it."""
        with self._lock:
            self._running.clear()
            self._finished.clear()

    async def shutdown(self) -> None:
        """Abort every child, wait until all have finished (shielded: a
        cancellation of the caller is delivered after), and empty the set;
        their results and exceptions are discarded."""
        self.abort_all()
        with CancelScope(shield=True):
            while True:
                h = await self.join_next_handle()
                if h is None:
                    break
                if not h.cancelled():
                    h.exception()  # seen: no "never retrieved" log

    async def __aenter__(self) -> "JoinSet":
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, GeneratorExit):
            self.abort_all()  # the coroutine is being closed: it cannot await
            return False
        await self.shutdown()
        return False
