"""spawn_blocking: results, exceptions, kwargs, many in flight, the thread cap,
keep-alive, shutdown."""
from __future__ import annotations

import contextvars
import math
import threading
import time
import traceback

import pytest

import zokio


@pytest.mark.timeout(20)
def test_spawn_blocking_result_and_args(rt):
    def f(a, b, *, c=0, d=0):
        return (a, b, c, d, threading.current_thread().name)

    async def main():
        return await zokio.spawn_blocking(f, 1, 2, c=3, d=4)

    a, b, c, d, tname = rt.block_on(main())
    assert (a, b, c, d) == (1, 2, 3, 4)
    assert tname.startswith("zokio-blocking")


@pytest.mark.timeout(20)
def test_spawn_blocking_kwargs_named_like_parameters(rt):
    """Keyword arguments go to the function, even ones named fn/args."""
    def f(fn=None, args=None, kwargs=None):
        return fn, args, kwargs

    async def main():
        return await zokio.spawn_blocking(f, fn=1, args=2, kwargs=3)

    assert rt.block_on(main()) == (1, 2, 3)


def _deep_failure():
    raise ZeroDivisionError("in pool")


def _blocking_raiser():
    _deep_failure()


@pytest.mark.timeout(20)
def test_spawn_blocking_exception_with_traceback(rt):
    async def main():
        try:
            await zokio.spawn_blocking(_blocking_raiser)
        except ZeroDivisionError as e:
            return e
        return None

    e = rt.block_on(main())
    assert isinstance(e, ZeroDivisionError) and e.args == ("in pool",)
    names = [f.name for f in traceback.extract_tb(e.__traceback__)]
    assert "_blocking_raiser" in names and "_deep_failure" in names


@pytest.mark.timeout(20)
def test_spawn_blocking_base_exception_propagates(rt):
    def f():
        raise SystemExit(3)

    async def main():
        try:
            await zokio.spawn_blocking(f)
        except SystemExit as e:
            return e.code

    assert rt.block_on(main()) == 3


@pytest.mark.timeout(30)
def test_many_in_flight(make_runtime):
    rt = make_runtime(2, blocking_threads=32)
    active = [0]
    peak = [0]
    lock = threading.Lock()

    def job(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return i

    async def main():
        waits = [zokio.spawn_blocking(job, i) for i in range(300)]
        return [await w for w in waits]

    assert rt.block_on(main()) == list(range(300))
    assert 2 <= peak[0] <= 32
    assert rt.metrics()["blocking_threads"] <= 32


@pytest.mark.timeout(30)
def test_blocking_threads_cap_respected(make_runtime):
    rt = make_runtime(2, blocking_threads=2)
    active = [0]
    peak = [0]
    names = set()
    lock = threading.Lock()
    samples = []

    def job():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            names.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    async def sampler(stop):
        while not stop:
            samples.append(zokio.current_runtime().metrics()["blocking_threads"])
            await zokio.sleep(0.005)

    async def main():
        stop = []
        s = zokio.spawn(sampler(stop))
        t0 = time.monotonic()
        waits = [zokio.spawn_blocking(job) for _ in range(10)]
        for w in waits:
            await w
        dt = time.monotonic() - t0
        stop.append(1)
        await s
        return dt

    dt = rt.block_on(main())
    assert dt >= 0.25 - 0.005
    assert peak[0] == 2
    assert len(names) <= 2
    assert samples and max(samples) <= 2
    assert rt.metrics()["blocking_threads"] <= 2


@pytest.mark.timeout(30)
def test_keep_alive_lets_idle_threads_exit(make_runtime, util):
    rt = make_runtime(2, blocking_threads=4, blocking_keep_alive=0.05)

    async def main():
        ws = [zokio.spawn_blocking(time.sleep, 0.02) for _ in range(4)]
        for w in ws:
            await w
        return zokio.current_runtime().metrics()["blocking_threads"]

    assert rt.block_on(main()) >= 1
    assert util.wait_for(lambda: rt.metrics()["blocking_threads"] == 0, timeout=5)
    assert util.wait_for(
        lambda: not [t for t in util.zokio_threads() if t.name.startswith("zokio-blocking")],
        timeout=5)
    # the pool starts threads again on demand
    async def again():
        return await zokio.spawn_blocking(lambda: "again")

    assert rt.block_on(again()) == "again"


@pytest.mark.timeout(20)
def test_idle_thread_is_reused(make_runtime):
    rt = make_runtime(1, blocking_threads=8)

    async def main():
        ids = set()
        for _ in range(20):
            ids.add(await zokio.spawn_blocking(threading.get_ident))
        return ids

    assert len(rt.block_on(main())) == 1


@pytest.mark.timeout(20)
def test_spawn_blocking_not_callable(rt):
    async def main():
        with pytest.raises(TypeError, match="callable"):
            zokio.spawn_blocking(42)
        with pytest.raises(TypeError):
            zokio.spawn_blocking()
        return "ok"

    assert rt.block_on(main()) == "ok"


@pytest.mark.timeout(20)
def test_spawn_blocking_outside_runtime():
    with pytest.raises(RuntimeError, match="inside a zokio runtime"):
        zokio.spawn_blocking(print)


@pytest.mark.timeout(20)
def test_blocking_thread_is_not_a_worker(rt):
    def inside():
        try:
            zokio.current_runtime()
        except RuntimeError:
            return "no runtime here"
        return "runtime visible"

    async def main():
        return await zokio.spawn_blocking(inside)

    assert rt.block_on(main()) == "no runtime here"


@pytest.mark.timeout(30)
def test_shutdown_waits_for_running_blocking_call(make_runtime, util):
    rt = make_runtime(1)
    started = threading.Event()
    finished = []

    def job():
        started.set()
        time.sleep(0.2)
        finished.append(1)

    async def main():
        await zokio.spawn_blocking(job)

    h = rt.spawn(main())
    assert started.wait(5)
    rt.shutdown(timeout=10)
    assert finished == [1]
    assert h.cancelled()
    assert not util.zokio_threads()


@pytest.mark.timeout(30)
def test_shutdown_cancels_queued_blocking_jobs(make_runtime, util):
    rt = make_runtime(1, blocking_threads=1)
    started = threading.Event()
    ran = []

    def first():
        started.set()
        time.sleep(0.2)
        ran.append("first")

    def second():
        ran.append("second")

    async def main():
        a = zokio.spawn_blocking(first)
        b = zokio.spawn_blocking(second)   # queued behind `first`
        await a
        await b

    rt.spawn(main())
    assert started.wait(5)
    rt.shutdown(timeout=10)
    assert ran == ["first"]
    assert not util.zokio_threads()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("keep_alive", [math.inf, 1e300])
def test_an_endless_keep_alive_parks_idle_pool_threads_without_spinning(make_runtime, keep_alive):
    """blocking_keep_alive=inf: an idle pool thread waits untimed.  The
    deadline used to be computed by casting inf to time_t (undefined: it
    came out INT64_MIN), pthread_cond_timedwait refused it at once and the
    idle loop spun at 100% CPU holding the pool's lock, so shutdown() could
    never take the lock and never returned."""
    rt = make_runtime(2, blocking_keep_alive=keep_alive)

    async def main():
        return await zokio.spawn_blocking(lambda: 7)

    assert rt.block_on(main()) == 7
    time.sleep(0.1)                       # the pool thread is idle by now
    cpu0 = time.process_time()
    time.sleep(0.5)
    idle_cpu = time.process_time() - cpu0
    assert idle_cpu < 0.2, f"idle runtime used {idle_cpu:.2f} s of CPU in 0.5 s"
    assert rt.metrics()["blocking_threads"] == 1
    done = threading.Event()
    threading.Thread(target=lambda: (rt.shutdown(timeout=3), done.set()), daemon=True).start()
    assert done.wait(10), "shutdown() did not return"


@pytest.mark.timeout(30)
def test_spawn_blocking_runs_in_a_copy_of_the_callers_context(make_runtime):
    """As asyncio.to_thread: the function sees the awaiting task's context
    variables, and what it sets stays in its own copy.  It used to run in
    an empty context (the default value came back)."""
    request_id = contextvars.ContextVar("request_id", default="none")

    def job():
        seen = request_id.get()
        request_id.set("changed in the pool")
        return seen, request_id.get()

    async def handler(rid):
        request_id.set(rid)
        seen, inside = await zokio.spawn_blocking(job)
        return seen, inside, request_id.get()

    async def main():
        hs = [zokio.spawn(handler(f"r{i}")) for i in range(16)]
        return [await h for h in hs]

    out = make_runtime(2).block_on(main())
    assert out == [(f"r{i}", "changed in the pool", f"r{i}") for i in range(16)]

