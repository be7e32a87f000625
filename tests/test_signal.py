"""zokio.signal: listeners on any worker see every arrival, counts survive
cancelled waits, the previous disposition comes back when the last listener
closes, and ctrl_c() works whatever SIGINT disposition the process inherited."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import zokio
import zokio.signal as zsignal


def _kill_self(signum, delay=0.0):
    if delay:
        threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
    else:
        os.kill(os.getpid(), signum)


def _caught_mask() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigCgt")


@pytest.mark.timeout(30)
def test_every_listener_on_every_worker_sees_each_arrival(make_runtime):
    rt = make_runtime(4)

    async def collect(listener, n, out):
        for _ in range(n):
            out.append(await listener.recv())
        return out

    async def main():
        listeners = [zsignal.listen(signal.SIGUSR1) for _ in range(6)]
        try:
            seen = [[] for _ in listeners]
            hs = [zokio.spawn(collect(lst, 3, out)) for lst, out in zip(listeners, seen)]
            for k in range(1, 4):
                _kill_self(signal.SIGUSR1)
                # One arrival at a time: the kernel merges a signal sent
                # while another of its kind is still pending.
                while any(len(out) < k for out in seen):
                    await zokio.sleep(0.002)
            return [await h for h in hs]
        finally:
            for lst in listeners:
                lst.close()

    assert rt.block_on(main()) == [[signal.SIGUSR1] * 3] * 6


@pytest.mark.timeout(30)
def test_arrivals_are_counted_and_a_cancelled_recv_consumes_none(rt, util):
    async def main():
        with zsignal.listen(signal.SIGUSR1) as lst:
            waiter = zokio.spawn(lst.recv())
            await zokio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(zokio.Cancelled):
                await waiter
            _kill_self(signal.SIGUSR1)
            # The arrival is kept until someone asks for it.
            assert util.wait_for(lambda: lst._pending == 1, timeout=5)
            assert await lst.recv() == signal.SIGUSR1
            # Two tasks at once: the second is refused.
            first = zokio.spawn(lst.recv())
            await zokio.sleep(0.05)
            with pytest.raises(RuntimeError, match="already waiting"):
                await lst.recv()
            _kill_self(signal.SIGUSR1)
            return await first

    assert rt.block_on(main()) == signal.SIGUSR1


@pytest.mark.timeout(30)
def test_the_previous_handler_comes_back_after_the_last_listener(rt):
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: seen.append("python"))
    try:
        async def main():
            a = zsignal.listen(signal.SIGUSR2)
            b = zsignal.listen(signal.SIGUSR2)
            _kill_self(signal.SIGUSR2)
            got = await a.recv()
            a.close()
            _kill_self(signal.SIGUSR2)          # b still listens
            # b saw both arrivals (each listener sees each one); waiting for
            # the second also makes sure it was delivered before b closes.
            got2 = [await b.recv(), await b.recv()]
            b.close()
            with pytest.raises(RuntimeError):
                await b.recv()
            return got, got2

        assert rt.block_on(main()) == (signal.SIGUSR2, [signal.SIGUSR2] * 2)
        assert seen == []            # Python's handler was bypassed meanwhile
        _kill_self(signal.SIGUSR2)   # ...and is back now
        for _ in range(100):
            if seen:
                break
            threading.Event().wait(0.01)
        assert seen == ["python"]
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.timeout(30)
def test_listening_from_a_plain_thread_and_async_iteration(rt):
    box = {}

    def plain():
        box["listener"] = zsignal.listen(signal.SIGUSR1)

    t = threading.Thread(target=plain)
    t.start()
    t.join()
    listener = box["listener"]

    async def main():
        seen = 0
        _kill_self(signal.SIGUSR1, delay=0.05)
        async for signum in listener:
            assert signum == signal.SIGUSR1
            seen += 1
            if seen == 2:
                zokio.spawn(_close_soon(listener))
            else:
                _kill_self(signal.SIGUSR1, delay=0.02)
        return seen

    assert rt.block_on(main()) == 2


async def _close_soon(listener):
    await zokio.sleep(0.02)
    listener.close()


def test_signals_that_cannot_be_handled_are_refused():
    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGFPE):
        with pytest.raises(ValueError):
            zsignal.listen(sig)
    with pytest.raises(ValueError):
        zsignal.listen(0)
    with pytest.raises(ValueError):
        zsignal.listen(signal.NSIG + 5)


_CTRL_C_SCRIPT = r"""
import os, signal, threading, zokio, zokio.signal as zs
def caught():
    for line in open('/proc/self/status'):
        if line.startswith('SigCgt:'):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
before = caught()
async def main():
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    await zs.ctrl_c()
    return 'got ctrl-c'
print(zokio.Runtime(threads=2).block_on(main()), flush=True)
print('restored' if caught() == before else 'not restored', flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_whatever_the_inherited_sigint_disposition(util, tmp_path, inherited):
    # A test run started as a background job inherits SIGINT ignored; the
    # child is given each disposition explicitly, so this test does not
    # depend on how pytest itself was started.
    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_IGN if inherited == "ignored" else signal.SIG_DFL)

    proc = subprocess.run([sys.executable, "-c", _CTRL_C_SCRIPT], cwd=tmp_path,
                          env=util.subprocess_env(), capture_output=True, text=True,
                          timeout=50, preexec_fn=prepare)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["got ctrl-c", "restored"], proc.stdout + proc.stderr
    assert "KeyboardInterrupt" not in proc.stderr


def test_no_handler_is_left_installed():
    # Every test above closes its listeners: zokio holds no signal now.
    assert not zsignal._listeners
    assert _caught_mask() & (1 << (signal.SIGUSR1 - 1)) == 0


_FORK_SCRIPT = r"""
import os, signal, time, zokio, zokio.signal as zs
parent = zs.listen(signal.SIGUSR1)
pid = os.fork()
if pid == 0:
    # The child routes its own signals through its own pipe and thread.
    async def child():
        with zs.listen(signal.SIGUSR1) as lst:
            os.kill(os.getpid(), signal.SIGUSR1)
            async with zokio.timeout(10):
                return await lst.recv()
    os._exit(0 if zokio.Runtime(threads=1).block_on(child()) == signal.SIGUSR1 else 1)
_, status = os.waitpid(pid, 0)
time.sleep(0.2)
print('child', os.waitstatus_to_exitcode(status), 'parent saw', parent._pending, flush=True)
os.kill(os.getpid(), signal.SIGUSR1)
async def main():
    async with zokio.timeout(10):
        return await parent.recv()
print('parent', zokio.Runtime(threads=1).block_on(main()) == signal.SIGUSR1, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_forked_child_has_its_own_signal_routing(util, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], cwd=tmp_path,
                          env=util.subprocess_env(), capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["child 0 parent saw 0", "parent True"], \
        proc.stdout + proc.stderr
