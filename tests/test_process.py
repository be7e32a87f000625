"""zokio.process: exit codes, signals, pipes in both directions, communicate
with a timeout, many children at once, cancellation without zombies, no fd
left open.  Runs on the backend ZOKIO_BACKEND names (the suite runs twice)."""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time

import pytest

import zokio
import zokio.process as zp
from zokio.net import BusyResourceError, ClosedResourceError

PY = sys.executable


def _zombie_children() -> list[int]:
    """Pids of this process's children that exited and were not reaped."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] == "Z":
            out.append(int(name))
    return out


def _child_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_fd_or_zombie_left(util):
    # The orphan reaper keeps two fds (its wake pipe) once it has started;
    # start it first so that they are not counted as a leak.
    zp._child._orphans.pending()
    gc.collect()
    before = util.open_fds()
    yield
    gc.collect()
    assert util.wait_for(lambda: not _zombie_children(), timeout=5), _zombie_children()
    reaper = zp._child._orphans
    util.wait_for(lambda: reaper.pending() == 0, timeout=5)
    extra = util.wait_for(lambda: not (util.open_fds() - before - _reaper_fds()), timeout=5)
    assert extra, util.fd_details(util.open_fds() - before - _reaper_fds())


def _reaper_fds() -> set:
    r = zp._child._orphans
    return {str(fd) for fd in (r._wake_r, r._wake_w) if fd >= 0}


@pytest.mark.timeout(30)
def test_exit_codes_and_check(rt):
    async def main():
        ok = await zp.run(["true"])
        bad = await zp.run(["sh", "-c", "exit 3"])
        with pytest.raises(zp.CalledProcessError) as ei:
            await zp.run(["sh", "-c", "echo out; echo err >&2; exit 5"], capture_output=True,
                         check=True)
        return ok.returncode, bad.returncode, ei.value

    ok, bad, err = rt.block_on(main())
    assert (ok, bad) == (0, 3)
    assert err.returncode == 5 and err.stdout == b"out\n" and err.stderr == b"err\n"


@pytest.mark.timeout(30)
def test_missing_and_forbidden_executables_raise_the_standard_errors(rt, tmp_path):
    script = tmp_path / "not_executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    async def main():
        with pytest.raises(FileNotFoundError):
            await zp.spawn([str(tmp_path / "no-such-program")], stdout=zp.PIPE)
        with pytest.raises(PermissionError):
            await zp.spawn([str(script)], stdin=zp.PIPE, stdout=zp.PIPE, stderr=zp.PIPE)
        with pytest.raises(ValueError):
            await zp.spawn(["true"], stdout=zp.PIPE, text=True)

    rt.block_on(main())  # the fixture checks that no pipe end leaked


@pytest.mark.timeout(30)
def test_kill_terminate_and_signals(rt):
    async def main():
        a = await zp.spawn(["sleep", "30"])
        b = await zp.spawn(["sleep", "30"])
        c = await zp.spawn([PY, "-c", "import signal, sys, time\n"
                            "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
                            "print('ready', flush=True)\n"
                            "time.sleep(30)"], stdout=zp.PIPE)
        assert a.returncode is None and a.try_wait() is None
        a.kill()
        b.terminate()
        assert await c.stdout.readline() == b"ready\n"
        c.send_signal(signal.SIGUSR1)
        codes = (await a.wait(), await b.wait(), await c.wait())
        c.stdout.close()
        a.kill()  # reaped: a no-op, never a signal to a reused pid
        return codes

    assert rt.block_on(main()) == (-signal.SIGKILL, -signal.SIGTERM, 7)


@pytest.mark.timeout(60)
def test_large_data_through_pipes_in_both_directions_does_not_deadlock(rt):
    # The child echoes 8 MiB of stdin to stdout while writing 2 MiB to
    # stderr: every pipe fills up many times over, in both directions.
    code = ("import sys\n"
            "sys.stderr.buffer.write(b'e' * (2 << 20)); sys.stderr.flush()\n"
            "while True:\n"
            "    b = sys.stdin.buffer.read1(65536)\n"
            "    if not b: break\n"
            "    sys.stdout.buffer.write(b)\n")
    data = os.urandom(1 << 16) * 128

    async def main():
        r = await zp.run([PY, "-c", code], input=data, capture_output=True)
        return r.returncode, r.stdout, r.stderr

    rc, out, err = rt.block_on(main())
    assert rc == 0
    assert out == data
    assert err == b"e" * (2 << 20)


@pytest.mark.timeout(30)
def test_streaming_lines_and_stdin_eof(rt):
    async def main():
        c = await zp.spawn(["cat"], stdin=zp.PIPE, stdout=zp.PIPE)
        lines = []
        for i in range(50):
            await c.stdin.write_all(b"line %d\n" % i)
            lines.append(await c.stdout.readline())
        c.stdin.close()   # EOF: cat exits
        rest = [line async for line in c.stdout]
        c.stdout.close()
        return lines, rest, await c.wait()

    lines, rest, rc = rt.block_on(main())
    assert lines == [b"line %d\n" % i for i in range(50)]
    assert rest == [] and rc == 0


@pytest.mark.timeout(30)
def test_run_timeout_kills_and_reaps_the_child(rt):
    async def main():
        t0 = time.monotonic()
        with pytest.raises(zp.TimeoutExpired):
            await zp.run(["sleep", "30"], timeout=0.2)
        return time.monotonic() - t0

    elapsed = rt.block_on(main())
    assert elapsed < 10
    assert not _zombie_children()


@pytest.mark.timeout(60)
def test_two_hundred_children_at_once(make_runtime):
    rt = make_runtime(4)

    async def one(i):
        r = await zp.run([PY, "-S", "-c", f"import sys; sys.stdout.write('{i}'); sys.exit({i % 7})"]
                         if i % 10 == 0 else ["sh", "-c", f"echo {i}; exit {i % 7}"],
                         capture_output=True)
        return i, r.returncode, r.stdout.strip()

    async def main():
        hs = [zokio.spawn(one(i)) for i in range(200)]
        return [await h for h in hs]

    results = rt.block_on(main())
    assert [(i, rc, out) for i, rc, out in results] == [
        (i, i % 7, str(i).encode()) for i in range(200)]


@pytest.mark.timeout(30)
def test_many_tasks_waiting_on_one_child_from_every_worker(make_runtime):
    rt = make_runtime(8)

    async def main():
        c = await zp.spawn(["sh", "-c", "sleep 0.2; exit 4"])
        hs = [zokio.spawn(c.wait()) for _ in range(16)]
        return [await h for h in hs], c.returncode

    codes, rc = rt.block_on(main())
    assert codes == [4] * 16 and rc == 4


@pytest.mark.timeout(30)
def test_cancelling_a_waiting_task_leaves_no_zombie(rt, util):
    pids = []

    async def waiter():
        c = await zp.spawn(["sleep", "0.3"])
        pids.append(c.pid)
        await c.wait()

    async def main():
        h = zokio.spawn(waiter())
        while not pids:
            await zokio.sleep(0.005)
        await zokio.sleep(0.05)
        h.cancel()
        with pytest.raises(zokio.Cancelled):
            await h

    rt.block_on(main())
    gc.collect()
    # The child outlives the cancelled wait; once it exits the orphan
    # reaper reaps it.
    assert util.wait_for(lambda: not _child_alive(pids[0]), timeout=5)
    assert util.wait_for(lambda: not _zombie_children(), timeout=5), _zombie_children()


@pytest.mark.timeout(30)
def test_cancelled_run_kills_and_reaps(rt, util):
    pids = []

    async def main():
        h = zokio.spawn(zp.run(["sh", "-c", "echo $$; exec sleep 30"], capture_output=True))
        await zokio.sleep(0.3)
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == os.getpid():
                    pids.append(int(name))
        h.cancel()
        with pytest.raises(zokio.Cancelled):
            await h

    rt.block_on(main())
    assert pids
    assert util.wait_for(lambda: not any(_child_alive(p) for p in pids), timeout=5)


@pytest.mark.timeout(30)
def test_kill_on_drop(rt, util):
    pids = []

    async def main():
        c = await zp.spawn(["sleep", "30"], kill_on_drop=True)
        pids.append(c.pid)

    rt.block_on(main())
    gc.collect()
    assert util.wait_for(lambda: not _child_alive(pids[0]), timeout=5)


@pytest.mark.timeout(30)
def test_pipe_misuse_is_refused_clearly(rt):
    async def main():
        c = await zp.spawn(["sleep", "30"], stdout=zp.PIPE, stdin=zp.PIPE)
        reader = zokio.spawn(c.stdout.read(10))
        await zokio.sleep(0.05)
        with pytest.raises(BusyResourceError):
            await c.stdout.read(10)
        # Closing the pipe while the read is pending ends that read.
        c.stdout.close()
        with pytest.raises(ClosedResourceError):
            await reader
        with pytest.raises(ClosedResourceError):
            await c.stdout.read(1)
        c.stdin.close()
        with pytest.raises(ClosedResourceError):
            await c.stdin.write(b"x")
        c.kill()
        return await c.wait()

    assert rt.block_on(main()) == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_writing_to_a_child_that_closed_stdin_is_a_broken_pipe(rt):
    async def main():
        c = await zp.spawn(["sh", "-c", "exec 0<&-; sleep 0.1"], stdin=zp.PIPE)
        await c.wait()
        with pytest.raises(BrokenPipeError):
            await c.stdin.write_all(b"x" * (1 << 20))
        c.stdin.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_context_manager_closes_pipes_and_waits(rt):
    async def main():
        async with await zp.spawn(["sh", "-c", "read x; echo got $x"], stdin=zp.PIPE,
                                  stdout=zp.PIPE) as c:
            await c.stdin.write_all(b"hi\n")
            line = await c.stdout.readline()
        return line, c.returncode, c.stdin.closed, c.stdout.closed

    assert rt.block_on(main()) == (b"got hi\n", 0, True, True)


@pytest.mark.timeout(30)
def test_spawning_from_many_workers_and_plain_threads_at_once(make_runtime):
    rt = make_runtime(4)
    results = []

    def plain_thread():
        results.append(rt.block_on(zp.run(["sh", "-c", "echo plain"], capture_output=True)).stdout)

    async def main():
        hs = [zokio.spawn(zp.run(["sh", "-c", f"echo {i}"], capture_output=True))
              for i in range(32)]
        return [(await h).stdout for h in hs]

    threads = [threading.Thread(target=plain_thread) for _ in range(4)]
    for t in threads:
        t.start()
    outs = rt.block_on(main())
    for t in threads:
        t.join()
    assert outs == [b"%d\n" % i for i in range(32)]
    assert results == [b"plain\n"] * 4
