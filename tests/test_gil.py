"""The GIL stays off on free-threaded builds, and tasks really run in
parallel there.  On GIL builds the import and the runtime must still work."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

import zokio

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

CHECK = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("error")     # "the GIL has been enabled" is a RuntimeWarning
    import zokio, zokio._native
    print("after-import", sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else "n/a")
    async def main():
        h = zokio.spawn(child())
        return await h
    async def child():
        await zokio.sleep(0.001)
        return await zokio.spawn_blocking(lambda: 5)
    assert zokio.run(main(), threads=2) == 5
    print("after-run", sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else "n/a")
""")


@pytest.mark.timeout(60)
def test_import_keeps_gil_disabled(tmp_path, util):
    p = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=util.subprocess_env(),
                       capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(" ", 1) for line in p.stdout.splitlines())
    if not FREE_THREADED:
        pytest.skip("GIL build: sys._is_gil_enabled() is meaningless here (import and run worked)")
    assert lines["after-import"] == "False", p.stdout + p.stderr
    assert lines["after-run"] == "False", p.stdout + p.stderr


@pytest.mark.timeout(20)
def test_gil_disabled_in_this_process():
    if not FREE_THREADED:
        pytest.skip("GIL build")
    assert sys._is_gil_enabled() is False


def _handshake_and_spin(me, other, seconds):
    """Announce ourselves, wait (without awaiting: we hog our worker) for the
    other task, then spin for `seconds`, counting how often the other task's
    counter moved between two of our iterations."""
    me[0] = 1
    deadline = time.monotonic() + 10
    while other[0] == 0:
        if time.monotonic() > deadline:
            return None              # the other task never ran meanwhile
    iters = changes = 0
    last = other[0]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        me[0] += 1
        iters += 1
        cur = other[0]
        if cur != last:
            changes += 1
            last = cur
    return iters, changes


@pytest.mark.timeout(60)
def test_hogging_task_does_not_block_a_runnable_one(make_runtime):
    """Two tasks that never await: the second must be picked up by the other
    worker while the first occupies its worker (any build)."""
    rt = make_runtime(2)
    a, b = [0], [0]

    async def main():
        h1 = zokio.spawn(_hog(a, b))
        h2 = zokio.spawn(_hog(b, a))
        return await h1, await h2

    r1, r2 = rt.block_on(main())
    assert r1 is not None and r2 is not None, "the two tasks never ran at the same time"


async def _hog(me, other):
    return _handshake_and_spin(me, other, 0.05)


def _long_c_call(a, b):
    """Wait for the counter task, then make one long C call (which holds a
    GIL, if there is one, for its whole duration) and report how far the
    counter task got meanwhile."""
    a[0] = 1
    deadline = time.monotonic() + 10
    while b[0] == 0:
        if time.monotonic() > deadline:
            a[0] = -1
            return None
    c0 = b[0]
    sum(range(20_000_000))
    c1 = b[0]
    a[0] = -1
    return c1 - c0


def _count_until(b, a):
    b[0] = 1
    while a[0] != -1:
        b[0] += 1


@pytest.mark.timeout(60)
def test_cpu_bound_tasks_run_in_parallel(make_runtime):
    """While one task sits in a long C call, a task on the other worker keeps
    running Python code -- only possible with the GIL off.  (With a GIL the
    counter could advance by one switch interval at most, ~1e5 increments;
    free-threaded it advances by millions.  Both tasks share the CPUs alike,
    so machine load changes both durations, not the count.)"""
    if not FREE_THREADED:
        pytest.skip("parallel Python needs a free-threaded build")
    import os
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    rt = make_runtime(2)

    async def hog(a, b):
        return _long_c_call(a, b)

    async def counter(b, a):
        _count_until(b, a)

    async def main():
        a, b = [0], [0]
        h1 = zokio.spawn(hog(a, b))
        h2 = zokio.spawn(counter(b, a))
        delta = await h1
        await h2
        return delta

    best = 0
    for _ in range(3):
        delta = rt.block_on(main())
        assert delta is not None, "the two tasks never ran at the same time"
        best = max(best, delta)
        if best > 500_000:
            break
    assert best > 500_000, f"counter advanced only {best} during the other task's C call"
