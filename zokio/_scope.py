"""Cancel scopes: CancelScope, move_on_after/at, fail_after/at, timeout.

A scope is a region of one task's code that can be cancelled, by its
deadline or by ``cancel()`` from any thread.  The kernel does the delivery
(native/core/task.c, "cancel scopes"): once cancelled, the scope interrupts
its task with ``zokio.Cancelled`` at the current suspension point and at
every later one inside it, until it exits; its exit catches exactly the
Cancelled it threw (another scope's, or the task's own cancellation, passes
through).  Nested scopes: the outermost cancelled one is delivered.  A
shielded scope defers the task's cancellation and outer scopes' until it
exits (or its shield is turned off).
"""
from __future__ import annotations

import math
from typing import Any, Optional

from . import _native

_Native = _native.TimeoutScope
_monotonic = _native.monotonic
_ATTR = "_zokio_scope"

try:  # 3.11+: builtin
    _BaseExceptionGroup = BaseExceptionGroup  # type: ignore[name-defined]
except NameError:  # pragma: no cover - zokio needs 3.11+
    _BaseExceptionGroup = None


def _check_seconds(fn: str, seconds: Any) -> float:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"{fn}() expects seconds as a number, not {type(seconds).__name__}")
    if seconds != seconds:
        raise ValueError(f"{fn}() seconds is NaN")
    return seconds


class CancelScope:
    """``with zokio.CancelScope(deadline=inf, shield=False) as scope:`` (or
    ``async with``).  See the module docstring and docs/api.md."""

    __slots__ = ("_ns", "_relative", "_caught", "_fired", "_fail", "__weakref__")

    def __init__(self, deadline: float = math.inf, shield: bool = False) -> None:
        self._ns = _Native(deadline, None, bool(shield))
        self._relative: Optional[float] = None
        self._caught = False
        self._fired = False
        # fail_* scopes: the TimeoutError message, or the seconds of
        # fail_after/timeout (the message is made only when raised)
        self._fail: Any = None

    # -- entering and leaving ---------------------------------------------
    # __enter__, __exit__, __aenter__ and __aexit__ are native (scope_install
    # below, native/sync/cancel_scope.c): zokio.timeout around each read of a
    # server is a hot path.  __aenter__ and __aexit__ return already-complete
    # awaitables.  Entering arms the native scope (an *_after deadline counts
    # from entry); leaving disarms it, and only a scope that fired comes back
    # here to decide what its exit catches.

    def _exit_fired(self, exc: Optional[BaseException]) -> bool:
        """The exit of a scope that was cancelled: catch its own Cancelled."""
        self._fired = True
        return exc is not None and self._absorb(exc)

    def _absorb(self, exc: BaseException) -> bool:
        """At exit of a cancelled scope: catch its own Cancelled (also out of
        an exception group), let anything else through."""
        ns = self._ns
        if getattr(exc, _ATTR, None) is ns:
            self._caught = True
            if self._fail is not None:
                raise TimeoutError(self._fail_message()) from None
            return True
        if isinstance(exc, _BaseExceptionGroup):
            match, rest = exc.split(lambda e: getattr(e, _ATTR, None) is ns)
            if match is not None:
                self._caught = True
                if rest is None:
                    if self._fail is not None:
                        raise TimeoutError(self._fail_message()) from None
                    return True
                raise rest
        return False

    def _fail_message(self) -> str:
        f = self._fail
        return f if isinstance(f, str) else f"timed out after {f} s"

    # -- control ----------------------------------------------------------

    def cancel(self) -> None:
        """Cancel the scope.  Any thread, any time (before entry: it is
        cancelled as soon as it is entered; after exit: no effect)."""
        self._ns.cancel()

    @property
    def deadline(self) -> float:
        """Absolute deadline on the ``zokio.monotonic()`` clock (``inf``:
        none).  Settable from any thread: the timer moves; a deadline that
        has passed cancels the scope at once."""
        return self._ns.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._ns.deadline = value
        self._relative = None

    @property
    def shield(self) -> bool:
        return self._ns.shield

    @shield.setter
    def shield(self, value: bool) -> None:
        self._ns.shield = value

    @property
    def cancel_called(self) -> bool:
        """cancel() was called, or the deadline cancelled the scope."""
        return self._fired or self._ns.cancel_called

    @property
    def cancelled_caught(self) -> bool:
        """The scope's exit caught its own Cancelled (the block was cut
        short by this scope)."""
        return self._caught

    def __repr__(self) -> str:
        return (f"<zokio.CancelScope deadline={self._ns.deadline} shield={self._ns.shield} "
                f"cancel_called={self.cancel_called} cancelled_caught={self._caught}>")


def move_on_at(deadline: float, *, shield: bool = False) -> CancelScope:
    """A scope cancelled at ``deadline`` (zokio.monotonic() seconds); the
    block is cut short silently (check ``cancelled_caught``)."""
    return CancelScope(deadline, shield)


def move_on_after(seconds: float, *, shield: bool = False) -> CancelScope:
    """A scope cancelled ``seconds`` after it is entered; the block is cut
    short silently (check ``cancelled_caught``)."""
    seconds = _check_seconds("move_on_after", seconds)
    scope = CancelScope(_monotonic() + seconds, shield)
    scope._relative = seconds
    return scope


def fail_at(deadline: float, *, shield: bool = False) -> CancelScope:
    """Like move_on_at, but a block cut short raises TimeoutError."""
    scope = CancelScope(deadline, shield)
    scope._fail = f"deadline {deadline} passed"
    return scope


def fail_after(seconds: float, *, shield: bool = False) -> CancelScope:
    """Like move_on_after, but a block cut short raises TimeoutError."""
    seconds = _check_seconds("fail_after", seconds)
    scope = CancelScope(_monotonic() + seconds, shield)
    scope._relative = seconds
    scope._fail = seconds
    return scope


# zokio.timeout(seconds): fail_after(seconds), made in C (a server enters
# one per request); None: no deadline (the scope can still be cancelled).
_native.scope_install(CancelScope)
timeout = _native.scope_timeout
