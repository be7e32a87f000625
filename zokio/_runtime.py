"""The Runtime: starts worker threads around the native scheduler."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
import weakref
from typing import Any, Awaitable, Coroutine, Optional, TypeVar

from . import _native

T = TypeVar("T")

_BACKENDS = ("auto", "io_uring", "epoll")

_logger = logging.getLogger("zokio")

# The native Scheduler refuses more worker threads than this.
MAX_THREADS = 1024

# After shutdown's deadline, how long workers still get to leave their current
# poll before the rest of the shutdown is left to a background thread.
_STOP_GRACE = 1.0


def _has_ended(t: threading.Thread) -> bool:
    """t ran and is gone.  Not ``not is_alive()``: that is also true of a
    thread another caller is starting right now (is_alive() is False until
    its start() returns), which must not be dropped."""
    try:
        t.join(0)          # RuntimeError: not started yet (or the current thread)
    except RuntimeError:
        return False
    return not t.is_alive()


def _deadline_after(timeout: Optional[float]) -> Optional[float]:
    """A ``timeout`` argument as a deadline, read as every wait of zokio
    reads it: None, inf or more than threading can wait for is no limit;
    NaN is refused; a negative timeout is an immediate deadline."""
    if timeout is None:
        return None
    kind = type(timeout)
    if not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"timeout must be a number of seconds or None, not {kind.__name__}")
    timeout = float(timeout)
    if timeout != timeout:
        raise ValueError("timeout is NaN")
    if timeout >= min(9.0e9, threading.TIMEOUT_MAX):
        return None
    return time.monotonic() + max(0.0, timeout)


def _remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until ``deadline`` (None: no limit), never negative."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# How long block_on's thread waits at a time.  On 3.13t a main thread blocked
# in one untimed lock wait while other threads run Python may not run its
# SIGINT handler until the wait ends (seen in 15 of 20 runs of a repro without
# zokio; never on 3.11), so Ctrl-C could hang block_on.  A wait that ends
# every slice lets the interpreter run the handler.
_BLOCK_ON_SLICE = 0.1


def _wait_in_slices(handle: "_native.JoinHandle") -> Any:
    while True:
        try:
            return handle.result(timeout=_BLOCK_ON_SLICE)
        except TimeoutError:
            if handle.done():
                # Finished in the meantime, or the task's own TimeoutError:
                # result() no longer waits and returns or raises the outcome.
                return handle.result()


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
        self._closed = False            # shutdown() was called
        self._stopping = False          # a shutdown() call is doing the work
        self._shutdown_done = threading.Event()   # that work is finished
        self._pid = os.getpid()
        self._forked_from: Optional[int] = None   # set in a child after os.fork()
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
        self._monitor: Optional[threading.Thread] = None
        # One registry of async generators per worker (see _worker_main).
        self._asyncgens = [_AsyncGenRegistry() for _ in range(threads)]
        finalizer = _asyncgen_finalizer(self._core)
        errors: list[BaseException] = []
        started = threading.Semaphore(0)

        def report(exc: Optional[BaseException]) -> None:
            if exc is not None:
                errors.append(exc)
            started.release()

        for i in range(threads):
            t = threading.Thread(
                target=_worker_main,
                args=(self._core, i, report, self._asyncgens[i].add, finalizer),
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
        # The watchdog thread of the native scheduler, where it has one: its
        # body returns once the scheduler is stopped.
        if hasattr(self._core, "run_monitor"):
            self._monitor = threading.Thread(
                target=self._core.run_monitor, name="zokio-monitor", daemon=True)
            self._monitor.start()

    # -- blocking pool ---------------------------------------------------
    def _start_blocking_thread(self) -> None:
        t = threading.Thread(
            target=self._core.blocking_thread_main,
            name="zokio-blocking",
            daemon=True,
        )
        # Registered before it starts: its first job may call shutdown(),
        # which must already know it runs on a pool thread (else it waits
        # for a shutdown that waits to join this very thread).
        with self._lock:
            self._blocking_threads = [b for b in self._blocking_threads if not _has_ended(b)]
            self._blocking_threads.append(t)
        try:
            t.start()
        except BaseException:
            with self._lock:
                self._blocking_threads = [b for b in self._blocking_threads if b is not t]
            raise

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
        if self._forked_from is not None:
            self._check_open(coro)
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
            return _wait_in_slices(handle)
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
        if self._forked_from is not None:
            raise RuntimeError(self._fork_message())
        m = self._core.metrics()
        with self._lock:
            m["blocking_threads_started"] = len(self._blocking_threads)
        return m

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Cancel every task still alive, stop the workers and join every
        thread this runtime started.

        ``timeout`` (seconds, None: no limit) bounds the whole call: every
        wait inside it (cancelled tasks unwinding, the workers stopping, the
        blocking pool) takes what is left of one deadline.  Coroutines still
        alive at the deadline are closed.  Blocking-pool calls cannot be
        interrupted; those still running are left to finish on their own.
        A worker still busy in one long poll after the deadline (plus a short
        grace) is left to a background thread that completes the shutdown
        when the poll returns.

        Idempotent.  A call made while another thread's call is running
        waits (up to its own ``timeout``) for that shutdown to finish.
        """
        if self._forked_from is not None:
            # Inherited through os.fork(): its threads do not exist in this
            # process; the native scheduler must not be touched.
            self._closed = True
            _owners.pop(id(self._core), None)
            return
        if _native.current_scheduler() is self._core:
            raise RuntimeError("Runtime.shutdown() cannot be called from one of its own tasks")
        deadline = _deadline_after(timeout)
        with self._lock:
            done = self._shutdown_done
            if done.is_set():
                return
            running = self._stopping
            self._stopping = self._closed = True
        if running:
            # Another call is shutting down: wait for the same end.  Not on
            # one of our blocking-pool threads: that call may be waiting for
            # this very thread to finish its job.
            if not self._on_blocking_thread():
                done.wait(_remaining(deadline))
            return
        try:
            self._shut_down(deadline)
        except BaseException:
            # Interrupted (e.g. Ctrl-C): a later shutdown() resumes the work.
            with self._lock:
                self._stopping = False
            raise

    def _shut_down(self, deadline: Optional[float]) -> None:
        core = self._core
        core.cancel_all()
        self._wait_unwound(deadline)
        # asyncio's order: async generators are closed once no task can be
        # driving them any more.  Closing one while a task is suspended in its
        # `async for` elsewhere would let two workers drive one generator.
        # With tasks still alive past the deadline, they are left to the
        # collector (finalize() abandons those tasks).
        if core.live() == 0:
            self._close_asyncgens(deadline)
            self._wait_unwound(deadline)
        core.stop()
        # Workers leave their loop as soon as their current poll returns.
        # Past the deadline they still get a short grace for that; a worker
        # busy in one long poll is then left to a background thread.
        stop_by = None if deadline is None else max(deadline, time.monotonic() + _STOP_GRACE)
        for t in self._threads:
            t.join(_remaining(stop_by))
        if self._monitor is not None:
            self._monitor.join(_remaining(stop_by))
        if any(t.is_alive() for t in self._threads):
            threading.Thread(target=self._finish_after_workers, args=(deadline,),
                             name="zokio-shutdown", daemon=True).start()
            return
        self._finish(deadline)

    def _wait_unwound(self, deadline: Optional[float]) -> None:
        delay = 0.0005
        while self._core.live() > 0:
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _close_asyncgens(self, deadline: Optional[float]) -> None:
        """Close the async generators still suspended (asyncio's
        shutdown_asyncgens), each in a task running ``aclose()``, within the
        deadline.  Runs after every task unwound; these clean-up tasks are
        the only spawns accepted then."""
        handles = []
        for registry in self._asyncgens:
            for agen in registry.alive():
                # Finished, or running right now inside a task's await (that
                # task's cancellation unwinds it): nothing to close here.
                if agen.ag_frame is None or agen.ag_running:
                    continue
                try:
                    handles.append(self._core.spawn(_aclose(agen), _ACLOSE_TASK,
                                                    during_shutdown=True))
                except RuntimeError:
                    return
            agen = None
        if not handles:
            return
        # Wait through done callbacks rather than handle.result(), which
        # refuses to block a worker (shutdown() may run on another runtime's).
        # Past the deadline the rest is cancelled with every other task.
        lock = threading.Lock()
        left = [len(handles)]
        all_done = threading.Event()

        def one_done() -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

        for h in handles:
            h.add_done_callback(one_done)
        all_done.wait(_remaining(deadline))

    def _finish_after_workers(self, deadline: Optional[float]) -> None:
        for t in self._threads:
            t.join()
        if self._monitor is not None:
            self._monitor.join()
        self._finish(deadline)

    def _finish(self, deadline: Optional[float]) -> None:
        """After every worker exited: close what is left, stop the blocking
        pool, join its threads (within the deadline), mark the end."""
        core = self._core
        core.finalize()
        core.blocking_shutdown()
        me = threading.current_thread()
        with self._lock:
            on_pool = any(t is me for t in self._blocking_threads)
            blocking = [t for t in self._blocking_threads if t is not me]
        if not on_pool:
            # (On one of our own pool threads the native join would wait for
            # this thread too: join the others only.)
            core.blocking_join(_remaining(deadline))
        for t in blocking:
            t.join(_remaining(deadline))
        _owners.pop(id(core), None)
        self._shutdown_done.set()

    def _on_blocking_thread(self) -> bool:
        me = threading.current_thread()
        with self._lock:
            return any(t is me for t in self._blocking_threads)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, coro: Any) -> None:
        if self._closed or self._forked_from is not None:
            _close_quietly(coro)
            if self._forked_from is not None:
                raise RuntimeError(self._fork_message())
            raise RuntimeError("this zokio Runtime has been shut down")

    def _fork_message(self) -> str:
        return (f"this zokio Runtime was created in process {self._forked_from} and cannot "
                f"be used after os.fork(); create a new Runtime in the child")

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = ("closed" if self._closed
                 else "inherited through os.fork()" if self._forked_from is not None
                 else "running")
        return f"<zokio.Runtime threads={self.threads} backend={self.backend} {state}>"


async def _await(awaitable: Any) -> Any:
    return await awaitable


# ---- worker threads and async generators ---------------------------------------

def _worker_main(core: Any, index: int, report: Any, firstiter: Any, finalizer: Any) -> None:
    """Body of worker thread ``index``: async-generator hooks, then the native
    loop (which returns when the scheduler stops)."""
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    core.run_worker(index, report)


class _AsyncGenRegistry:
    """Weak references to the async generators first iterated on one worker.

    Written by that worker (``add`` is its firstiter hook), read by shutdown
    on another thread: a lock guards the dict (workers run in parallel on
    3.13t).  No weakref callbacks (they would run on whichever thread drops a
    generator, possibly inside ``add``); dead entries are pruned when the
    dict has doubled since the last pruning."""

    __slots__ = ("_lock", "_refs", "_prune_at")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: "dict[int, weakref.ref[Any]]" = {}
        self._prune_at = 64

    def add(self, agen: Any) -> None:
        ref = weakref.ref(agen)
        with self._lock:
            self._refs[id(agen)] = ref   # an id is reused only once its owner died
            if len(self._refs) >= self._prune_at:
                self._refs = {k: r for k, r in self._refs.items() if r() is not None}
                self._prune_at = max(64, 2 * len(self._refs))

    def alive(self) -> list:
        with self._lock:
            refs = list(self._refs.values())
        return [agen for agen in (r() for r in refs) if agen is not None]


_ACLOSE_TASK = "zokio-aclose-asyncgen"


def _asyncgen_finalizer(core: Any) -> Any:
    """The finalizer hook of ``core``'s workers: an async generator dropped
    before it finished is closed by a task running ``aclose()`` on the same
    runtime (so its ``finally`` may await)."""
    spawn = core.spawn
    generation = _fork_generation

    def finalizer(agen: Any) -> None:
        if _fork_generation != generation:
            return      # inherited through os.fork(): that runtime runs nothing here
        try:
            # Also while shutdown() waits for cancelled tasks to unwind (their
            # `async for` loops drop generators then): nothing else can be
            # driving a generator that is being collected.
            spawn(_aclose(agen), _ACLOSE_TASK, during_shutdown=True)
        except RuntimeError:
            pass        # the workers are stopped: give up quietly

    return finalizer


async def _aclose(agen: Any) -> None:
    try:
        await agen.aclose()
    except Exception:
        _logger.exception("error while closing the async generator %r", agen)


def _close_quietly(coro: Any) -> None:
    close = getattr(coro, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


_owners: "dict[int, weakref.ref[Runtime]]" = {}


def forget_fd_everywhere(fd: int) -> None:
    """Before a listener's fd is closed: every worker of every live runtime
    drops what its port keeps for that file (io_uring: a multishot ACCEPT,
    which holds the socket open in the kernel, and the connections it
    queued).  Any thread."""
    try:
        st = os.fstat(fd)
    except OSError:
        return
    for ref in list(_owners.values()):
        rt = ref()
        if rt is not None and not rt.closed:
            rt._core.forget_fd(fd, st.st_dev, st.st_ino)


def _owner_of(core: Any) -> "Runtime":
    ref = _owners.get(id(core))
    rt = ref() if ref is not None else None
    if rt is None:
        raise RuntimeError("the zokio runtime of this task is gone")
    return rt


# After os.fork() the child has none of the parent's threads: every Runtime
# it inherited is marked unusable.  A hook that runs once per fork, rather
# than comparing os.getpid() (a system call) on every spawn().  _owners holds
# every runtime not yet shut down, the only ones that need marking.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for ref in list(_owners.values()):
        rt = ref()
        if rt is not None:
            rt._forked_from = rt._pid


os.register_at_fork(after_in_child=_after_fork_in_child)


def run(coro: Coroutine[Any, Any, T], **runtime_options: Any) -> T:
    """Create a Runtime, run ``coro`` to completion, shut the runtime down."""
    with Runtime(**runtime_options) as rt:
        return rt.block_on(coro)
