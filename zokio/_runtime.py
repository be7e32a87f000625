"""The Runtime: starts worker threads around the native scheduler."""
from __future__ import annotations

import os
import threading
import time
import types
import weakref
from typing import Any, Awaitable, Coroutine, Optional, TypeVar

from . import _native

T = TypeVar("T")

_BACKENDS = ("auto", "io_uring", "epoll")

# The native Scheduler refuses more worker threads than this.
MAX_THREADS = 1024


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Runtime:
    """A multi-threaded work-stealing runtime.

    ``Runtime(threads=8).block_on(main())`` runs ``main()`` and every task it
    spawns on 8 worker threads.  Use it as a context manager, or call
    :meth:`shutdown` when done.
    """

    def __init__(
        self,
        threads: Optional[int] = None,
        *,
        blocking_threads: int = 512,
        blocking_keep_alive: float = 10.0,
        backend: str = "auto",
    ) -> None:
        if threads is None:
            threads = _default_threads()
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"threads must be an int, not {type(threads).__name__}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if threads > MAX_THREADS:
            raise ValueError(
                f"threads must be <= {MAX_THREADS} (zokio's cap on worker threads), got {threads}")
        if isinstance(blocking_threads, bool) or not isinstance(blocking_threads, int):
            raise TypeError("blocking_threads must be an int")
        if blocking_threads < 1:
            raise ValueError(f"blocking_threads must be >= 1, got {blocking_threads}")
        if not isinstance(blocking_keep_alive, (int, float)) or blocking_keep_alive < 0:
            raise ValueError("blocking_keep_alive must be a number of seconds >= 0")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self._lock = threading.Lock()
        self._closed = False
        self._blocking_threads: list[threading.Thread] = []
        self._core = _native.Scheduler(
            threads,
            backend,
            blocking_threads,
            float(blocking_keep_alive),
            self._start_blocking_thread,
        )
        _owners[id(self._core)] = weakref.ref(self)
        self._threads: list[threading.Thread] = []
        errors: list[BaseException] = []
        started = threading.Semaphore(0)

        def report(exc: Optional[BaseException]) -> None:
            if exc is not None:
                errors.append(exc)
            started.release()

        for i in range(threads):
            t = threading.Thread(
                target=self._core.run_worker,
                args=(i, report),
                name=f"zokio-worker-{i}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        for _ in range(threads):
            started.acquire()
        if errors:
            self.shutdown()
            raise errors[0]

    # -- blocking pool ---------------------------------------------------
    def _start_blocking_thread(self) -> None:
        t = threading.Thread(
            target=self._core.blocking_thread_main,
            name="zokio-blocking",
            daemon=True,
        )
        t.start()
        with self._lock:
            self._blocking_threads = [b for b in self._blocking_threads if b.is_alive()]
            self._blocking_threads.append(t)

    # -- public API ---------------------------------------------------------
    @property
    def threads(self) -> int:
        return self._core.threads

    @property
    def backend(self) -> str:
        return self._core.backend

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: Optional[str] = None) -> "_native.JoinHandle":
        """Spawn a task from any thread; returns its JoinHandle.

        From a plain thread, ``handle.result(timeout=None)`` blocks until it
        finishes.
        """
        self._check_open(coro)
        return self._core.spawn(coro, name)

    def block_on(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` (a coroutine, or any zokio awaitable) as the main task and block this thread until it finishes.

        Ctrl-C while waiting cancels the main task, shuts the runtime down
        and re-raises KeyboardInterrupt.  A KeyboardInterrupt raised by the
        main task itself propagates like any other exception (the runtime
        stays up).
        """
        if _native.current_scheduler() is not None:
            _close_quietly(coro)
            raise RuntimeError(
                "Runtime.block_on() cannot be called from inside a zokio task: it "
                "would block a worker thread; use 'await' (or zokio.spawn) instead"
            )
        self._check_open(coro)
        if not isinstance(coro, types.CoroutineType) and hasattr(coro, "__await__"):
            coro = _await(coro)  # e.g. block_on(zokio.sleep(1))
        handle = self._core.spawn(coro, "main")
        try:
            return handle.result()
        except KeyboardInterrupt:
            if (handle.done() and not handle.cancelled()
                    and isinstance(handle.exception(), KeyboardInterrupt)):
                # The main task raised it itself: an exception like any other.
                raise
            # Ctrl-C while waiting.
            handle.cancel()
            self.shutdown()
            raise

    def metrics(self) -> dict:
        """Counters of the scheduler; see docs/api.md for the keys."""
        m = self._core.metrics()
        with self._lock:
            m["blocking_threads_started"] = len(self._blocking_threads)
        return m

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Cancel every task still alive, stop the workers and join every
        thread this runtime started.

        Cancelled tasks get until ``timeout`` seconds (None: no limit) to
        unwind; coroutines still alive then are closed.  Blocking-pool calls
        cannot be interrupted; the pool is joined within what is left of
        ``timeout``.
        """
        if _native.current_scheduler() is self._core:
            raise RuntimeError("Runtime.shutdown() cannot be called from one of its own tasks")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._core.cancel_all()
        delay = 0.0005
        while self._core.live() > 0:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        self._core.stop()
        for t in self._threads:
            t.join()
        self._core.finalize()
        self._core.blocking_shutdown()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._core.blocking_join(remaining)
        with self._lock:
            blocking = list(self._blocking_threads)
        for t in blocking:
            t.join(remaining)
        _owners.pop(id(self._core), None)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, coro: Any) -> None:
        if self._closed:
            _close_quietly(coro)
            raise RuntimeError("this zokio Runtime has been shut down")

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<zokio.Runtime threads={self.threads} backend={self.backend} {state}>"


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _close_quietly(coro: Any) -> None:
    close = getattr(coro, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


_owners: "dict[int, weakref.ref[Runtime]]" = {}


def _owner_of(core: Any) -> "Runtime":
    ref = _owners.get(id(core))
    rt = ref() if ref is not None else None
    if rt is None:
        raise RuntimeError("the zokio runtime of this task is gone")
    return rt


def run(coro: Coroutine[Any, Any, T], **runtime_options: Any) -> T:
    """Create a Runtime, run ``coro`` to completion, shut the runtime down."""
    with Runtime(**runtime_options) as rt:
        return rt.block_on(coro)
