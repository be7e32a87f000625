"""Tasks: zokio.spawn, JoinHandle, yield_now, Oneshot, contextvars, the
cooperative budget."""
from __future__ import annotations

import contextvars
import threading
import time

import pytest

import zokio
from _helpers import settled


async def _ret(v):
    await zokio.yield_now()
    return v


# ---- spawn / JoinHandle ---------------------------------------------------------

@pytest.mark.timeout(20)
def test_spawn_returns_awaitable_join_handle(rt):
    async def main():
        h = zokio.spawn(_ret(41), name="child")
        assert isinstance(h, zokio.JoinHandle)
        assert h.name == "child"
        v = await h
        assert h.done() and not h.cancelled()
        return v + 1

    assert rt.block_on(main()) == 42


@pytest.mark.timeout(20)
def test_default_names_are_distinct(rt):
    async def main():
        hs = [zokio.spawn(_ret(i)) for i in range(5)]
        names = [h.name for h in hs]
        for h in hs:
            await h
        return names

    names = rt.block_on(main())
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == 5


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", [None, 0, "s", (1, 2), (), ((),), [1], ValueError("as value"),
                                   StopIteration(3)])
def test_return_values_survive_await_and_result(rt, value):
    """Tuples, exception instances and None are returned as-is (StopIteration
    packing must not unpack or raise them)."""
    async def main():
        h = zokio.spawn(_ret(value))
        a = await h
        b = await h      # awaiting a finished handle again
        return a, b, h

    a, b, h = rt.block_on(main())
    assert a is value and b is value
    assert h.result(timeout=1) is value


@pytest.mark.timeout(20)
def test_done_before_and_after(rt):
    release = zokio.Oneshot()

    async def child():
        return await release

    h = rt.spawn(child())
    time.sleep(0.02)
    assert not h.done()
    assert not h.cancelled()
    assert release.set("x") is True
    assert h.result(timeout=5) == "x"
    assert h.done()
    assert h.exception() is None


@pytest.mark.timeout(20)
def test_many_joiners_of_one_task(rt):
    gate = zokio.Oneshot()

    async def target():
        return await gate

    async def joiner(h):
        return await h

    async def main():
        h = zokio.spawn(target())
        js = [zokio.spawn(joiner(h)) for _ in range(50)]
        await zokio.sleep(0.01)
        gate.set("go")
        return [await j for j in js]

    assert rt.block_on(main()) == ["go"] * 50


@pytest.mark.timeout(20)
def test_many_plain_thread_joiners_of_one_task(rt):
    gate = zokio.Oneshot()

    async def target():
        return await gate

    h = rt.spawn(target())
    got = []
    barrier = threading.Barrier(17)

    def join():
        barrier.wait()
        got.append(h.result(timeout=10))

    ts = [threading.Thread(target=join) for _ in range(16)]
    for t in ts:
        t.start()
    barrier.wait()
    time.sleep(0.02)
    gate.set(99)
    for t in ts:
        t.join()
    assert got == [99] * 16


@pytest.mark.timeout(20)
def test_add_done_callback(rt):
    calls = []
    gate = zokio.Oneshot()

    async def child():
        return await gate

    h = rt.spawn(child())
    ev = threading.Event()
    h.add_done_callback(lambda: (calls.append("a"), ev.set()))
    removed = lambda: calls.append("removed")  # noqa: E731
    h.add_done_callback(removed)
    h.remove_done_callback(removed)
    gate.set(1)
    assert ev.wait(5)
    assert h.result(timeout=5) == 1
    # after completion the callback runs at once
    h.add_done_callback(lambda: calls.append("late"))
    assert "a" in calls and "late" in calls
    assert "removed" not in calls


@pytest.mark.timeout(20)
def test_task_cannot_await_itself(rt):
    async def selfish():
        me = _native_current_task()
        await me

    with pytest.raises(RuntimeError, match="own JoinHandle"):
        rt.block_on(selfish())


def _native_current_task():
    return zokio._native.current_task()


@pytest.mark.timeout(30)
def test_ten_thousand_tasks(make_runtime):
    rt = make_runtime(2)

    async def leaf(i):
        if i % 2:
            await zokio.yield_now()
        return i

    async def main():
        hs = [zokio.spawn(leaf(i)) for i in range(10_000)]
        return sum([await h for h in hs])

    assert rt.block_on(main()) == sum(range(10_000))
    m = settled(rt)
    assert m["tasks_completed"] == 10_001 and m["tasks_live"] == 0


@pytest.mark.timeout(20)
def test_nested_spawn_tree(rt):
    async def node(depth):
        if depth == 0:
            return 1
        a = zokio.spawn(node(depth - 1))
        b = zokio.spawn(node(depth - 1))
        return await a + await b

    assert rt.block_on(node(9)) == 2 ** 9


# ---- yield_now ------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_yield_now_lets_others_run_on_one_worker(rt1):
    async def main():
        flag = []

        async def setter():
            flag.append(1)

        zokio.spawn(setter())
        spins = 0
        while not flag:          # would spin forever if yield_now did not yield
            await zokio.yield_now()
            spins += 1
        return spins

    assert rt1.block_on(main()) >= 1


@pytest.mark.timeout(20)
def test_yield_now_interleaves_fairly(rt1):
    log = []

    async def worker(tag):
        for i in range(5):
            log.append(tag)
            await zokio.yield_now()

    async def main():
        hs = [zokio.spawn(worker(t)) for t in "ab"]
        for h in hs:
            await h

    rt1.block_on(main())
    assert sorted(log) == ["a"] * 5 + ["b"] * 5
    # with one worker, yielding alternates the two tasks: neither runs all
    # its five steps before the other starts
    assert log.index("b") < 4 and log.index("a") < 4
    assert "".join(log) not in ("aaaaabbbbb", "bbbbbaaaaa")


@pytest.mark.timeout(20)
def test_yield_now_returns_none(rt):
    async def main():
        return await zokio.yield_now()

    assert rt.block_on(main()) is None


# ---- Oneshot -----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_oneshot_set_from_plain_thread(rt):
    o = zokio.Oneshot()
    assert not o.done()

    async def main():
        return await o

    h = rt.spawn(main())
    threading.Timer(0.02, o.set, ("hello",)).start()
    assert h.result(timeout=5) == "hello"
    assert o.done()
    assert o.set("again") is False


@pytest.mark.timeout(20)
def test_oneshot_set_before_await(rt):
    o = zokio.Oneshot()
    assert o.set((1, 2)) is True

    async def main():
        return await o

    assert rt.block_on(main()) == (1, 2)


@pytest.mark.timeout(20)
def test_oneshot_set_exception(rt):
    o = zokio.Oneshot()
    assert o.set_exception(KeyError("k")) is True
    assert o.set("late") is False

    async def main():
        try:
            await o
        except KeyError as e:
            return e.args

    assert rt.block_on(main()) == ("k",)
    o2 = zokio.Oneshot()
    o2.set_exception(ValueError)   # a class is instantiated

    async def main2():
        await o2

    with pytest.raises(ValueError):
        rt.block_on(main2())
    with pytest.raises(TypeError):
        zokio.Oneshot().set_exception("not an exception")


@pytest.mark.timeout(20)
def test_oneshot_second_awaiter_is_refused(rt):
    o = zokio.Oneshot()

    async def first():
        return await o

    async def main():
        h = zokio.spawn(first())
        await zokio.sleep(0.01)
        try:
            await o
        except RuntimeError as e:
            err = str(e)
        else:
            err = None
        o.set(5)
        return err, await h

    err, v = rt.block_on(main())
    assert err is not None and "already awaited" in err
    assert v == 5


@pytest.mark.timeout(20)
def test_oneshot_rejects_arguments():
    with pytest.raises(TypeError):
        zokio.Oneshot(1)


# ---- contextvars ------------------------------------------------------------------

VAR = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.timeout(20)
def test_child_sees_parent_value_at_spawn_time(rt):
    async def child(gate):
        before = VAR.get()
        await gate
        return before, VAR.get()

    async def main():
        VAR.set("p1")
        g = zokio.Oneshot()
        h = zokio.spawn(child(g))
        VAR.set("p2")            # after the spawn: the child keeps p1
        await zokio.sleep(0.005)
        g.set(None)
        return await h, VAR.get()

    (before, after), parent = rt.block_on(main())
    assert before == "p1" and after == "p1"
    assert parent == "p2"


@pytest.mark.timeout(20)
def test_child_set_does_not_leak_to_parent_or_siblings(rt):
    async def child(i, gate):
        VAR.set(f"child{i}")
        await gate              # resume, possibly on another worker
        await zokio.yield_now()
        return VAR.get()

    async def sibling_reader(gate):
        await gate
        return VAR.get()

    async def main():
        VAR.set("parent")
        gates = [zokio.Oneshot() for _ in range(21)]
        hs = [zokio.spawn(child(i, gates[i])) for i in range(20)]
        sib = zokio.spawn(sibling_reader(gates[20]))
        await zokio.sleep(0.01)
        for g in gates:
            g.set(None)
        vals = [await h for h in hs]
        return vals, await sib, VAR.get()

    vals, sib, parent = rt.block_on(main())
    assert vals == [f"child{i}" for i in range(20)]
    assert sib == "parent"
    assert parent == "parent"


@pytest.mark.timeout(20)
def test_spawn_from_plain_thread_copies_its_context(rt):
    results = {}

    async def read():
        await zokio.yield_now()
        return VAR.get()

    def client(tag):
        VAR.set(tag)
        results[tag] = rt.spawn(read()).result(timeout=5)

    ts = [threading.Thread(target=client, args=(f"t{i}",)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == {f"t{i}": f"t{i}" for i in range(4)}
    assert VAR.get() == "unset"


@pytest.mark.timeout(20)
def test_task_context_is_not_the_callers(rt):
    VAR.set("caller")
    try:
        async def main():
            VAR.set("in-task")
            return VAR.get()

        assert rt.block_on(main()) == "in-task"
        assert VAR.get() == "caller"
    finally:
        VAR.set("unset")


# ---- cooperative budget ----------------------------------------------------------

@pytest.mark.timeout(20)
def test_ready_awaitables_do_not_starve_others(rt1):
    """A task that keeps awaiting already-complete leaves never suspends by
    itself; the budget must force it to yield so a sleeping task (timer) and
    another task get to run on the single worker."""
    done = zokio.Oneshot()
    done.set(None)

    async def main():
        stop = []

        async def stopper():
            await zokio.sleep(0.02)
            stop.append(1)

        zokio.spawn(stopper())
        finished = zokio.spawn(_ret("f"))
        await finished
        n = 0
        while not stop:
            await done           # always ready
            await finished       # always ready
            n += 1
        return n

    assert rt1.block_on(main()) > 0

