"""Runtime lifecycle (issue 5): the thread cap, JoinHandle.result() on a
worker, a main task's own KeyboardInterrupt, bounded and shared shutdown(),
os.fork(), async generators, the monitor thread."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import zokio
from zokio import _runtime


# ---- Runtime(threads=...) cap ------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("threads", [1025, 2**40])
def test_threads_above_cap_raise_value_error_naming_the_cap(threads, util):
    with pytest.raises(ValueError, match="1024") as info:
        zokio.Runtime(threads=threads)
    assert "threads" in str(info.value)
    assert str(threads) in str(info.value)
    assert not util.zokio_threads()
    assert _runtime.MAX_THREADS == 1024


@pytest.mark.timeout(60)
def test_threads_at_cap_is_accepted(make_runtime, util):
    rt = make_runtime(1024)
    assert rt.threads == 1024
    workers = [t for t in util.zokio_threads() if t.name.startswith("zokio-worker")]
    assert len(workers) == 1024

    async def main():
        return threading.current_thread().name

    assert rt.block_on(main()).startswith("zokio-worker-")


# ---- JoinHandle.result() on a worker ------------------------------------------

async def _ret(v):
    await zokio.yield_now()
    return v


async def _fail(exc):
    await zokio.yield_now()
    raise exc


@pytest.mark.timeout(20)
def test_result_on_worker_of_unfinished_task_raises_runtime_error(rt):
    async def main():
        gate = zokio.Oneshot()

        async def waits():
            return await gate

        h = zokio.spawn(waits())
        await zokio.yield_now()
        errors = []
        for kwargs in ({}, {"timeout": 0}, {"timeout": 5}):
            t0 = zokio.monotonic()
            try:
                h.result(**kwargs)
            except RuntimeError as e:
                errors.append((str(e), zokio.monotonic() - t0))
        done_before = h.done()
        gate.set("opened")
        return errors, done_before, await h

    errors, done_before, value = rt.block_on(main())
    assert not done_before
    assert value == "opened"
    assert len(errors) == 3
    for msg, waited in errors:
        assert "await" in msg
        assert waited < 1.0   # refused at once, never blocked the worker


@pytest.mark.timeout(20)
def test_result_on_worker_of_finished_task_returns_its_outcome(rt):
    async def main():
        ok = zokio.spawn(_ret("value"))
        bad = zokio.spawn(_fail(KeyError("k")))
        await ok
        try:
            await bad
        except KeyError:
            pass
        assert ok.done() and bad.done()
        got = ok.result()
        got0 = ok.result(timeout=0)
        try:
            bad.result()
        except KeyError as e:
            raised = e
        else:
            raised = None
        return got, got0, raised, threading.current_thread().name

    got, got0, raised, where = rt.block_on(main())
    assert where.startswith("zokio-worker-")
    assert got == got0 == "value"
    assert isinstance(raised, KeyError) and raised.args == ("k",)


@pytest.mark.timeout(20)
def test_result_in_done_callback_on_worker_returns_outcome(rt):
    """A done callback runs on the worker that finished the task: result()
    there returns the (finished) task's value."""
    seen = []
    fired = threading.Event()

    async def main():
        h = zokio.spawn(_ret(41))

        def cb():
            seen.append((threading.current_thread().name, h.result()))
            fired.set()

        h.add_done_callback(cb)
        return await h

    assert rt.block_on(main()) == 41
    assert fired.wait(5)
    name, value = seen[0]
    assert value == 41
    assert name.startswith("zokio-worker-")


# ---- block_on: the main task's own KeyboardInterrupt ---------------------------

@pytest.mark.timeout(20)
def test_main_task_raising_keyboard_interrupt_propagates_without_shutdown(rt):
    other_finals = []

    async def other():
        try:
            await zokio.sleep(0.05)
            return "other done"
        finally:
            other_finals.append("finally")

    async def main():
        await zokio.yield_now()
        raise KeyboardInterrupt("from the task")

    h_other = rt.spawn(other())
    with pytest.raises(KeyboardInterrupt, match="from the task"):
        rt.block_on(main())
    # not treated as Ctrl-C: nothing shut down, nothing cancelled
    assert not rt.closed
    assert h_other.result(timeout=5) == "other done"
    assert not h_other.cancelled()
    assert other_finals == ["finally"]
    assert rt.block_on(_ret(3)) == 3


# ---- shutdown(timeout): one deadline, one end ---------------------------------

@pytest.mark.timeout(30)
def test_shutdown_timeout_bounds_the_call_with_blocking_jobs_running(make_runtime):
    """With K blocking jobs running, shutdown(0.2) returns after about 0.2 s,
    not (K+1) x 0.2 s: every wait takes what is left of one deadline."""
    k = 8
    rt = make_runtime(2, blocking_threads=k)
    release = threading.Event()
    running = threading.Semaphore(0)

    def job():
        running.release()
        release.wait(20)
        return "job"

    async def main():
        for _ in range(k):
            zokio.spawn(_await_blocking(job))
        await zokio.yield_now()

    async def _await_blocking(fn):
        return await zokio.spawn_blocking(fn)

    try:
        rt.block_on(main())
        for _ in range(k):
            assert running.acquire(timeout=10)
        assert rt.metrics()["blocking_threads"] == k
        t0 = time.monotonic()
        rt.shutdown(timeout=0.2)
        dt = time.monotonic() - t0
        assert rt.closed
        assert not any(t.is_alive() for t in rt._threads)
        # the blocking jobs cannot be interrupted: their threads still run
        assert sum(t.is_alive() for t in rt._blocking_threads) == k
        assert 0.15 <= dt < 0.9, dt   # (k+1) x 0.2 = 1.8 s before the fix
    finally:
        release.set()


async def _unwinds_slowly(seconds, finals, started):
    try:
        started.release()
        await zokio.sleep(60)
    finally:
        await zokio.sleep(seconds)     # awaits while unwinding from Cancelled
        finals.append(seconds)


@pytest.mark.timeout(30)
def test_second_shutdown_waits_for_the_first_to_finish(make_runtime):
    rt = make_runtime(2)
    finals = []
    started = threading.Semaphore(0)
    h = rt.spawn(_unwinds_slowly(0.5, finals, started))
    assert started.acquire(timeout=10)

    first = threading.Thread(target=rt.shutdown, kwargs={"timeout": 10})
    first.start()
    try:
        deadline = time.monotonic() + 5
        while not rt.closed and time.monotonic() < deadline:
            time.sleep(0.001)
        assert rt.closed
        t0 = time.monotonic()
        rt.shutdown()              # a second call while the first runs
        dt = time.monotonic() - t0
        # it returned at the same end as the first: everything stopped
        assert not any(t.is_alive() for t in rt._threads)
        assert finals == [0.5]
        assert h.done() and h.cancelled()
        assert dt >= 0.1, dt      # it did wait (the unwinding takes 0.5 s)
    finally:
        first.join(10)
    assert not first.is_alive()


@pytest.mark.timeout(30)
def test_second_shutdown_wait_is_bounded_by_its_own_timeout(make_runtime):
    rt = make_runtime(2)
    finals = []
    started = threading.Semaphore(0)
    rt.spawn(_unwinds_slowly(1.5, finals, started))
    assert started.acquire(timeout=10)

    first = threading.Thread(target=rt.shutdown, kwargs={"timeout": 10})
    first.start()
    try:
        deadline = time.monotonic() + 5
        while not rt.closed and time.monotonic() < deadline:
            time.sleep(0.001)
        t0 = time.monotonic()
        rt.shutdown(timeout=0.1)
        dt = time.monotonic() - t0
        assert 0.08 <= dt < 1.0, dt
        assert finals == []          # the first call is still unwinding the task
    finally:
        first.join(10)
    assert not first.is_alive()
    assert finals == [1.5]
    assert not any(t.is_alive() for t in rt._threads)


@pytest.mark.timeout(30)
def test_shutdown_from_a_blocking_pool_thread_of_the_runtime(make_runtime):
    """shutdown() called by a spawn_blocking job of the same runtime must not
    wait for its own thread (with timeout=None it never returned)."""
    rt = make_runtime(2, blocking_threads=4)
    returned = threading.Event()
    result = {}

    def job():
        t0 = time.monotonic()
        rt.shutdown()
        result["dt"] = time.monotonic() - t0
        result["thread"] = threading.current_thread().name
        returned.set()

    async def main():
        # another pool thread, idle by now: shutdown must join it
        await zokio.spawn_blocking(lambda: None)
        await zokio.spawn_blocking(job)

    h = rt.spawn(main())
    assert returned.wait(10), "shutdown() on a pool thread did not return"
    assert result["thread"] == "zokio-blocking"
    assert result["dt"] < 5
    assert rt.closed
    assert h.done() and h.cancelled()    # the awaiting task was cancelled
    assert not any(t.is_alive() for t in rt._threads)


@pytest.mark.timeout(120)
def test_shutdown_from_a_fresh_pool_thread_racing_shutdown_from_plain_threads(make_runtime):
    """A pool thread started for the job that calls shutdown(), while eight
    plain threads call it too.  The pool thread used to be registered only
    after it started, so its shutdown() could not know it ran on the pool:
    it waited for the shutdown, which waited to join it (a hang in most
    rounds on every interpreter and backend)."""
    for round_ in range(15):
        rt = make_runtime(2)

        async def main():
            await zokio.spawn_blocking(rt.shutdown)

        rt.spawn(main())
        callers = [threading.Thread(target=rt.shutdown) for _ in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(15)
        assert not [t for t in callers if t.is_alive()], f"shutdown() hung in round {round_}"
        assert rt.closed
        assert not any(t.is_alive() for t in rt._threads)


@pytest.mark.timeout(40)
def test_shutdown_timeout_with_a_worker_stuck_in_a_long_poll(make_runtime, util):
    """A task blocking its worker (CPU-bound or a sync sleep) does not hold
    shutdown(timeout) past the deadline plus a short grace; the shutdown is
    completed in the background when the poll returns, and a later
    shutdown() waits for that end."""
    rt = make_runtime(2)
    inside = threading.Event()

    async def hog():
        inside.set()
        time.sleep(4.0)          # blocks the worker, no await
        return "hog done"

    h = rt.spawn(hog())
    assert inside.wait(10)
    t0 = time.monotonic()
    rt.shutdown(timeout=0.2)
    dt = time.monotonic() - t0
    assert dt < 0.2 + _runtime._STOP_GRACE + 1.0, dt   # about 4 s before the fix
    assert rt.closed
    assert not h.done()
    t1 = time.monotonic()
    rt.shutdown()                # waits for the background end
    assert not any(t.is_alive() for t in rt._threads)
    assert h.done()
    assert time.monotonic() - t0 >= 3.0
    assert util.wait_for(lambda: not [t for t in util.zokio_threads()
                                      if t.name == "zokio-shutdown"], timeout=5)
    assert t1 - t0 < 4.0


_STUBBORN_SCRIPT = textwrap.dedent("""
    import threading, time
    import zokio

    entered = threading.Event()

    async def stubborn():
        while True:
            try:
                entered.set()
                await zokio.sleep(0.01)
            except BaseException:
                pass               # swallows Cancelled and GeneratorExit

    rt = zokio.Runtime(threads=2)
    rt.spawn(stubborn())
    assert entered.wait(5)
    t0 = time.monotonic()
    rt.shutdown(timeout=0.1)
    print("ELAPSED", round(time.monotonic() - t0, 3), flush=True)
    print("THREADS", [t.name for t in threading.enumerate() if t.name.startswith("zokio-")],
          flush=True)
""")


@pytest.mark.timeout(40)
def test_shutdown_timeout_with_a_task_that_swallows_base_exception(tmp_path, util):
    script = tmp_path / "stubborn.py"
    script.write_text(_STUBBORN_SCRIPT)
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=util.subprocess_env(),
                       capture_output=True, text=True, timeout=15)
    assert p.returncode == 0, p.stderr
    elapsed = float(p.stdout.split("ELAPSED", 1)[1].split()[0])
    assert elapsed < 3.0
    assert "THREADS []" in p.stdout


# ---- os.fork() -------------------------------------------------------------------

_FORK_SCRIPT = textwrap.dedent("""
    import os, threading, time, warnings
    import zokio

    warnings.simplefilter("ignore", DeprecationWarning)   # fork() with threads alive

    async def double(x):
        await zokio.sleep(0.001)
        return 2 * x

    rt = zokio.Runtime(threads=2)
    assert rt.block_on(double(1)) == 2
    print("PARENT-PID", os.getpid(), flush=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                      # the child: checks, reports through the pipe
        os.close(r)
        out = []

        def check(name, fn):
            try:
                fn()
            except RuntimeError as e:
                out.append(f"{name}: RuntimeError: {e}")
            except BaseException as e:
                out.append(f"{name}: {type(e).__name__}: {e}")
            else:
                out.append(f"{name}: no error")

        code = 1
        try:
            c = double(1)
            check("spawn", lambda: rt.spawn(c))
            out.append(f"spawn-coro-closed: {c.cr_frame is None}")
            check("metrics", rt.metrics)
            check("block_on", lambda: rt.block_on(double(2)))
            out.append(f"closed-before: {rt.closed}")
            out.append(f"repr: {rt!r}")
            t0 = time.monotonic()
            check("shutdown", rt.shutdown)
            out.append(f"shutdown-took: {time.monotonic() - t0:.3f}")
            out.append(f"closed-after: {rt.closed}")
            check("shutdown-again", lambda: rt.shutdown(timeout=1))
            check("spawn-after-shutdown", lambda: rt.spawn(double(3)))
            with zokio.Runtime(threads=2) as rt2:
                out.append(f"new-runtime: {rt2.block_on(double(21))}")
                h = rt2.spawn(double(4))
                out.append(f"new-runtime-spawn: {h.result(timeout=5)}")
            out.append("threads-left: " + repr(
                [t.name for t in threading.enumerate() if t.name.startswith("zokio-")]))
            code = 0
        except BaseException as e:
            out.append(f"child-error: {e!r}")
        os.write(w, "\\n".join(out).encode())
        os.close(w)
        os._exit(code)
    os.close(w)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("CHILD-EXIT", os.waitstatus_to_exitcode(status), flush=True)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("CHILD-TIMEOUT", flush=True)
            break
        time.sleep(0.01)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    print(b"".join(chunks).decode(), flush=True)
    # the parent's runtime is untouched by the fork
    print("PARENT-AFTER", rt.block_on(double(5)), rt.metrics()["workers"], flush=True)
    rt.shutdown()
    print("PARENT-DONE", flush=True)
""")


def _run_fork_script(tmp_path, util, name, text):
    """Run a fork scenario in a fresh interpreter; returns its stdout and
    the ``name: value`` lines it printed as a dict.  It must exit 0."""
    script = tmp_path / name
    script.write_text(text)
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=util.subprocess_env(),
                       capture_output=True, text=True, timeout=45)
    assert p.returncode == 0, (p.stdout, p.stderr)
    lines = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    return p.stdout, lines


@pytest.mark.timeout(60)
def test_runtime_inherited_through_fork_gives_a_clear_error(tmp_path, util):
    out, lines = _run_fork_script(tmp_path, util, "forked.py", _FORK_SCRIPT)
    assert "CHILD-EXIT 0" in out, out
    parent = out.split("PARENT-PID", 1)[1].split()[0]
    msg = (f"RuntimeError: this zokio Runtime was created in process {parent} and cannot be "
           f"used after os.fork(); create a new Runtime in the child")
    assert lines["spawn"] == msg, out
    assert lines["spawn-coro-closed"] == "True"
    assert lines["metrics"] == msg
    assert lines["block_on"] == msg
    assert lines["closed-before"] == "False"
    assert "fork" in lines["repr"]
    assert lines["shutdown"] == "no error"
    assert float(lines["shutdown-took"]) < 1.0
    assert lines["closed-after"] == "True"
    assert lines["shutdown-again"] == "no error"
    assert lines["spawn-after-shutdown"] == msg
    assert lines["new-runtime"] == "42"
    assert lines["new-runtime-spawn"] == "8"
    assert lines["threads-left"] == "[]"
    assert "PARENT-AFTER 10 2" in out
    assert "PARENT-DONE" in out


_FORK_IN_TASK_SCRIPT = textwrap.dedent("""
    import os, time, warnings
    import zokio

    warnings.simplefilter("ignore", DeprecationWarning)   # fork() with threads alive

    async def double(x):
        await zokio.sleep(0.001)
        return 2 * x

    def child_checks(w):
        out = []
        for name, fn in [("spawn", lambda: zokio.spawn(double(1))),
                         ("spawn_blocking", lambda: zokio.spawn_blocking(int)),
                         ("current_runtime", zokio.current_runtime)]:
            try:
                fn()
                out.append(f"{name}: no error")
            except RuntimeError as e:
                out.append(f"{name}: RuntimeError: {e}")
        try:
            out.append(f"new-runtime: {zokio.run(double(21), threads=2)}")
        except BaseException as e:
            out.append(f"new-runtime: {type(e).__name__}: {e}")
        os.write(w, "\\n".join(out).encode())

    async def main():
        r, w = os.pipe()
        pid = os.fork()                # inside a task: this thread is a worker
        if pid == 0:
            os.close(r)
            try:
                child_checks(w)
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 20
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                return "CHILD-TIMEOUT"
            await zokio.sleep(0.01)
        return os.read(r, 65536).decode()

    print(zokio.run(main(), threads=2), flush=True)
    print("PARENT-DONE", flush=True)
""")


@pytest.mark.timeout(60)
def test_fork_from_inside_a_task_leaves_a_child_that_can_start_a_new_runtime(tmp_path, util):
    """os.fork() (or multiprocessing's fork start method) called by a task:
    the child's only thread is a copy of a worker.  It used to keep
    believing it was one: a new Runtime's block_on() in the child said
    "cannot be called from inside a zokio task", and zokio.spawn() returned
    a handle that never ran."""
    out, lines = _run_fork_script(tmp_path, util, "fork_in_task.py", _FORK_IN_TASK_SCRIPT)
    assert "PARENT-DONE" in out and "CHILD-TIMEOUT" not in out, out
    assert lines["new-runtime"] == "42", out
    for name in ("spawn", "spawn_blocking"):
        assert lines[name].startswith("RuntimeError: "), out
        assert "os.fork()" in lines[name] and "new Runtime" in lines[name], out
    assert lines["current_runtime"].startswith("RuntimeError: "), out


# ---- async generators -------------------------------------------------------------

async def _ticker(log, name="ticker"):
    try:
        n = 0
        while True:
            yield n
            n += 1
    finally:
        await zokio.sleep(0.01)                    # a finally that awaits
        log.append((name, threading.current_thread().name))


@pytest.fixture
def unraisable(monkeypatch):
    """Exceptions reported through sys.unraisablehook (what CPython prints as
    'Exception ignored in ...', e.g. 'async generator ignored GeneratorExit')."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))
    return seen


@pytest.mark.timeout(20)
def test_abandoned_async_generator_is_finalized_on_the_runtime(rt, unraisable, util):
    log = []

    async def main():
        got = []
        async for n in _ticker(log):
            got.append(n)
            if n == 3:
                break          # abandons the generator, suspended at its yield
        return got

    assert rt.block_on(main()) == [0, 1, 2, 3]
    assert util.wait_for(lambda: log, timeout=5)
    assert len(log) == 1
    name, where = log[0]
    assert name == "ticker" and where.startswith("zokio-worker-")   # awaited in a task
    assert [repr(u.exc_value) for u in unraisable] == []


@pytest.mark.timeout(20)
def test_async_generator_dropped_in_a_plain_thread_is_finalized_on_the_runtime(
        rt, unraisable, util):
    """The finalizer hook travels with the generator: dropped anywhere, it is
    closed by a task of the runtime whose worker first iterated it."""
    log = []
    box = []

    async def main():
        g = _ticker(log, "handed-out")
        assert await g.__anext__() == 0
        box.append(g)

    rt.block_on(main())
    assert log == []
    box.clear()                     # the last reference dies on this plain thread
    # (on 3.13t, biased reference counting defers freeing an object another
    # thread created until that thread merges its queue or the GC runs)
    gc.collect()
    assert util.wait_for(lambda: log, timeout=5)
    assert log[0][0] == "handed-out" and log[0][1].startswith("zokio-worker-")
    assert [repr(u.exc_value) for u in unraisable] == []


@pytest.mark.timeout(20)
def test_shutdown_closes_async_generators_still_suspended(make_runtime, unraisable):
    rt = make_runtime(2)
    log = []
    keep = []

    async def main():
        g = _ticker(log, "kept")
        assert await g.__anext__() == 0
        keep.append(g)             # alive, suspended at its first yield

    rt.block_on(main())
    assert log == []
    rt.shutdown(timeout=5)
    assert len(log) == 1
    assert log[0][0] == "kept" and log[0][1].startswith("zokio-worker-")
    assert keep[0].ag_frame is None        # closed
    keep.clear()
    assert [repr(u.exc_value) for u in unraisable] == []


@pytest.mark.timeout(20)
def test_shutdown_unwinds_async_generator_running_inside_a_task_once(make_runtime, unraisable):
    """A generator a task is running right now (awaiting inside its body) is
    unwound by that task's cancellation; shutdown does not also close it."""
    rt = make_runtime(2)
    log = []
    inside = threading.Event()

    async def slow():
        try:
            inside.set()
            await zokio.sleep(60)
            yield 1
        finally:
            await zokio.sleep(0.001)
            log.append(threading.current_thread().name)

    async def owner():
        async for _ in slow():
            pass

    h = rt.spawn(owner())
    assert inside.wait(5)
    rt.shutdown(timeout=5)
    assert len(log) == 1 and log[0].startswith("zokio-worker-")
    assert h.done() and h.cancelled()
    assert [repr(u.exc_value) for u in unraisable] == []


@pytest.mark.timeout(20)
def test_shutdown_closes_async_generator_whose_task_waits_elsewhere(make_runtime, unraisable):
    """A task suspended in its loop body (not in the generator) while shutdown
    closes the generator: the generator's finally runs once, the task is then
    cancelled."""
    rt = make_runtime(2)
    log = []
    in_body = threading.Event()

    async def owner():
        async for _ in _ticker(log, "owned"):
            in_body.set()
            await zokio.sleep(60)

    h = rt.spawn(owner())
    assert in_body.wait(5)
    rt.shutdown(timeout=5)
    assert [entry[0] for entry in log] == ["owned"]
    assert h.done()
    assert [repr(u.exc_value) for u in unraisable] == []


_ASYNCGEN_SCRIPT = textwrap.dedent("""
    import gc
    import zokio

    async def gen(tag):
        try:
            while True:
                yield tag
        finally:
            await zokio.sleep(0.005)
            print("FINALLY", tag, flush=True)

    keep = []

    async def main():
        async for _ in gen("abandoned"):
            break
        async for _ in zokio.interval(0.001):     # zokio's own async generator
            break
        g = gen("kept")
        await g.__anext__()
        keep.append(g)
        await zokio.sleep(0.05)
        gc.collect()

    with zokio.Runtime(threads=2) as rt:
        rt.block_on(main())
    print("SHUT-DOWN", flush=True)
""")


@pytest.mark.timeout(40)
def test_async_generators_print_nothing_to_stderr(tmp_path, util):
    script = tmp_path / "agen.py"
    script.write_text(_ASYNCGEN_SCRIPT)
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=util.subprocess_env(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines.index("FINALLY abandoned") < lines.index("FINALLY kept") < lines.index("SHUT-DOWN")


# ---- the monitor thread hook ------------------------------------------------------

class _SchedulerWithMonitor:
    """Wraps the native Scheduler and adds a run_monitor() that, like the
    native watchdog will, returns once stop() was called."""

    events: list = []

    def __init__(self, *args):
        self._real = _RealScheduler(*args)
        self._stopped = threading.Event()
        self.monitor_started = threading.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def stop(self):
        self.events.append("stop")
        self._real.stop()
        self._stopped.set()

    def run_monitor(self):
        self.events.append(("monitor-start", threading.current_thread().name))
        self.monitor_started.set()
        self._stopped.wait()
        time.sleep(0.05)                 # a watchdog finishing its last round
        self.events.append("monitor-exit")


_RealScheduler = zokio._native.Scheduler


@pytest.mark.timeout(20)
def test_monitor_thread_runs_run_monitor_and_is_joined_by_shutdown(monkeypatch, util):
    monkeypatch.setattr(zokio._native, "Scheduler", _SchedulerWithMonitor)
    events = _SchedulerWithMonitor.events = []
    rt = zokio.Runtime(threads=2)
    try:
        assert rt._core.monitor_started.wait(5)
        monitors = [t for t in util.zokio_threads() if t.name == "zokio-monitor"]
        assert len(monitors) == 1 and monitors[0].daemon
        assert events == [("monitor-start", "zokio-monitor")]
        assert rt.block_on(_ret(7)) == 7
    finally:
        rt.shutdown(timeout=5)
    events.append("shutdown-returned")
    assert events[1:] == ["stop", "monitor-exit", "shutdown-returned"]
    assert not monitors[0].is_alive()
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_monitor_thread_only_where_the_scheduler_has_run_monitor(make_runtime, util):
    rt = make_runtime(2)
    monitors = [t for t in util.zokio_threads() if t.name == "zokio-monitor"]
    if hasattr(rt._core, "run_monitor"):
        assert len(monitors) == 1 and monitors[0].is_alive()
    else:
        assert monitors == [] and rt._monitor is None
    rt.shutdown(timeout=5)
    assert not [t for t in util.zokio_threads() if t.name == "zokio-monitor"]


@pytest.mark.timeout(20)
def test_shutdown_of_a_runtime_from_a_task_of_another_runtime(make_runtime):
    """Allowed (it only blocks that other runtime's worker for a while), also
    with async generators to close."""
    a = make_runtime(1)
    b = make_runtime(2)
    log = []
    keep = []

    async def start_gen():
        g = _ticker(log, "in b")
        await g.__anext__()
        keep.append(g)

    b.block_on(start_gen())

    async def main():
        b.shutdown(timeout=5)
        return b.closed

    assert a.block_on(main()) is True
    assert [entry[0] for entry in log] == ["in b"]
    assert not any(t.is_alive() for t in b._threads)
    keep.clear()
