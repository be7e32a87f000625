"""Runtime: construction, block_on, spawn from plain threads, shutdown, metrics,
no threads or fds left behind, Ctrl-C."""
from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import zokio
from zokio import _native
from _helpers import settled


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- construction ----------------------------------------------------------

@pytest.mark.timeout(20)
def test_threads_none_defaults_to_cpu_count(make_runtime, util):
    rt = make_runtime(threads=None)
    n = _cpu_count()
    assert rt.threads == n
    assert rt.metrics()["workers"] == n
    workers = [t for t in util.zokio_threads() if t.name.startswith("zokio-worker")]
    assert len(workers) == n


@pytest.mark.timeout(20)
@pytest.mark.parametrize("threads", [1, 3, 8])
def test_threads_n_starts_n_workers(make_runtime, util, threads):
    rt = make_runtime(threads)
    assert rt.threads == threads
    assert rt.metrics()["workers"] == threads
    names = sorted(t.name for t in util.zokio_threads() if t.name.startswith("zokio-worker"))
    assert len(names) == threads

    async def where():
        return threading.current_thread().name

    assert rt.block_on(where()).startswith("zokio-worker")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("2", TypeError),
                                      (2.0, TypeError), (True, TypeError)])
def test_threads_invalid(bad, exc, util):
    with pytest.raises(exc):
        zokio.Runtime(threads=bad)
    assert not util.zokio_threads()


@pytest.mark.timeout(10)
def test_invalid_backend_name(util):
    with pytest.raises(ValueError, match="backend"):
        zokio.Runtime(threads=1, backend="kqueue")
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_explicit_backend(make_runtime, backend):
    if backend == "io_uring" and not _native.uring_available():
        pytest.skip("io_uring is not usable here")
    rt = make_runtime(2, backend=backend)
    assert rt.backend == backend
    assert rt.metrics()["backend"] == backend

    async def main():
        await zokio.sleep(0.001)
        return 7

    assert rt.block_on(main()) == 7


@pytest.mark.timeout(20)
def test_context_manager_shuts_down(util):
    with zokio.Runtime(threads=2) as rt:
        assert not rt.closed
        assert len(util.zokio_threads()) >= 2

        async def main():
            return "ok"

        assert rt.block_on(main()) == "ok"
    assert rt.closed
    assert not util.zokio_threads()
    assert "closed" in repr(rt)


@pytest.mark.timeout(20)
def test_context_manager_shuts_down_on_error(util):
    with pytest.raises(KeyError):
        with zokio.Runtime(threads=2) as rt:
            async def main():
                zokio.spawn(_forever())
                raise KeyError("x")

            rt.block_on(main())
    assert rt.closed
    assert not util.zokio_threads()


async def _forever():
    while True:
        await zokio.sleep(10)


# ---- block_on ----------------------------------------------------------------

@pytest.mark.timeout(20)
def test_block_on_returns_value_and_can_be_called_again(rt):
    async def add(a, b):
        await zokio.sleep(0.001)
        return a + b

    assert rt.block_on(add(1, 2)) == 3
    assert rt.block_on(add(10, 20)) == 30
    # non-trivial values come back as they are
    assert rt.block_on(_ret((1, 2))) == (1, 2)
    assert rt.block_on(_ret(None)) is None
    e = ValueError("as value")
    assert rt.block_on(_ret(e)) is e


async def _ret(v):
    await zokio.yield_now()
    return v


@pytest.mark.timeout(20)
def test_block_on_raises_task_exception(rt):
    async def boom():
        await zokio.yield_now()
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        rt.block_on(boom())
    # the runtime is still usable
    assert rt.block_on(_ret(5)) == 5


@pytest.mark.timeout(20)
def test_block_on_inside_worker_raises_runtime_error(rt):
    closed = []

    async def inner():
        closed.append("ran")  # must never run
        return 1

    async def main():
        c = inner()
        try:
            rt.block_on(c)
        except RuntimeError as e:
            msg = str(e)
        else:
            msg = None
        # the refused coroutine was closed (no "never awaited" warning later)
        return msg, c.cr_frame is None

    msg, was_closed = rt.block_on(main())
    assert msg is not None and "block_on" in msg
    assert was_closed
    assert closed == []


@pytest.mark.timeout(20)
def test_block_on_of_other_runtime_inside_worker_raises(make_runtime):
    a = make_runtime(1)
    b = make_runtime(1)

    async def main():
        with pytest.raises(RuntimeError):
            b.block_on(_ret(1))
        return "done"

    assert a.block_on(main()) == "done"


# ---- spawn from plain threads ---------------------------------------------

@pytest.mark.timeout(30)
def test_spawn_from_plain_threads_and_result(rt):
    async def work(i):
        await zokio.sleep(0.001 * (i % 3))
        await zokio.yield_now()
        return i * i

    results = {}
    errors = []
    barrier = threading.Barrier(8)

    def client(k):
        try:
            barrier.wait()
            hs = [(i, rt.spawn(work(i), name=f"c{k}-{i}")) for i in range(k * 100, k * 100 + 100)]
            for i, h in hs:
                results[i] = h.result(timeout=10)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert results == {i: i * i for i in range(800)}


@pytest.mark.timeout(20)
def test_result_timeout_raises_timeout_error(rt):
    h = rt.spawn(_sleeper(5))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        h.result(timeout=0.1)
    dt = time.monotonic() - t0
    assert 0.1 <= dt < 3.0
    assert not h.done()
    # still joinable afterwards
    assert h.cancel() is True
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert h.cancelled()


async def _sleeper(s, value=None):
    await zokio.sleep(s)
    return value


@pytest.mark.timeout(20)
def test_result_of_finished_task_returns_at_once(rt):
    h = rt.spawn(_ret("v"))
    assert h.result(timeout=5) == "v"
    assert h.done()
    assert h.result(timeout=0) == "v"
    assert h.result() == "v"


@pytest.mark.timeout(20)
def test_spawn_name(rt):
    h = rt.spawn(_ret(1), name="hello")
    assert h.name == "hello"
    assert "hello" in repr(h)
    h.result(timeout=5)
    h2 = rt.spawn(_ret(1))
    assert isinstance(h2.name, str) and h2.name
    h2.result(timeout=5)


# ---- shutdown ----------------------------------------------------------------

@pytest.mark.timeout(30)
def test_shutdown_cancels_remaining_tasks_and_joins(make_runtime, util):
    rt = make_runtime(2)
    finals = []
    started = threading.Semaphore(0)

    async def stuck(i):
        try:
            started.release()
            await zokio.sleep(60)
        finally:
            await zokio.sleep(0.001)   # may await while unwinding
            finals.append(i)

    async def waiter(o):
        started.release()
        await o

    handles = [rt.spawn(stuck(i)) for i in range(50)]
    oneshots = [zokio.Oneshot() for _ in range(20)]
    handles += [rt.spawn(waiter(o)) for o in oneshots]
    for _ in range(len(handles)):
        assert started.acquire(timeout=10)
    t0 = time.monotonic()
    rt.shutdown(timeout=10)
    assert time.monotonic() - t0 < 8
    assert sorted(finals) == list(range(50))
    assert all(h.done() and h.cancelled() for h in handles)
    assert not util.zokio_threads()
    assert rt.closed
    m = rt.metrics()
    assert m["tasks_live"] == 0
    assert m["tasks_spawned"] == m["tasks_completed"] == 70


@pytest.mark.timeout(30)
def test_shutdown_timeout_closes_tasks_that_ignore_cancellation(make_runtime, util):
    rt = make_runtime(2)
    closed = threading.Event()
    entered = threading.Event()

    async def stubborn():
        try:
            while True:
                try:
                    entered.set()
                    await zokio.sleep(0.01)
                except zokio.Cancelled:
                    pass   # refuses to die
        finally:
            closed.set()   # reached when the runtime closes the coroutine

    h = rt.spawn(stubborn())
    assert entered.wait(5)
    t0 = time.monotonic()
    rt.shutdown(timeout=0.3)
    dt = time.monotonic() - t0
    assert 0.25 <= dt < 5
    assert closed.is_set()
    assert h.done() and h.cancelled()
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_shutdown_is_idempotent_and_spawn_after_shutdown_fails(make_runtime, util):
    rt = make_runtime(1)
    rt.shutdown()
    rt.shutdown()
    rt.shutdown(timeout=1)
    c = _ret(1)
    with pytest.raises(RuntimeError, match="shut down"):
        rt.spawn(c)
    assert c.cr_frame is None   # closed: no "never awaited" warning
    with pytest.raises(RuntimeError, match="shut down"):
        rt.block_on(_ret(1))
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_shutdown_from_inside_a_task_raises(rt):
    async def main():
        try:
            rt.shutdown()
        except RuntimeError as e:
            return str(e)
        return None

    msg = rt.block_on(main())
    assert msg is not None and "shutdown" in msg
    assert not rt.closed  # the refused call must not break the runtime
    assert rt.block_on(_ret(3)) == 3


@pytest.mark.timeout(30)
def test_shutdown_leaves_no_threads_and_no_fds(make_runtime, util, fd_snapshot):
    before_fds = fd_snapshot()
    before_threads = set(threading.enumerate())
    r, w = os.pipe()
    a, b = socket.socketpair()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    a.setblocking(False)
    b.setblocking(False)

    rt = make_runtime(3, blocking_threads=4)

    async def main():
        # I/O ops on a pipe and a socketpair
        assert await _native.op_write(w, b"abc") == 3
        assert await _native.op_read(r, 10) == b"abc"
        assert await _native.op_write(a.fileno(), b"xyz") == 3
        assert await _native.op_read(b.fileno(), 10) == b"xyz"
        # an op still pending at shutdown
        zokio.spawn(_pending_read(r))
        # blocking pool, several threads
        got = [await h for h in [zokio.spawn(_blocking_sleep(0.02)) for _ in range(4)]]
        assert got == [0.02] * 4
        # timers, one left pending
        await zokio.sleep(0.002)
        zokio.spawn(_sleeper(60))
        for _ in range(500):
            if zokio.current_runtime().metrics()["timers_pending"]:
                break
            await zokio.sleep(0.002)
        m = zokio.current_runtime().metrics()
        assert m["blocking_threads"] >= 1
        return m

    m = rt.block_on(main())
    assert m["timers_pending"] >= 1
    rt.shutdown(timeout=10)
    for fd in (r, w):
        os.close(fd)
    a.close()
    b.close()
    gc.collect()
    assert not util.zokio_threads()
    assert set(threading.enumerate()) <= before_threads
    after = fd_snapshot()
    assert after == before_fds, (
        f"fds leaked: {util.fd_details(after - before_fds)}; closed: {sorted(before_fds - after)}")


async def _pending_read(fd):
    return await _native.op_read(fd, 10)


async def _blocking_sleep(s):
    return await zokio.spawn_blocking(lambda: (time.sleep(s), s)[1])


@pytest.mark.timeout(60)
def test_many_runtimes_leak_nothing(util, fd_snapshot):
    before = fd_snapshot()
    for i in range(15):
        with zokio.Runtime(threads=1 + i % 3) as rt:
            async def main():
                await zokio.sleep(0.001)
                return await zokio.spawn_blocking(lambda: 5)

            assert rt.block_on(main()) == 5
    gc.collect()
    assert not util.zokio_threads()
    after = fd_snapshot()
    assert after == before, util.fd_details(after - before)


# ---- metrics -------------------------------------------------------------------

METRIC_KEYS = {
    "workers", "tasks_spawned", "tasks_completed", "tasks_live", "polls", "steals",
    "parks", "inject_queue_depth", "timers_pending", "blocking_threads", "backend",
}


@pytest.mark.timeout(20)
def test_metrics_keys_and_counts(make_runtime):
    rt = make_runtime(2)
    m0 = rt.metrics()
    assert METRIC_KEYS <= set(m0), METRIC_KEYS - set(m0)
    assert m0["workers"] == 2
    assert m0["backend"] == rt.backend
    assert m0["tasks_spawned"] == 0 and m0["tasks_live"] == 0
    for k in METRIC_KEYS - {"backend"}:
        assert isinstance(m0[k], int) and m0[k] >= 0, k

    async def main():
        hs = [zokio.spawn(_ret(i)) for i in range(100)]
        return [await h for h in hs]

    assert rt.block_on(main()) == list(range(100))
    m = settled(rt)
    assert m["tasks_spawned"] == 101
    assert m["tasks_completed"] == 101
    assert m["tasks_live"] == 0
    assert m["polls"] >= 201  # every task polled at least twice (one yield)
    assert m["timers_pending"] == 0


@pytest.mark.timeout(20)
def test_metrics_timers_pending_and_inject_depth(rt, util):
    hs = [rt.spawn(_sleeper(30)) for _ in range(10)]
    assert util.wait_for(lambda: rt.metrics()["timers_pending"] == 10, timeout=5)
    for h in hs:
        h.cancel()
    for h in hs:
        with pytest.raises(zokio.Cancelled):
            h.result(timeout=5)
    assert util.wait_for(lambda: rt.metrics()["timers_pending"] == 0, timeout=5)
    assert rt.metrics()["inject_queue_depth"] == 0


# ---- run(), current_runtime() -------------------------------------------------

@pytest.mark.timeout(20)
def test_zokio_run(util):
    async def main():
        rt = zokio.current_runtime()
        h = zokio.spawn(_ret(20))
        return rt.threads, await h + 1

    assert zokio.run(main(), threads=2) == (2, 21)
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_zokio_run_propagates_exception_and_shuts_down(util):
    async def main():
        raise ArithmeticError("bad")

    with pytest.raises(ArithmeticError):
        zokio.run(main(), threads=1)
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_current_runtime(make_runtime):
    a = make_runtime(1)
    b = make_runtime(2)

    async def who():
        await zokio.yield_now()
        return zokio.current_runtime()

    assert a.block_on(who()) is a
    assert b.block_on(who()) is b
    assert b.spawn(who()).result(timeout=5) is b
    with pytest.raises(RuntimeError, match="outside"):
        zokio.current_runtime()


# ---- Ctrl-C ----------------------------------------------------------------------

CTRL_C_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    import zokio

    # Ctrl-C must raise KeyboardInterrupt whatever SIGINT disposition this
    # process inherited (a background job starts with SIGINT ignored).
    print("INHERITED-SIGINT-IGNORED", signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
          flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    AWAIT_IN_FINALLY = sys.argv[1] == "await"

    async def child():
        try:
            await zokio.sleep(60)
        finally:
            print("CHILD-FINALLY", flush=True)

    async def main():
        zokio.spawn(child())
        try:
            print("MAIN-STARTED", flush=True)
            await zokio.sleep(60)
        finally:
            if AWAIT_IN_FINALLY:
                await zokio.sleep(0.01)      # a finally can still await
            print("MAIN-FINALLY", flush=True)

    rt = zokio.Runtime(threads=2)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        rt.block_on(main())
    except KeyboardInterrupt:
        print("KEYBOARD-INTERRUPT", flush=True)
        print("ELAPSED", round(time.monotonic() - t0, 3), flush=True)
        print("CLOSED", rt.closed, flush=True)
        print("THREADS", [t.name for t in threading.enumerate()
                          if t.name.startswith("zokio-")], flush=True)
        raise
    print("NO-INTERRUPT", flush=True)
""")


# Starts the interpreter with SIGINT ignored, as a shell starts a background
# job: the disposition is set, then kept across exec.  (An exec wrapper rather
# than preexec_fn, which is unsafe in this multi-threaded test process.)
_EXEC_WITH_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
)


def _run_ctrl_c(tmp_path, util, mode, sigint_ignored=False):
    script = tmp_path / "ctrlc.py"
    script.write_text(CTRL_C_SCRIPT)
    argv = [sys.executable, str(script), mode]
    if sigint_ignored:
        argv = [sys.executable, "-c", _EXEC_WITH_SIGINT_IGNORED] + argv[1:]
    p = subprocess.run(argv, cwd=tmp_path,
                       env=util.subprocess_env(), capture_output=True, text=True, timeout=25)
    out = p.stdout
    assert "MAIN-STARTED" in out, (out, p.stderr)
    assert "KEYBOARD-INTERRUPT" in out, (out, p.stderr)
    assert "NO-INTERRUPT" not in out
    # the KeyboardInterrupt propagated out of the script
    assert p.returncode in (-2, 130), (p.returncode, p.stderr)
    assert "CLOSED True" in out
    assert "THREADS []" in out, out
    elapsed = float(out.split("ELAPSED", 1)[1].split()[0])
    assert elapsed < 10
    return out, p.stderr


@pytest.mark.timeout(30)
def test_ctrl_c_cancels_main_task_and_shuts_down(tmp_path, util):
    out, err = _run_ctrl_c(tmp_path, util, "plain")
    assert "MAIN-FINALLY" in out, (out, err)
    assert "CHILD-FINALLY" in out, (out, err)
    assert out.index("MAIN-FINALLY") < out.index("KEYBOARD-INTERRUPT")


@pytest.mark.timeout(30)
def test_ctrl_c_finally_can_await(tmp_path, util):
    """The main task's finally may await while it unwinds from Ctrl-C (the
    shutdown that follows must not cancel it a second time)."""
    out, err = _run_ctrl_c(tmp_path, util, "await")
    assert "MAIN-FINALLY" in out, (out, err)
    assert out.index("MAIN-FINALLY") < out.index("KEYBOARD-INTERRUPT")


@pytest.mark.timeout(30)
def test_ctrl_c_works_when_sigint_was_ignored_at_start(tmp_path, util):
    """A test run started as a background job inherits SIGINT ignored; the
    Ctrl-C scenario must not depend on it (issue 5, item 11)."""
    out, err = _run_ctrl_c(tmp_path, util, "plain", sigint_ignored=True)
    assert "INHERITED-SIGINT-IGNORED True" in out, (out, err)
    assert "MAIN-FINALLY" in out, (out, err)
    assert "CHILD-FINALLY" in out, (out, err)
    assert out.index("MAIN-FINALLY") < out.index("KEYBOARD-INTERRUPT")



@pytest.mark.timeout(20)
def test_block_on_accepts_a_zokio_awaitable(make_runtime):
    """block_on takes any zokio awaitable, not only a coroutine object."""
    rt = make_runtime(2)
    t0 = time.monotonic()
    assert rt.block_on(zokio.sleep(0.02)) is None
    assert time.monotonic() - t0 >= 0.02
    o = zokio.Oneshot()
    o.set(5)
    assert rt.block_on(o) == 5
    with pytest.raises(TypeError):
        rt.block_on(42)
