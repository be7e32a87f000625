"""select, race, gather, as_completed.

Each awaitable runs as a task of its own: a coroutine is spawned, a
JoinHandle is used as it is, anything else awaitable (Oneshot, sleep, an
I/O op...) is awaited by a small task.  What these functions start, they
finish: every task they cancel is also awaited before they return or
raise, including when the caller itself is cancelled.  That final wait is
shielded (the caller's cancellation, already being handled, is not
delivered again meanwhile); the tasks it waits for have been cancelled, so
it is short unless one of them ignores cancellation.
"""
from __future__ import annotations

import threading
from collections import deque
from functools import partial
from types import CoroutineType
from typing import Any, Iterable, List, Optional, Tuple

from . import _native
from ._scope import CancelScope, move_on_at

Cancelled = _native.Cancelled
JoinHandle = _native.JoinHandle
Oneshot = _native.Oneshot
_spawn = _native.spawn


async def _await_it(aw: Any) -> Any:
    return await aw


def _start_all(aws: Iterable[Any]) -> List[Any]:
    items = list(aws)
    handles: List[Any] = []
    try:
        for i, aw in enumerate(items):
            if isinstance(aw, JoinHandle):
                handles.append(aw)
            elif isinstance(aw, CoroutineType):
                handles.append(_spawn(aw))
            elif hasattr(type(aw), "__await__"):
                handles.append(_spawn(_await_it(aw)))
            else:
                raise TypeError(f"argument {i} is not awaitable: {aw!r}")
    except BaseException:
        for h in handles:
            h.cancel()
        for aw in items[len(handles):]:
            if isinstance(aw, CoroutineType):
                aw.close()  # never started
        raise
    return handles


def _retrieve(h: Any) -> None:
    if h.done() and not h.cancelled():
        h.exception()  # seen: no "never retrieved" log


async def _cancel_and_wait(handles: Iterable[Any], why: Optional[BaseException] = None) -> None:
    """Cancel every unfinished handle and wait until all have finished
    (not when the caller's coroutine is being closed: it cannot await)."""
    handles = list(handles)
    for h in handles:
        if not h.done():
            h.cancel()
    if isinstance(why, GeneratorExit):
        return
    with CancelScope(shield=True):
        for h in handles:
            if not h.done():
                try:
                    await h
                except GeneratorExit:
                    raise  # our coroutine is being closed
                except BaseException:
                    pass  # its own outcome: the shield defers ours
            _retrieve(h)


async def select(*aws: Any) -> Tuple[int, Any]:
    """Run the awaitables concurrently; return ``(index, result)`` of the
    first to finish.  The others are cancelled and awaited before it
    returns.  If the first to finish raised, that exception propagates
    (after the others are cancelled and awaited).  Cancelling the caller
    cancels and awaits them all."""
    if not aws:
        raise ValueError("select() needs at least one awaitable")
    handles = _start_all(aws)
    first = Oneshot()
    for i, h in enumerate(handles):
        h.add_done_callback(partial(first.set, i))
    try:
        i = await first
    except BaseException as e:
        await _cancel_and_wait(handles, e)
        raise
    winner = handles[i]
    await _cancel_and_wait(handles[:i] + handles[i + 1:])
    return i, winner.result()


async def race(*aws: Any) -> Any:
    """``select`` without the index: the first result (or exception)."""
    return (await select(*aws))[1]


class _Counter:
    __slots__ = ("lock", "left", "cell", "fail_fast")

    def __init__(self, n: int, fail_fast: bool) -> None:
        self.lock = threading.Lock()
        self.left = n
        self.cell = Oneshot()
        self.fail_fast = fail_fast

    def done(self, h: Any) -> None:
        if self.fail_fast and (h.cancelled() or h.exception() is not None):
            self.cell.set(h)
            return
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.cell.set(None)


async def gather(*aws: Any, return_exceptions: bool = False) -> List[Any]:
    """Run the awaitables concurrently; return their results in argument
    order.  Without ``return_exceptions``, the first to fail (raise, or end
    cancelled) makes gather cancel the rest, await them, and raise that
    exception.  With it, exceptions (a cancelled child's Cancelled
    included) take their place in the list.  Cancelling the caller cancels
    and awaits them all."""
    if not aws:
        return []
    handles = _start_all(aws)
    counter = _Counter(len(handles), not return_exceptions)
    for h in handles:
        h.add_done_callback(partial(counter.done, h))
    try:
        failed = await counter.cell
    except BaseException as e:
        await _cancel_and_wait(handles, e)
        raise
    if failed is not None:
        await _cancel_and_wait(h for h in handles if h is not failed)
        return failed.result()  # raises
    if return_exceptions:
        out = []
        for h in handles:
            e = h.exception()
            out.append(e if e is not None else h.result())
        return out
    return [h.result() for h in handles]


class as_completed:
    """``async for result in zokio.as_completed(aws, timeout=None):`` --
    results in completion order.

    Yields *results* (not awaitables): a child that raised raises its
    exception at its turn, and iteration may continue after it.  The tasks
    start at the first ``__anext__``.  ``timeout`` (seconds from the call)
    bounds the whole iteration: when it passes, the remaining tasks are
    cancelled and awaited and TimeoutError is raised.  Cancelling the
    iterating task does the same and propagates.  Leaving the loop early
    (break) leaves the remaining tasks running: use ``async with
    zokio.as_completed(...) as it: async for r in it: ...`` or ``await
    it.aclose()`` to cancel and await them."""

    __slots__ = ("_aws", "_handles", "_deadline", "_lock", "_done", "_waiter", "_left",
                 "_closed")

    def __init__(self, aws: Iterable[Any], timeout: Optional[float] = None) -> None:
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise TypeError("as_completed() timeout must be a number of seconds or None")
            if timeout != timeout:
                raise ValueError("as_completed() timeout is NaN")
        self._aws: Optional[list] = list(aws)
        self._handles: List[Any] = []
        self._deadline = None if timeout is None else _native.monotonic() + timeout
        self._lock = threading.Lock()
        self._done: deque = deque()
        self._waiter: Optional[Any] = None
        self._left = 0
        self._closed = False

    def _start(self) -> None:
        aws, self._aws = self._aws, None
        self._handles = _start_all(aws or ())
        self._left = len(self._handles)
        for h in self._handles:
            h.add_done_callback(partial(self._on_done, h))

    def _on_done(self, h: Any) -> None:
        with self._lock:
            self._done.append(h)
            w, self._waiter = self._waiter, None
        if w is not None:
            w.set(None)

    def __aiter__(self) -> "as_completed":
        return self

    async def __anext__(self) -> Any:
        if self._aws is not None:
            self._start()
        while True:
            with self._lock:
                if self._done:
                    h = self._done.popleft()
                    break
                if self._left == 0 or self._closed:
                    raise StopAsyncIteration
                w = self._waiter = Oneshot()
            try:
                if self._deadline is None:
                    await w
                else:
                    with move_on_at(self._deadline) as scope:
                        await w
                    if scope.cancelled_caught:
                        raise TimeoutError(f"as_completed(): timed out with {self._left} "
                                           f"not yet yielded")
            except BaseException as e:
                await self.aclose(e)
                raise
        self._left -= 1
        return h.result()

    async def aclose(self, _why: Optional[BaseException] = None) -> None:
        """Cancel the tasks not yet yielded and wait for them."""
        if self._aws is not None:
            aws, self._aws = self._aws, None
            for aw in aws:
                if isinstance(aw, CoroutineType):
                    aw.close()
        self._closed = True
        with self._lock:
            self._done.clear()
        await _cancel_and_wait(self._handles, _why)

    async def __aenter__(self) -> "as_completed":
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        await self.aclose(exc)
        return False
