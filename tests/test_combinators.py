"""zokio.select / race / gather / as_completed: the first to finish wins,
what they started is cancelled AND awaited before they return or raise,
including when the caller is cancelled."""
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


def _tracked(log, name, delay, value=None):
    """A child that records how it ended; its cleanup awaits."""
    async def run():
        try:
            await zokio.sleep(delay)
            log.append(f"{name} done")
            return value if value is not None else name
        except zokio.Cancelled:
            await zokio.yield_now()
            log.append(f"{name} cancelled")
            raise
    return run()


# ---- select / race -------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_select_first_wins_and_the_rest_are_cancelled_and_awaited(rt):
    log = []

    async def main():
        r = await zokio.select(_tracked(log, "slow", 5), _tracked(log, "fast", 0.01),
                               _tracked(log, "slower", 6))
        return r, sorted(log)                  # snapshot at return

    r, seen = rt.block_on(main())
    assert r == (1, "fast")
    assert seen == ["fast done", "slow cancelled", "slower cancelled"]


@pytest.mark.timeout(20)
def test_race_returns_the_result_and_propagates_a_first_failure(rt):
    log = []

    async def main():
        v = await zokio.race(_value("b", 0.05), _value("a", 0.01))
        with pytest.raises(ValueError, match="first"):
            await zokio.race(_fail("first", 0.01), _tracked(log, "other", 5))
        return v, list(log)

    assert rt.block_on(main()) == ("a", ["other cancelled"])


@pytest.mark.timeout(20)
def test_select_accepts_handles_oneshots_and_leaves(rt):
    async def main():
        cell = zokio.Oneshot()
        h = zokio.spawn(_value("handle", 5))
        threading.Timer(0.02, cell.set, args=("oneshot",)).start()
        r1 = await zokio.select(h, cell, zokio.sleep(5))
        h2 = zokio.spawn(_value("h2", 0.01))
        r2 = await zokio.select(zokio.sleep(5), h2)
        return r1, h.cancelled(), r2

    assert rt.block_on(main()) == ((1, "oneshot"), True, (1, "h2"))


@pytest.mark.timeout(20)
def test_select_rejects_non_awaitables_without_leaking(rt):
    log = []

    async def main():
        c = _tracked(log, "never", 5)
        with pytest.raises(TypeError, match="not awaitable"):
            await zokio.select(_tracked(log, "started", 5), 42, c)
        with pytest.raises(ValueError):
            await zokio.select()
        await zokio.sleep(0.02)
        # the one already started was cancelled (before it ran: no log), the
        # one not yet started was closed; only this task is left
        return list(log), c.cr_frame, zokio.current_runtime().metrics()["tasks_live"]

    assert rt.block_on(main()) == ([], None, 1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["task cancel", "scope"])
def test_cancelling_the_caller_of_select_cancels_and_awaits_all(rt, how):
    log = []
    entered = threading.Event()

    async def caller():
        entered.set()
        try:
            if how == "scope":
                with zokio.move_on_after(0.03) as sc:
                    await zokio.select(_tracked(log, "a", 5), _tracked(log, "b", 5))
                log.append(("scope caught", sc.cancelled_caught))
            else:
                await zokio.select(_tracked(log, "a", 5), _tracked(log, "b", 5))
        except zokio.Cancelled:
            log.append("caller cancelled")
            raise

    h = rt.spawn(caller())
    assert entered.wait(5)
    if how == "task cancel":
        time.sleep(0.03)
        h.cancel()
        with pytest.raises(zokio.Cancelled):
            h.result(timeout=5)
        assert sorted(log[:2]) == ["a cancelled", "b cancelled"]
        assert log[2] == "caller cancelled"
    else:
        h.result(timeout=5)
        assert sorted(log[:2]) == ["a cancelled", "b cancelled"]
        assert log[2] == ("scope caught", True)


@pytest.mark.timeout(60)
def test_many_concurrent_selects_on_8_workers(make_runtime):
    rt = make_runtime(8)

    async def one(i):
        k = i % 3
        aws = [_value(j, 0.001 * ((j - k) % 3) + 0.0005 * j) for j in range(3)]
        return await zokio.select(*aws)

    async def main():
        hs = [zokio.spawn(one(i)) for i in range(300)]
        return [await h for h in hs]

    out = rt.block_on(main())
    assert len(out) == 300 and all(idx == val for idx, val in out)
    assert rt.metrics()["timers_pending"] == 0


# ---- gather --------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_gather_returns_results_in_argument_order(rt):
    async def main():
        return await zokio.gather(_value(1, 0.03), _value(2, 0.01), _value(3), zokio.sleep(0.01))

    assert rt.block_on(main()) == [1, 2, 3, None]
    assert rt.block_on(zokio.gather()) == []


@pytest.mark.timeout(20)
def test_gather_failure_cancels_and_awaits_the_rest(rt):
    log = []

    async def main():
        try:
            await zokio.gather(_tracked(log, "a", 5), _fail("bad", 0.01), _tracked(log, "b", 5))
        except ValueError as e:
            return str(e), sorted(log)

    assert rt.block_on(main()) == ("bad", ["a cancelled", "b cancelled"])


@pytest.mark.timeout(20)
def test_gather_return_exceptions(rt):
    async def main():
        h = zokio.spawn(_value("never", 5))
        h.cancel()
        out = await zokio.gather(_value(1), _fail("x", 0.01), h, return_exceptions=True)
        return out[0], type(out[1]).__name__, str(out[1]), type(out[2]).__name__

    assert rt.block_on(main()) == (1, "ValueError", "x", "Cancelled")


@pytest.mark.timeout(20)
def test_cancelling_the_caller_of_gather_cancels_and_awaits_all(rt):
    log = []

    async def caller():
        try:
            await zokio.gather(_tracked(log, "a", 5), _tracked(log, "b", 5))
        except zokio.Cancelled:
            log.append("caller cancelled")
            raise

    h = rt.spawn(caller())
    time.sleep(0.05)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert sorted(log[:2]) == ["a cancelled", "b cancelled"] and log[2] == "caller cancelled"


# ---- as_completed ------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_as_completed_yields_results_in_completion_order(rt):
    async def main():
        out = []
        async for r in zokio.as_completed([_value(3, 0.06), _value(1, 0.01), _value(2, 0.03)]):
            out.append(r)
        return out

    assert rt.block_on(main()) == [1, 2, 3]


@pytest.mark.timeout(20)
def test_as_completed_raises_at_the_failures_turn_and_goes_on(rt):
    async def main():
        out = []
        it = zokio.as_completed([_value(2, 0.04), _fail("x", 0.01)])
        with pytest.raises(ValueError):
            await it.__anext__()
        async for r in it:
            out.append(r)
        return out

    assert rt.block_on(main()) == [2]


@pytest.mark.timeout(20)
def test_as_completed_timeout_cancels_and_awaits_the_rest(rt):
    log = []

    async def main():
        got = []
        try:
            async for r in zokio.as_completed([_tracked(log, "slow", 5), _value("quick", 0.01)],
                                              timeout=0.05):
                got.append(r)
        except TimeoutError:
            return got, list(log)

    assert rt.block_on(main()) == (["quick"], ["slow cancelled"])


@pytest.mark.timeout(20)
def test_as_completed_async_with_and_break_cancel_the_rest(rt):
    log = []

    async def main():
        async with zokio.as_completed([_value("quick", 0.01), _tracked(log, "slow", 5)]) as it:
            async for r in it:
                first = r
                break
        return first, list(log)

    assert rt.block_on(main()) == ("quick", ["slow cancelled"])


@pytest.mark.timeout(20)
def test_cancelling_the_caller_of_as_completed(rt):
    log = []

    async def caller():
        try:
            async for _ in zokio.as_completed([_tracked(log, "a", 5), _tracked(log, "b", 5)]):
                pass
        except zokio.Cancelled:
            log.append("caller cancelled")
            raise

    h = rt.spawn(caller())
    time.sleep(0.05)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert sorted(log[:2]) == ["a cancelled", "b cancelled"] and log[2] == "caller cancelled"
