"""zokio.JoinSet: completion order, abort, shutdown, cancel-safety of
join_next, children finishing on many workers."""
import threading
import time

import pytest

import zokio


async def _value(v, delay=0.0):
    if delay:
        await zokio.sleep(delay)
    return v


async def _fail(msg, delay=0.0):
    if delay:
        await zokio.sleep(delay)
    raise ValueError(msg)


@pytest.mark.timeout(20)
def test_join_next_in_completion_order(rt):
    async def main():
        js = zokio.JoinSet()
        for d in (0.06, 0.01, 0.04, 0.02):
            js.spawn(_value(d, d))
        assert len(js) == 4
        out = []
        while js:
            out.append(await js.join_next())
        return out, len(js), await js.join_next(), js.try_join_next()

    assert rt.block_on(main()) == ([0.01, 0.02, 0.04, 0.06], 0, None, None)


@pytest.mark.timeout(20)
def test_join_next_raises_the_childs_exception_and_goes_on(rt):
    async def main():
        js = zokio.JoinSet()
        js.spawn(_fail("first", 0.01))
        js.spawn(_value("second", 0.03))
        with pytest.raises(ValueError, match="first"):
            await js.join_next()
        return await js.join_next(), len(js)

    assert rt.block_on(main()) == ("second", 0)


@pytest.mark.timeout(20)
def test_join_next_handle_tells_none_results_from_empty(rt):
    async def main():
        js = zokio.JoinSet()
        h = js.spawn(_value(None))
        got = await js.join_next_handle()
        return got is h, got.result(), await js.join_next_handle()

    assert rt.block_on(main()) == (True, None, None)


@pytest.mark.timeout(20)
def test_try_join_next(rt):
    async def main():
        js = zokio.JoinSet()
        js.spawn(_value("x", 0.02))
        first = js.try_join_next()          # nothing finished yet
        await zokio.sleep(0.05)
        return first, js.try_join_next(), len(js)

    assert rt.block_on(main()) == (None, "x", 0)


@pytest.mark.timeout(20)
def test_abort_all_then_join_sees_cancelled(rt):
    async def main():
        js = zokio.JoinSet()
        done = js.spawn(_value("quick"))
        await done
        for _ in range(3):
            js.spawn(_value("slow", 5))
        js.abort_all()
        results, cancelled = [], 0
        while js:
            try:
                results.append(await js.join_next())
            except zokio.Cancelled:
                cancelled += 1
        return results, cancelled

    assert rt.block_on(main()) == (["quick"], 3)


@pytest.mark.timeout(20)
def test_shutdown_and_async_with_abort_and_wait(rt):
    log = []

    async def child(i):
        try:
            await zokio.sleep(5)
        finally:
            await zokio.yield_now()
            log.append(i)

    async def main():
        async with zokio.JoinSet() as js:
            for i in range(5):
                js.spawn(child(i))
            await zokio.sleep(0.01)
        after_with = sorted(log)
        js2 = zokio.JoinSet()
        for i in range(5, 8):
            js2.spawn(child(i))
        js2.spawn(_fail("discarded"))
        await zokio.sleep(0.01)
        await js2.shutdown()
        return after_with, sorted(log), len(js), len(js2)

    assert rt.block_on(main()) == ([0, 1, 2, 3, 4], list(range(8)), 0, 0)


@pytest.mark.timeout(20)
def test_cancelled_join_next_loses_no_result(rt):
    async def main():
        js = zokio.JoinSet()
        js.spawn(_value("kept", 0.03))
        with zokio.move_on_after(0.01) as scope:
            await js.join_next()
        assert scope.cancelled_caught
        await zokio.sleep(0.05)              # the child finished meanwhile
        return await js.join_next()

    assert rt.block_on(main()) == "kept"


@pytest.mark.timeout(20)
def test_two_joiners_share_the_results(rt):
    async def joiner(js, out):
        while True:
            h = await js.join_next_handle()
            if h is None:
                return
            out.append(h.result())

    async def main():
        js = zokio.JoinSet()
        for i in range(40):
            js.spawn(_value(i, 0.001 * (i % 7)))
        out = []
        await zokio.gather(joiner(js, out), joiner(js, out))
        return sorted(out)

    assert rt.block_on(main()) == list(range(40))


@pytest.mark.timeout(60)
def test_children_finishing_on_8_workers(make_runtime):
    rt = make_runtime(8)
    n = 2000

    async def child(i):
        if i % 2:
            await zokio.yield_now()
        return i

    async def main():
        js = zokio.JoinSet()
        for i in range(n):
            js.spawn(child(i))
        seen = []
        while js:
            seen.append(await js.join_next())
        return sorted(seen) == list(range(n)), len(seen)

    assert rt.block_on(main()) == (True, n)


@pytest.mark.timeout(20)
def test_join_next_woken_by_a_child_finishing_on_another_worker(make_runtime):
    rt = make_runtime(4)
    release = threading.Event()

    async def child():
        await zokio.spawn_blocking(release.wait, 5)
        return "released"

    async def main():
        js = zokio.JoinSet()
        js.spawn(child())
        threading.Timer(0.03, release.set).start()
        t0 = time.monotonic()
        r = await js.join_next()
        return r, time.monotonic() - t0 < 2.0

    assert rt.block_on(main()) == ("released", True)
