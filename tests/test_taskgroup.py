"""zokio.TaskGroup: failure and cancellation trees, start(), closed groups,
children completing on many workers at once."""
import threading
import time

import pytest

import zokio

LATE = 1.0


async def _value(v, delay=0.0):
    if delay:
        await zokio.sleep(delay)
    return v


async def _fail(msg, delay=0.0, exc=ValueError):
    if delay:
        await zokio.sleep(delay)
    raise exc(msg)


def _sleeper(log, name, seconds=5):
    async def run():
        try:
            await zokio.sleep(seconds)
            log.append(f"{name} finished")
        except zokio.Cancelled:
            log.append(f"{name} cancelled")
            await zokio.yield_now()         # cleanup may await
            log.append(f"{name} cleaned up")
            raise
    return run()


@pytest.mark.timeout(20)
def test_block_waits_for_every_child(rt):
    async def main():
        async with zokio.TaskGroup() as tg:
            hs = [tg.spawn(_value(i, 0.001 * (i % 5))) for i in range(50)]
            named = tg.spawn(_value("n"), name="named-child")
        assert all(h.done() for h in hs)
        return [h.result() for h in hs], named.name, named.result()

    vals, name, n = rt.block_on(main())
    assert vals == list(range(50)) and name == "named-child" and n == "n"


@pytest.mark.timeout(20)
def test_empty_group_and_body_only(rt):
    async def main():
        async with zokio.TaskGroup():
            await zokio.sleep(0.001)
        return "ok"

    assert rt.block_on(main()) == "ok"


@pytest.mark.timeout(20)
def test_child_failure_cancels_siblings_and_the_body(rt):
    log = []

    async def main():
        try:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_sleeper(log, "a"))
                tg.spawn(_sleeper(log, "b"))
                tg.spawn(_fail("boom", 0.02))
                try:
                    await zokio.sleep(5)
                except zokio.Cancelled:
                    log.append("body cancelled")
                    raise
                log.append("body not cancelled")
        except ExceptionGroup as eg:
            return [repr(e) for e in eg.exceptions]

    errs = rt.block_on(main())
    assert errs == ["ValueError('boom')"]
    assert "body cancelled" in log and "body not cancelled" not in log
    for name in "ab":
        assert log.index(f"{name} cancelled") < log.index(f"{name} cleaned up")


@pytest.mark.timeout(20)
def test_body_failure_cancels_children_and_is_in_the_group(rt):
    log = []

    async def main():
        try:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_sleeper(log, "a"))
                await zokio.sleep(0.01)
                raise KeyError("body")
        except ExceptionGroup as eg:
            return [repr(e) for e in eg.exceptions], list(log)

    errs, seen = rt.block_on(main())
    assert errs == ["KeyError('body')"]
    assert seen == ["a cancelled", "a cleaned up"]   # awaited before the exit raised


@pytest.mark.timeout(20)
def test_base_exception_in_a_child_gives_base_exception_group(rt):
    async def main():
        try:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_fail("stop", exc=KeyboardInterrupt))
                tg.spawn(_value(1, 5))
        except BaseExceptionGroup as eg:
            return type(eg).__name__, sorted(type(e).__name__ for e in eg.exceptions)

    assert rt.block_on(main()) == ("BaseExceptionGroup", ["KeyboardInterrupt"])


@pytest.mark.timeout(20)
def test_child_cancelled_by_someone_else_is_not_an_error(rt):
    async def main():
        async with zokio.TaskGroup() as tg:
            h = tg.spawn(_value(None, 5))
            ok = tg.spawn(_value(1, 0.02))
            await zokio.sleep(0.005)
            h.cancel()
        return h.cancelled(), ok.result()

    assert rt.block_on(main()) == (True, 1)


@pytest.mark.timeout(20)
def test_nested_groups_failing_grandchild(rt):
    log = []

    async def middle():
        async with zokio.TaskGroup() as inner:
            inner.spawn(_sleeper(log, "cousin"))
            inner.spawn(_fail("grandchild", 0.02))
            await zokio.sleep(5)

    async def main():
        try:
            async with zokio.TaskGroup() as outer:
                outer.spawn(_sleeper(log, "uncle"))
                outer.spawn(middle())
                await zokio.sleep(5)
        except ExceptionGroup as eg:
            assert len(eg.exceptions) == 1
            sub = eg.exceptions[0]
            assert isinstance(sub, ExceptionGroup)
            return [repr(e) for e in sub.exceptions]

    assert rt.block_on(main()) == ["ValueError('grandchild')"]
    assert "cousin cleaned up" in log and "uncle cleaned up" in log


@pytest.mark.timeout(20)
def test_nested_group_in_the_body_cancelled_by_the_outer(rt):
    log = []

    async def main():
        try:
            async with zokio.TaskGroup() as outer:
                outer.spawn(_fail("outer child", 0.02))
                async with zokio.TaskGroup() as inner:
                    inner.spawn(_sleeper(log, "inner child"))
                    await zokio.sleep(5)
                log.append("not reached")
        except ExceptionGroup as eg:
            return [repr(e) for e in eg.exceptions]

    assert rt.block_on(main()) == ["ValueError('outer child')"]
    assert log == ["inner child cancelled", "inner child cleaned up"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["body", "exit"])
def test_cancel_of_the_parent_task_cancels_and_awaits_children(rt, where):
    log = []
    entered = threading.Event()

    async def parent():
        try:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_sleeper(log, "a"))
                tg.spawn(_sleeper(log, "b"))
                entered.set()
                if where == "body":
                    await zokio.sleep(5)
        except zokio.Cancelled:
            log.append("parent saw Cancelled")
            raise

    h = rt.spawn(parent())
    assert entered.wait(5)
    time.sleep(0.03)
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert log[-1] == "parent saw Cancelled"
    for name in "ab":
        assert f"{name} cleaned up" in log


@pytest.mark.timeout(20)
def test_enclosing_scope_cancels_the_group(rt):
    log = []

    async def main():
        with zokio.move_on_after(0.03) as scope:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_sleeper(log, "a"))
                await zokio.sleep(5)
        return scope.cancelled_caught

    assert rt.block_on(main()) is True
    assert log == ["a cancelled", "a cleaned up"]


@pytest.mark.timeout(30)
def test_children_on_8_workers_failing_at_once_give_one_group(make_runtime):
    rt = make_runtime(8)
    n = 8
    started = []

    async def child(i):
        started.append(i)                      # list.append: atomic on both builds
        deadline = time.monotonic() + 10
        while len(started) < n and time.monotonic() < deadline:
            pass                               # all n are running at once
        raise ValueError(i)                    # no suspension: none can be cancelled

    async def main():
        try:
            async with zokio.TaskGroup() as tg:
                for i in range(n):
                    tg.spawn(child(i))
        except ExceptionGroup as eg:
            return sorted(e.args[0] for e in eg.exceptions)

    assert rt.block_on(main()) == list(range(n))


@pytest.mark.timeout(60)
def test_many_children_completing_on_8_workers(make_runtime):
    """Thousands of children finishing on 8 workers while the body keeps
    spawning and children spawn siblings: the count never goes wrong (the
    exit neither returns early nor hangs)."""
    rt = make_runtime(8)
    done = []

    async def leaf(i):
        if i % 3 == 0:
            await zokio.yield_now()
        done.append(i)

    async def spawner(tg, base):
        for k in range(20):
            tg.spawn(leaf(base + k))
            if k % 5 == 0:
                await zokio.yield_now()

    async def main():
        for rnd in range(5):
            done.clear()
            async with zokio.TaskGroup() as tg:
                for j in range(50):
                    tg.spawn(spawner(tg, j * 100))
                    tg.spawn(leaf(-1 - j))
            assert len(done) == 50 * 20 + 50, (rnd, len(done))
        return "ok"

    assert rt.block_on(main()) == "ok"


# ---- start() ----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_start_returns_the_started_value_and_the_child_keeps_running(rt):
    log = []

    async def server(port, *, task_status):
        await zokio.sleep(0.01)
        task_status.started(port + 1)
        log.append("serving")
        await zokio.sleep(0.02)
        log.append("served")

    async def main():
        async with zokio.TaskGroup() as tg:
            v = await tg.start(server, 8079)
            log.append(("started", v))
        return log

    out = rt.block_on(main())
    assert sorted(map(str, out[:2])) == sorted(["serving", str(("started", 8080))])
    assert out[2] == "served"          # the block waited for the started child


@pytest.mark.timeout(20)
def test_start_errors(rt):
    async def no_start(*, task_status):
        await zokio.sleep(0.001)

    async def fails_first(*, task_status):
        raise OSError("bind failed")

    async def twice(*, task_status):
        task_status.started(1)
        task_status.started(2)

    async def fails_after(*, task_status):
        task_status.started("ready")
        await zokio.sleep(0.01)
        raise ValueError("later")

    async def main():
        out = []
        async with zokio.TaskGroup() as tg:
            sib = tg.spawn(_value("sibling", 0.03))
            with pytest.raises(RuntimeError, match="without calling"):
                await tg.start(no_start)
            with pytest.raises(OSError, match="bind failed"):
                await tg.start(fails_first)      # not a failure of the group
            out.append(await tg.start(twice))    # value 1; the child fails (group)
        return out

    with pytest.raises(ExceptionGroup) as ei:
        rt.block_on(main())
    assert [type(e) for e in ei.value.exceptions] == [RuntimeError]
    assert "already called" in str(ei.value.exceptions[0])

    async def main2():
        try:
            async with zokio.TaskGroup() as tg:
                v = await tg.start(fails_after)
                await zokio.sleep(5)
        except ExceptionGroup as eg:
            return v, [repr(e) for e in eg.exceptions]

    assert rt.block_on(main2()) == ("ready", ["ValueError('later')"])


@pytest.mark.timeout(20)
def test_cancelling_the_caller_of_start_cancels_the_child(rt):
    log = []

    async def slow_start(*, task_status):
        try:
            await zokio.sleep(5)
            task_status.started()
        except zokio.Cancelled:
            log.append("child cancelled")
            raise

    async def main():
        async with zokio.TaskGroup() as tg:
            with zokio.move_on_after(0.02) as scope:
                await tg.start(slow_start)
        return scope.cancelled_caught

    assert rt.block_on(main()) is True
    assert log == ["child cancelled"]


# ---- closed groups ---------------------------------------------------------------

@pytest.mark.timeout(20)
def test_spawn_into_a_closed_or_unentered_group_is_refused(rt):
    async def main():
        tg = zokio.TaskGroup()
        c1 = _value(1)
        with pytest.raises(RuntimeError, match="not entered"):
            tg.spawn(c1)
        async with tg:
            pass
        c2 = _value(2)
        with pytest.raises(RuntimeError, match="closed"):
            tg.spawn(c2)
        with pytest.raises(RuntimeError, match="only once"):
            async with tg:
                pass
        return c1.cr_frame, c2.cr_frame      # both closed, never run

    assert rt.block_on(main()) == (None, None)


@pytest.mark.timeout(20)
def test_children_may_spawn_siblings_while_the_exit_waits(rt):
    async def child(tg, depth, out):
        out.append(depth)
        if depth < 5:
            await zokio.sleep(0.002)
            tg.spawn(child(tg, depth + 1, out))

    async def main():
        out = []
        async with zokio.TaskGroup() as tg:
            tg.spawn(child(tg, 0, out))
        return out

    assert rt.block_on(main()) == [0, 1, 2, 3, 4, 5]


@pytest.mark.timeout(20)
def test_spawn_into_a_failing_group_is_cancelled(rt):
    async def main():
        try:
            async with zokio.TaskGroup() as tg:
                tg.spawn(_fail("x"))
                await zokio.sleep(0.02)       # interrupted by the failure
        except ExceptionGroup:
            pass
        tg2 = zokio.TaskGroup()
        try:
            async with tg2:
                tg2.spawn(_fail("y"))
                while not tg2._aborted:
                    zokio.current_runtime()
                    await zokio.sleep(0)
        except ExceptionGroup:
            pass
        return "ok"

    assert rt.block_on(main()) == "ok"


_STUCK_SCRIPT = """
import time, zokio

async def stubborn():
    while True:
        try:
            await zokio.sleep(10)
        except zokio.Cancelled:
            pass

async def group_parent():
    async with zokio.TaskGroup() as tg:
        tg.spawn(stubborn())
        await zokio.sleep(10)

async def select_parent():
    await zokio.select(stubborn(), stubborn())

async def joinset_parent():
    async with zokio.JoinSet() as js:
        js.spawn(stubborn())
        await zokio.sleep(10)

rt = zokio.Runtime(threads=2)
hs = [rt.spawn(f()) for f in (group_parent, select_parent, joinset_parent)]
time.sleep(0.1)
rt.shutdown(timeout=0.5)
print("done", [h.done() for h in hs])
"""


@pytest.mark.timeout(60)
def test_shutdown_closes_a_group_stuck_on_a_child_that_ignores_cancellation(tmp_path, util):
    """Shutdown cancels everything; a child that swallows Cancelled keeps
    its group's exit (and select's, and a JoinSet's) waiting until the
    runtime gives up and their coroutines are closed: they let GeneratorExit
    through instead of awaiting again ("coroutine ignored GeneratorExit")."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _STUCK_SCRIPT], cwd=tmp_path,
                       env=util.subprocess_env(), capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    assert "done [True, True, True]" in r.stdout
    assert "GeneratorExit" not in r.stderr, r.stderr


@pytest.mark.timeout(60)
def test_storm_groups_failing_and_cancelled_from_threads(make_runtime):
    """Rounds of nested groups on 8 workers whose children fail at random
    moments while a plain thread cancels the parent tasks at random moments
    and a GC thread collects: each parent ends with an ExceptionGroup or
    Cancelled (or returns), and when it has ended, every child it spawned
    has ended too."""
    import gc
    import random
    rt = make_runtime(8)
    rng = random.Random(99)
    stop = threading.Event()

    def gc_loop():
        while not stop.is_set():
            gc.collect()
            time.sleep(0.003)

    async def leaf(r, spawned):
        spawned.append(zokio._native.current_task())
        await zokio.sleep(r.uniform(0, 0.01))
        if r.random() < 0.05:
            raise ValueError("leaf")
        return 1

    async def mid(r, spawned):
        spawned.append(zokio._native.current_task())
        async with zokio.TaskGroup() as tg:
            for _ in range(r.randrange(1, 6)):
                tg.spawn(leaf(random.Random(r.random()), spawned))
            await zokio.sleep(r.uniform(0, 0.01))

    async def parent(seed, spawned):
        r = random.Random(seed)
        try:
            async with zokio.TaskGroup() as tg:
                for _ in range(r.randrange(1, 5)):
                    tg.spawn(mid(random.Random(r.random()), spawned))
                    tg.spawn(leaf(random.Random(r.random()), spawned))
            return "ok"
        except ExceptionGroup:
            return "errors"

    g = threading.Thread(target=gc_loop)
    g.start()
    outcomes = {"ok": 0, "errors": 0, "cancelled": 0}
    try:
        for _ in range(15):
            spawned_lists = [[] for _ in range(12)]
            hs = [rt.spawn(parent(rng.random(), sp)) for sp in spawned_lists]
            for h in hs:
                if rng.random() < 0.5:
                    time.sleep(rng.uniform(0, 0.004))
                    h.cancel()
            for h, sp in zip(hs, spawned_lists):
                try:
                    outcomes[h.result(timeout=20)] += 1
                except zokio.Cancelled:
                    outcomes["cancelled"] += 1
                # structured: nothing the parent started outlives it
                assert all(c.done() for c in sp)
    finally:
        stop.set()
        g.join()
    assert sum(outcomes.values()) == 15 * 12
    assert outcomes["cancelled"] > 0 and outcomes["ok"] + outcomes["errors"] > 0
