"""Runtime lifecycle (issue 5): the thread cap, JoinHandle.result() on a
worker, a main task's own KeyboardInterrupt, bounded and shared shutdown(),
os.fork(), async generators, the monitor thread."""
from __future__ import annotations

import threading

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
