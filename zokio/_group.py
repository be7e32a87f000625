"""TaskGroup: structured concurrency (asyncio's TaskGroup, trio's nursery).

Children run as ordinary zokio tasks, on any worker.  Their completion is
observed through JoinHandle done callbacks, which run on the worker that
finished the child, possibly several at once: the group's bookkeeping is
guarded by a lock (never held across an await or a call that can run a
callback).  The body runs inside a cancel scope of the group's own; the
first failure cancels that scope (the body is interrupted at its current
suspension point, and the group's exit absorbs that Cancelled) and every
child.
"""
from __future__ import annotations

import threading
from functools import partial
from typing import Any, Callable, Coroutine, Optional

from . import _native
from ._scope import _ATTR, CancelScope

Cancelled = _native.Cancelled
Oneshot = _native.Oneshot
_spawn = _native.spawn

_NEW, _OPEN, _CLOSED = 0, 1, 2


class TaskStatus:
    """Passed as ``task_status=`` to a child started with ``TaskGroup.start``;
    the child calls ``task_status.started(value)`` once it is ready."""

    __slots__ = ("_cell",)

    def __init__(self) -> None:
        self._cell = Oneshot()

    def started(self, value: Any = None) -> None:
        if not self._cell.set((True, value)):
            raise RuntimeError("task_status.started() was already called "
                               "(or the child had already finished)")


class TaskGroup:
    """``async with zokio.TaskGroup() as tg: tg.spawn(coro)``.

    The block waits for every child.  The first child that fails (raises
    anything but Cancelled) cancels the body and its siblings; the group's
    exit waits for all of them and raises a ``BaseExceptionGroup`` (an
    ``ExceptionGroup`` when every error is an ``Exception``) holding the
    children's errors and the body's.  A cancellation of the enclosing task
    (or of an enclosing cancel scope) cancels the children too, waits for
    them, and then propagates (unless a child failed: then the errors win).
    """

    __slots__ = ("_lock", "_state", "_children", "_live", "_errors", "_aborted",
                 "_scope", "_waiter", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _NEW
        self._children: set = set()
        self._live = 0
        self._errors: list = []
        self._aborted = False
        self._scope: Optional[CancelScope] = None
        self._waiter: Optional[Any] = None

    def __repr__(self) -> str:
        state = ("new", "open", "closed")[self._state]
        return f"<zokio.TaskGroup {state} children={self._live} aborted={self._aborted}>"

    # -- entering --------------------------------------------------------------

    async def __aenter__(self) -> "TaskGroup":
        if self._state != _NEW:
            raise RuntimeError("a TaskGroup can be entered only once")
        scope = CancelScope()
        scope.__enter__()  # RuntimeError outside a zokio task
        self._scope = scope
        self._state = _OPEN
        return self

    # -- children ----------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: Optional[str] = None) -> Any:
        """Run ``coro`` as a child task; returns its JoinHandle.  Callable
        from the body, from children, from any task or thread, until the
        group's exit has finished waiting (then RuntimeError)."""
        return self._spawn(coro, name, None)

    def _spawn(self, coro: Any, name: Optional[str], status: Optional[TaskStatus]) -> Any:
        # spawn() only queues the child (no callback can run here), so it is
        # done under the lock: the exit sees the child counted or the group
        # closed, never neither.
        with self._lock:
            state = self._state
            if state == _OPEN:
                h = _spawn(coro, name=name)  # may raise: nothing counted yet
                self._live += 1
                self._children.add(h)
                aborted = self._aborted
        if state != _OPEN:
            if hasattr(coro, "close"):
                coro.close()  # never started: no "never awaited" warning
            raise RuntimeError("this TaskGroup is closed (its async with block has ended)"
                               if state == _CLOSED else "this TaskGroup was not entered "
                               "(use 'async with zokio.TaskGroup() as tg')")
        if aborted:
            h.cancel()  # spawned into a failing group: cancelled at once
        h.add_done_callback(partial(self._on_done, h, status))
        return h

    async def start(self, async_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any,
                    name: Optional[str] = None) -> Any:
        """Start ``async_fn(*args, task_status=status)`` as a child and return
        the value it passes to ``task_status.started(value)``.  If the child
        fails before calling it, its exception is raised here (and not
        counted as a failure of the group); if it returns without calling
        it, RuntimeError.  Cancelling the caller while it waits cancels the
        child."""
        status = TaskStatus()
        h = self._spawn(async_fn(*args, task_status=status), name, status)
        try:
            ok, value = await status._cell
        except BaseException:
            h.cancel()
            raise
        if ok:
            return value
        if isinstance(value, Cancelled):
            # The group is failing (it cancelled the child), or someone
            # cancelled the child: let a pending cancellation of this task or
            # scope be delivered first.
            await _native.yield_now()
            raise RuntimeError("the child was cancelled before it called "
                               "task_status.started()") from None
        raise value

    def _on_done(self, h: Any, status: Optional[TaskStatus]) -> None:
        # On the worker that finished the child (or inline in spawn).
        exc = None if h.cancelled() else h.exception()
        if status is not None:
            if exc is not None:
                routed = status._cell.set((False, exc))
            elif h.cancelled():
                routed = status._cell.set((False, h.exception()))
            else:
                err = RuntimeError("the child returned without calling task_status.started()")
                routed = status._cell.set((False, err))
            if routed:
                exc = None  # start() raises it; not a failure of the group
        if exc is not None:
            with self._lock:
                self._errors.append(exc)
            self._abort()
        with self._lock:
            self._children.discard(h)
            self._live -= 1
            waiter = None
            if self._live == 0 and self._waiter is not None:
                waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set(None)

    def _abort(self) -> None:
        """Cancel the body and every child (first failure; idempotent)."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            kids = list(self._children)
        scope = self._scope
        if scope is not None:
            scope.cancel()  # no effect once the body has finished
        for h in kids:
            h.cancel()

    # -- leaving -------------------------------------------------------------------

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        scope = self._scope
        ns = scope._ns
        cancelled_by_us = ns.disarm() and exc is not None and getattr(exc, _ATTR, None) is ns
        if isinstance(exc, GeneratorExit):
            # The coroutine is being closed (an abandoned task at shutdown):
            # it cannot await; cancel the children and go.
            self._abort()
            return False
        outer_cancel = None
        if exc is not None and not cancelled_by_us:
            if isinstance(exc, Cancelled):
                outer_cancel = exc  # the task, or an enclosing scope
            else:
                with self._lock:
                    self._errors.append(exc)
            self._abort()
        while True:
            with self._lock:
                if self._live == 0:
                    self._state = _CLOSED
                    break
                waiter = self._waiter = Oneshot()
            try:
                if outer_cancel is None:
                    await waiter
                else:
                    # Already cancelled: the children were cancelled and end
                    # soon; an enclosing scope that stays cancelled must not
                    # interrupt this wait again and again.
                    with CancelScope(shield=True):
                        await waiter
            except Cancelled as e:
                outer_cancel = e
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
                self._abort()
        errors = self._errors
        if errors:
            self._errors = []
            raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors) from None
        if outer_cancel is not None:
            if outer_cancel is exc:
                return False
            raise outer_cancel
        return cancelled_by_us
