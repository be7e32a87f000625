"""Cancellation: JoinHandle.cancel() raises zokio.Cancelled at the task's current
or next suspension point, unregisters what it waited on, runs finally
blocks, and the joiner sees Cancelled."""
from __future__ import annotations

import threading
import time

import pytest

import zokio
from _helpers import settled


async def _forever():
    while True:
        await zokio.sleep(10)


@pytest.mark.timeout(10)
def test_cancelled_is_a_base_exception():
    assert issubclass(zokio.Cancelled, BaseException)
    assert not issubclass(zokio.Cancelled, Exception)


@pytest.mark.timeout(20)
def test_cancel_sleeping_task(rt):
    seen = []
    entered = threading.Event()

    async def victim():
        try:
            entered.set()
            await zokio.sleep(30)
            seen.append("woke")
        except zokio.Cancelled:
            seen.append("cancelled")
            raise

    h = rt.spawn(victim(), name="victim")
    assert entered.wait(5)
    time.sleep(0.01)
    t0 = time.monotonic()
    assert h.cancel() is True
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert time.monotonic() - t0 < 2
    assert seen == ["cancelled"]
    assert h.done() and h.cancelled()
    assert isinstance(h.exception(), zokio.Cancelled)
    assert "cancelled" in repr(h)


@pytest.mark.timeout(20)
def test_joiner_task_sees_cancelled(rt):
    async def main():
        h = zokio.spawn(_forever())
        await zokio.sleep(0.01)
        h.cancel()
        try:
            await h
        except zokio.Cancelled:
            return "joiner saw Cancelled", h.cancelled()
        return "no", None

    assert rt.block_on(main()) == ("joiner saw Cancelled", True)


@pytest.mark.timeout(20)
def test_cancel_unregisters_timers(rt, util):
    hs = [rt.spawn(_forever()) for _ in range(100)]
    assert util.wait_for(lambda: rt.metrics()["timers_pending"] == 100, timeout=5), rt.metrics()
    for h in hs:
        h.cancel()
    for h in hs:
        with pytest.raises(zokio.Cancelled):
            h.result(timeout=5)
    # the wheel entries are gone now, not when the 10 s timers would fire
    assert util.wait_for(lambda: rt.metrics()["timers_pending"] == 0, timeout=3), rt.metrics()
    assert settled(rt)["tasks_live"] == 0


@pytest.mark.timeout(20)
def test_cancel_from_another_task_unregisters_timer(rt):
    async def main():
        hs = [zokio.spawn(_forever()) for _ in range(20)]
        await zokio.sleep(0.02)
        before = zokio.current_runtime().metrics()["timers_pending"]
        for h in hs:
            h.cancel()
        for h in hs:
            try:
                await h
            except zokio.Cancelled:
                pass
        for _ in range(100):
            if zokio.current_runtime().metrics()["timers_pending"] == 0:
                break
            await zokio.sleep(0.005)
        return before, zokio.current_runtime().metrics()["timers_pending"]

    before, after = rt.block_on(main())
    assert before >= 20
    assert after == 0


@pytest.mark.timeout(20)
def test_finally_runs_and_can_await(rt):
    log = []

    async def victim():
        try:
            await zokio.sleep(30)
        finally:
            log.append("finally")
            await zokio.sleep(0.02)
            await zokio.yield_now()
            log.append("finally done")

    async def main():
        h = zokio.spawn(victim())
        await zokio.sleep(0.01)
        h.cancel()
        try:
            await h
        except zokio.Cancelled:
            pass
        return list(log)       # the joiner resumes only after the finally

    assert rt.block_on(main()) == ["finally", "finally done"]


@pytest.mark.timeout(20)
def test_second_cancel_does_not_interrupt_cleanup(rt):
    """cancel() on a task that is already cancelled (and unwinding) must not
    throw a second Cancelled into its finally block."""
    log = []
    entered = threading.Event()

    async def victim():
        try:
            entered.set()
            await zokio.sleep(30)
        finally:
            log.append("start")
            await zokio.sleep(0.05)
            log.append("end")

    h = rt.spawn(victim())
    assert entered.wait(5)
    h.cancel()
    time.sleep(0.01)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert log == ["start", "end"]


@pytest.mark.timeout(20)
def test_shutdown_after_cancel_lets_finally_await(make_runtime, util):
    rt = make_runtime(2)
    log = []
    entered = threading.Event()

    async def victim():
        try:
            entered.set()
            await zokio.sleep(30)
        finally:
            log.append("start")
            await zokio.sleep(0.05)
            log.append("end")

    h = rt.spawn(victim())
    assert entered.wait(5)
    h.cancel()
    rt.shutdown(timeout=5)
    assert log == ["start", "end"]
    assert h.cancelled()
    assert not util.zokio_threads()


@pytest.mark.timeout(20)
def test_cancel_before_first_run(rt1):
    ran = []

    async def never():
        ran.append(1)

    async def main():
        h = zokio.spawn(never())   # one worker, busy with us: not started yet
        assert h.cancel() is True
        try:
            await h
        except zokio.Cancelled:
            return "cancelled", h.cancelled()
        return "ran", None

    assert rt1.block_on(main()) == ("cancelled", True)
    assert ran == []
    assert settled(rt1)["tasks_live"] == 0


@pytest.mark.timeout(20)
def test_cancel_before_first_run_from_plain_thread(rt1):
    gate = threading.Event()
    ran = []

    async def blocker():
        gate.wait()            # hold the only worker

    async def never():
        ran.append(1)

    b = rt1.spawn(blocker())
    time.sleep(0.02)
    h = rt1.spawn(never())
    assert h.cancel() is True
    gate.set()
    b.result(timeout=5)
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert ran == []


@pytest.mark.timeout(20)
def test_cancel_after_completion_returns_false(rt):
    h = rt.spawn(_value("done"))
    assert h.result(timeout=5) == "done"
    assert h.cancel() is False
    assert not h.cancelled()
    assert h.result(timeout=1) == "done"


async def _value(v):
    await zokio.yield_now()
    return v


@pytest.mark.timeout(20)
def test_cancel_running_task_is_delivered_at_next_suspension(rt):
    running = threading.Event()
    go_on = threading.Event()
    log = []

    async def busy():
        running.set()
        go_on.wait(5)          # CPU-side work: no suspension point
        log.append("before await")
        await zokio.yield_now()
        log.append("after await")

    h = rt.spawn(busy())
    assert running.wait(5)
    assert h.cancel() is True
    go_on.set()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert log == ["before await"]


@pytest.mark.timeout(20)
def test_cancel_task_awaiting_oneshot_then_reuse_oneshot(rt):
    o = zokio.Oneshot()

    async def wait_on(x):
        return await x

    h = rt.spawn(wait_on(o))
    time.sleep(0.02)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    # the cancelled waiter unregistered: another task may await the cell
    h2 = rt.spawn(wait_on(o))
    time.sleep(0.02)
    assert o.set("v") is True
    assert h2.result(timeout=5) == "v"


@pytest.mark.timeout(20)
def test_cancel_joiner_does_not_cancel_joined(rt):
    async def slow():
        await zokio.sleep(0.05)
        return "inner"

    async def joiner(h):
        return await h

    async def main():
        inner = zokio.spawn(slow())
        j = zokio.spawn(joiner(inner))
        await zokio.sleep(0.01)
        j.cancel()
        try:
            await j
        except zokio.Cancelled:
            pass
        return j.cancelled(), await inner

    assert rt.block_on(main()) == (True, "inner")


@pytest.mark.timeout(20)
def test_cancel_task_waiting_on_spawn_blocking(rt):
    done = threading.Event()

    def job():
        time.sleep(0.15)
        done.set()
        return 1

    async def waiter():
        return await zokio.spawn_blocking(job)

    h = rt.spawn(waiter())
    time.sleep(0.02)
    t0 = time.monotonic()
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert time.monotonic() - t0 < 0.12      # did not wait for the job
    assert done.wait(5)                      # the job itself still finished


@pytest.mark.timeout(20)
def test_task_may_catch_cancelled_and_await_again(rt):
    async def victim():
        try:
            await zokio.sleep(30)
        except zokio.Cancelled:
            await zokio.sleep(0.01)
            raise

    h = rt.spawn(victim())
    time.sleep(0.02)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert h.cancelled()


@pytest.mark.timeout(20)
def test_cancelled_exception_not_logged(rt, caplog):
    import gc
    import logging

    caplog.set_level(logging.ERROR, logger="zokio")
    h = rt.spawn(_forever())
    time.sleep(0.01)
    h.cancel()
    assert rt.metrics() is not None
    for _ in range(200):
        if h.done():
            break
        time.sleep(0.005)
    assert h.done()
    del h
    gc.collect()
    assert not [r for r in caplog.records if r.name == "zokio"]


@pytest.mark.timeout(30)
def test_cancel_unregisters_timers_repeatedly(rt):
    """Many rounds of cross-worker cancellation: each round's wheel entries
    must be gone promptly (a lost mailbox wake leaves them until the 10 s
    timers would have fired)."""
    async def main():
        m = zokio.current_runtime().metrics
        for rnd in range(40):
            hs = [zokio.spawn(_forever()) for _ in range(20)]
            await zokio.sleep(0.005)
            for h in hs:
                h.cancel()
            for h in hs:
                try:
                    await h
                except zokio.Cancelled:
                    pass
            t0 = time.monotonic()
            while m()["timers_pending"] and time.monotonic() - t0 < 1.0:
                await zokio.sleep(0.002)
            if m()["timers_pending"]:
                return rnd, m()["timers_pending"]
        return None

    assert rt.block_on(main()) is None

