"""Errors that name the mistake: spawning non-coroutines, awaiting foreign
awaitables, API used outside a runtime, task exceptions with tracebacks,
exceptions nobody retrieved."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
import types
import warnings

import pytest

import zokio


async def _coro_fn():
    return 1


# ---- spawning something that is not a coroutine ---------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("bad", [42, None, _coro_fn, lambda: None, "coro"])
def test_runtime_spawn_non_coroutine(rt, bad):
    with pytest.raises(TypeError, match="coroutine"):
        rt.spawn(bad)
    with pytest.raises(TypeError, match="coroutine"):
        rt.block_on(bad)


@pytest.mark.timeout(20)
def test_uncalled_async_function_hint(rt):
    with pytest.raises(TypeError, match="forget to call"):
        rt.spawn(_coro_fn)


@pytest.mark.timeout(20)
def test_zokio_spawn_non_coroutine_inside_task(rt):
    def gen():
        yield 1

    async def main():
        msgs = []
        for bad in (_coro_fn, gen(), 3):
            try:
                zokio.spawn(bad)
            except TypeError as e:
                msgs.append(str(e))
        return msgs

    msgs = rt.block_on(main())
    assert len(msgs) == 3
    assert all("coroutine" in m for m in msgs)
    assert "_coro_fn" in msgs[0]


@pytest.mark.timeout(20)
def test_task_name_must_be_str(rt):
    c = _coro_fn()
    with pytest.raises(TypeError, match="name"):
        rt.spawn(c, name=5)
    c.close()


# ---- foreign awaitables -------------------------------------------------------------

@pytest.mark.timeout(20)
def test_awaiting_asyncio_future_raises_type_error(rt):
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()

        async def main():
            try:
                await fut
            except TypeError as e:
                return str(e)
            return None

        msg = rt.block_on(main())
    finally:
        loop.close()
    assert msg is not None
    assert "Future" in msg and "not a zokio awaitable" in msg


@pytest.mark.timeout(20)
def test_awaiting_asyncio_sleep_raises_type_error(rt):
    async def main():
        try:
            await asyncio.sleep(0.01)
        except TypeError as e:
            return str(e)
        except RuntimeError as e:   # asyncio may refuse first: no running loop
            return "runtime:" + str(e)
        return None

    msg = rt.block_on(main())
    assert msg is not None


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", [42, None, "a string"])
def test_bare_yield_raises_type_error_naming_the_object(rt, value):
    @types.coroutine
    def bare():
        yield value

    async def main():
        try:
            await bare()
        except TypeError as e:
            return str(e)
        return None

    msg = rt.block_on(main())
    assert msg is not None and repr(value) in msg


@pytest.mark.timeout(20)
@pytest.mark.parametrize("make", ["sleep", "yield_now", "oneshot", "spawn_blocking", "handle"])
def test_a_zokio_awaitable_yielded_bare_raises_instead_of_losing_its_result(rt, make):
    """`r = yield leaf` in a generator-based coroutine used to suspend the
    task on the leaf and then resume the coroutine with None: the result
    (7 here) was silently lost."""
    @types.coroutine
    def bare(x):
        r = yield x
        return r

    async def seven():
        return 7

    async def main():
        o = zokio.Oneshot()
        o.set(7)
        x = {"sleep": lambda: zokio.sleep(0.001), "yield_now": zokio.yield_now,
             "oneshot": lambda: o, "spawn_blocking": lambda: zokio.spawn_blocking(lambda: 7),
             "handle": lambda: zokio.spawn(seven())}[make]()
        try:
            r = await bare(x)
        except TypeError as e:
            msg = str(e)
        else:
            return ("returned", r)
        # the same object awaited properly still works
        return ("raised", msg, await x if make != "yield_now" else None)

    out = rt.block_on(main())
    assert out[0] == "raised", out
    assert "bare 'yield'" in out[1] and "awaited" in out[1]
    if make in ("oneshot", "spawn_blocking", "handle"):
        assert out[2] == 7


@pytest.mark.timeout(20)
def test_foreign_awaitable_uncaught_fails_the_task(rt):
    @types.coroutine
    def bare():
        yield object()

    async def main():
        await bare()

    with pytest.raises(TypeError, match="not a zokio awaitable"):
        rt.block_on(main())


# ---- API used outside a runtime ------------------------------------------------------

@pytest.mark.timeout(20)
def test_spawn_outside_runtime():
    c = _coro_fn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "never awaited" warning either
        with pytest.raises(RuntimeError, match="inside a zokio runtime"):
            zokio.spawn(c)
        assert c.cr_frame is None               # the coroutine was closed
        del c
        gc.collect()


@pytest.mark.timeout(20)
def test_spawn_blocking_outside_runtime():
    with pytest.raises(RuntimeError, match="inside a zokio runtime"):
        zokio.spawn_blocking(time.sleep, 0)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("make", [
    lambda: zokio.sleep(0.01),
    lambda: zokio.sleep_until(0),
    lambda: zokio.yield_now(),
    lambda: zokio.Oneshot(),
])
def test_leaf_awaited_outside_runtime(make):
    async def f():
        await make()

    c = f()
    with pytest.raises(RuntimeError, match="inside a zokio task"):
        c.send(None)
    c.close()


@pytest.mark.timeout(20)
def test_sleep_awaited_under_asyncio():
    async def f():
        await zokio.sleep(0.01)

    with pytest.raises(RuntimeError, match="zokio"):
        asyncio.run(f())


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seconds", [1.0, None])
def test_timeout_outside_runtime(seconds):
    async def f():
        async with zokio.timeout(seconds):
            pass

    c = f()
    with pytest.raises(RuntimeError, match="inside a zokio task"):
        c.send(None)
    c.close()


@pytest.mark.timeout(20)
def test_join_handle_result_inside_worker_raises(rt):
    gate = zokio.Oneshot()

    async def child():
        return await gate

    async def main():
        h = zokio.spawn(child())
        try:
            h.result(timeout=1)
        except RuntimeError as e:
            msg = str(e)
        else:
            msg = None
        gate.set(1)
        return msg, await h

    msg, v = rt.block_on(main())
    assert msg is not None and "await" in msg
    assert v == 1


# ---- task exceptions -------------------------------------------------------------------

def _innermost():
    raise ValueError("from deep inside")


async def _failing_task():
    await zokio.yield_now()
    _innermost()


@pytest.mark.timeout(20)
def test_exception_reaches_joiner_with_traceback(rt):
    async def main():
        h = zokio.spawn(_failing_task())
        try:
            await h
        except ValueError as e:
            return e
        return None

    e = rt.block_on(main())
    assert isinstance(e, ValueError) and e.args == ("from deep inside",)
    names = [f.name for f in traceback.extract_tb(e.__traceback__)]
    assert "_innermost" in names and "_failing_task" in names


@pytest.mark.timeout(20)
def test_exception_reaches_plain_thread_joiner_with_traceback(rt):
    h = rt.spawn(_failing_task())
    with pytest.raises(ValueError) as info:
        h.result(timeout=5)
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_innermost" in names and "_failing_task" in names
    assert isinstance(h.exception(), ValueError)
    assert "failed" in repr(h)


@pytest.mark.timeout(20)
def test_block_on_exception_traceback(rt):
    with pytest.raises(ValueError) as info:
        rt.block_on(_failing_task())
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_innermost" in names


@pytest.mark.timeout(20)
def test_base_exceptions_propagate(rt):
    async def exiter():
        raise SystemExit(4)

    h = rt.spawn(exiter())
    with pytest.raises(SystemExit):
        h.result(timeout=5)

    async def kb():
        await zokio.yield_now()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rt.spawn(kb()).result(timeout=5)


# ---- exceptions never retrieved -------------------------------------------------------

def _wait_done(h, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not h.done():
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.002)


def _zokio_records(caplog):
    return [r for r in caplog.records if r.name == "zokio"]


@pytest.mark.timeout(20)
def test_unretrieved_exception_is_logged_when_dropped(rt, caplog):
    caplog.set_level(logging.ERROR, logger="zokio")
    h = rt.spawn(_failing_task(), name="lonely")
    _wait_done(h)
    time.sleep(0.01)         # let the worker drop its references
    assert _zokio_records(caplog) == []      # not before the handle is dropped
    del h
    for _ in range(50):
        gc.collect()
        if _zokio_records(caplog):
            break
        time.sleep(0.01)
    recs = _zokio_records(caplog)
    assert len(recs) == 1, [r.getMessage() for r in caplog.records]
    rec = recs[0]
    assert rec.levelno == logging.ERROR
    assert "never retrieved" in rec.getMessage()
    assert "lonely" in rec.getMessage()
    assert rec.exc_info is not None and isinstance(rec.exc_info[1], ValueError)
    names = [f.name for f in traceback.extract_tb(rec.exc_info[2])]
    assert "_innermost" in names


@pytest.mark.timeout(20)
def test_unretrieved_exception_of_fire_and_forget_task_is_logged(rt, caplog):
    """A task spawned inside the runtime whose handle was never kept."""
    caplog.set_level(logging.ERROR, logger="zokio")

    async def main():
        zokio.spawn(_failing_task(), name="forgotten")
        await zokio.sleep(0.02)

    rt.block_on(main())
    for _ in range(100):
        gc.collect()
        if _zokio_records(caplog):
            break
        time.sleep(0.01)
    recs = _zokio_records(caplog)
    assert len(recs) == 1
    assert "forgotten" in recs[0].getMessage()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["await", "result", "exception"])
def test_retrieved_exception_is_not_logged(rt, caplog, how):
    caplog.set_level(logging.ERROR, logger="zokio")
    h = rt.spawn(_failing_task())
    _wait_done(h)
    if how == "await":
        async def join():
            try:
                await h
            except ValueError:
                pass
        rt.block_on(join())
    elif how == "result":
        with pytest.raises(ValueError):
            h.result(timeout=1)
    else:
        assert isinstance(h.exception(), ValueError)
    del h
    gc.collect()
    time.sleep(0.02)
    gc.collect()
    assert _zokio_records(caplog) == []


@pytest.mark.timeout(20)
def test_successful_task_not_logged(rt, caplog):
    caplog.set_level(logging.DEBUG, logger="zokio")
    h = rt.spawn(_coro_fn())
    _wait_done(h)
    del h
    gc.collect()
    assert [r for r in _zokio_records(caplog) if r.levelno >= logging.WARNING] == []
