"""Functions used inside a running zokio task."""
from __future__ import annotations

import contextvars
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Optional, TypeVar

from . import _native

T = TypeVar("T")

Cancelled = _native.Cancelled
JoinHandle = _native.JoinHandle
Oneshot = _native.Oneshot


# The hot entry points are the native functions themselves (no Python frame
# per call); their signatures live in _native.pyi.
spawn = _native.spawn
yield_now = _native.yield_now


sleep = _native.sleep
sleep_until = _native.sleep_until
monotonic = _native.monotonic
spawn_blocking = _native.spawn_blocking


def current_runtime() -> Any:
    """The Runtime running the current task (RuntimeError outside one)."""
    from ._runtime import _owner_of

    core = _native.current_scheduler()
    if core is None:
        raise RuntimeError("zokio.current_runtime() called outside a zokio runtime")
    return _owner_of(core)


# The innermost armed zokio.timeout scope of the running task (each task runs
# in its own copy of the context, so this is per task).
_enclosing_scope: "contextvars.ContextVar[Optional[_native.TimeoutScope]]" = contextvars.ContextVar(
    "zokio_timeout_scope", default=None)


class timeout:
    """``async with zokio.timeout(s):`` -- raise TimeoutError if the block
    is still running after ``s`` seconds (it is interrupted with Cancelled at
    its current suspension point, which this scope turns into TimeoutError)."""

    __slots__ = ("_seconds", "_scope", "_token")

    def __init__(self, seconds: Optional[float]) -> None:
        if seconds is not None:
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
                raise TypeError(f"timeout() expects seconds as a number, not {type(seconds).__name__}")
            if seconds != seconds:
                raise ValueError("timeout() seconds is NaN")
        self._seconds = seconds
        self._scope: Optional[_native.TimeoutScope] = None

    async def __aenter__(self) -> "timeout":
        if self._seconds is not None:
            # The enclosing scope is linked so that, when both deadlines have
            # passed by the time the interrupt is delivered, the outer one wins.
            scope = _native.TimeoutScope(_native.monotonic() + self._seconds,
                                         _enclosing_scope.get())
            scope.arm()
            self._scope = scope
            self._token = _enclosing_scope.set(scope)
        elif _native.current_task() is None:
            raise RuntimeError("zokio.timeout() must be used inside a zokio task")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        scope = self._scope
        if scope is None:
            return False
        try:
            _enclosing_scope.reset(self._token)
        except ValueError:
            # exited in another context than entered: keep the link sane
            _enclosing_scope.set(None)
        fired = scope.disarm()
        if fired and exc is scope.marker:
            raise TimeoutError(f"timed out after {self._seconds} s") from None
        return False


async def _interval_ticks(period: float) -> AsyncIterator[float]:
    start = _native.monotonic()
    k = 0
    while True:
        deadline = start + k * period
        await _native.sleep_until(deadline)
        yield deadline
        k += 1


def interval(period: float) -> AsyncIterator[float]:
    """Async iterator ticking every ``period`` seconds without drift: tick k is
    due at start + k * period, whatever the time spent between ticks.  Yields
    each tick's scheduled deadline (zokio.monotonic() clock); the first tick
    is immediate."""
    if not isinstance(period, (int, float)) or isinstance(period, bool):
        raise TypeError("interval() period must be a number of seconds")
    if not period > 0:
        raise ValueError(f"interval() period must be > 0, got {period!r}")
    return _interval_ticks(float(period))
