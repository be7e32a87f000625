"""zokio: a work-stealing async runtime for free-threaded CPython.

Ordinary ``async def`` code runs on N OS threads at once (GIL off on 3.13t):
``zokio.Runtime(threads=8).block_on(main())``.
"""
from ._api import (
    Cancelled,
    JoinHandle,
    Oneshot,
    current_runtime,
    interval,
    monotonic,
    sleep,
    sleep_until,
    spawn,
    spawn_blocking,
    timeout,
    yield_now,
)
from ._runtime import Runtime, run

# -- structured concurrency: cancel scopes, TaskGroup, JoinSet, combinators --
from ._combinators import as_completed, gather, race, select
from ._group import TaskGroup, TaskStatus
from ._joinset import JoinSet
from ._scope import CancelScope, fail_after, fail_at, move_on_after, move_on_at

__all__ = [
    "Cancelled",
    "JoinHandle",
    "Oneshot",
    "Runtime",
    "current_runtime",
    "interval",
    "monotonic",
    "run",
    "sleep",
    "sleep_until",
    "spawn",
    "spawn_blocking",
    "timeout",
    "yield_now",
    # -- structured concurrency --
    "CancelScope",
    "JoinSet",
    "TaskGroup",
    "TaskStatus",
    "as_completed",
    "fail_after",
    "fail_at",
    "gather",
    "move_on_after",
    "move_on_at",
    "race",
    "select",
]

__version__ = "0.1.0"
