"""Functions used inside a running zokio task."""
from __future__ import annotations

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


async def _await_one(awaitable: Any) -> Any:
    return await awaitable


# spawn() and block_on() given an awaitable that is not a coroutine (a
# stream's read(), an Event's wait(), a Oneshot...) run this around it.
_native.set_await_one(_await_one)


def current_runtime() -> Any:
    """The Runtime running the current task (RuntimeError outside one)."""
    from ._runtime import _owner_of

    core = _native.current_scheduler()
    if core is None:
        raise RuntimeError("zokio.current_runtime() called outside a zokio runtime")
    return _owner_of(core)


# zokio.timeout is fail_after's mechanism (a cancel scope): see _scope.py.
from ._scope import timeout  # noqa: E402


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
    if not 0 < period < float("inf"):
        # inf would make the first tick's deadline 0 * inf, NaN
        raise ValueError(f"interval() period must be > 0 and finite, got {period!r}")
    return _interval_ticks(float(period))
