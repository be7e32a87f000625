"""Shutdown racing with wakes from plain threads and other workers.

A worker closes its completion port during shutdown while other threads may
still be waking it; these rounds make that window as wide as we can."""
import threading
import time

import pytest

import zokio


async def _wait(o):
    return await o


async def _spawner(n):
    # Tasks finishing on one worker release their registry reference on the
    # worker that spawned them, which wakes that worker if it is parked.
    hs = [zokio.spawn(_short()) for _ in range(n)]
    for h in hs:
        await h


async def _short():
    await zokio.yield_now()


@pytest.mark.timeout(120)
def test_shutdown_while_plain_threads_wake_tasks():
    deadline = time.monotonic() + 20
    rounds = 0
    while rounds < 60 and time.monotonic() < deadline:
        rt = zokio.Runtime(threads=2)
        cells = [zokio.Oneshot() for _ in range(200)]
        handles = [rt.spawn(_wait(o)) for o in cells]
        rt.spawn(_spawner(2000))
        stop = threading.Event()

        def setter():
            for o in cells:
                if stop.is_set():
                    break
                o.set(1)
            for h in handles:
                h.cancel()

        threads = [threading.Thread(target=setter) for _ in range(4)]
        for t in threads:
            t.start()
        rt.shutdown(timeout=10)
        stop.set()
        for t in threads:
            t.join()
        for h in handles:
            assert h.done()
        assert not [t for t in threading.enumerate() if t.name.startswith("zokio-")]
        rounds += 1
    assert rounds >= 5
