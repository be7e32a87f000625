"""Cancel scopes: CancelScope, move_on_after/at, fail_after/at (zokio.timeout
is fail_after; its own tests are in test_time.py).

Semantics under test (trio's): a cancelled scope interrupts its task at the
current and every later suspension inside it until it exits; its exit
catches exactly its own Cancelled; nested: the outermost cancelled scope
wins; shield defers the task's cancellation and outer scopes' until the
shielded scope exits; the kernel delivers it, from any thread, into a task
suspended in a sleep, a join or an I/O read.
"""
import gc
import math
import random
import threading
import time

import pytest

import zokio
import zokio.net
from zokio import CancelScope, fail_after, fail_at, move_on_after, move_on_at

# Generous: 2 cores shared with other work.
LATE = 1.0


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


# ---- basics -------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_move_on_after_cuts_the_block_short_and_code_after_runs(rt):
    async def main():
        log = []
        t0 = time.monotonic()
        with move_on_after(0.03) as scope:
            await zokio.sleep(5)
            log.append("not reached")
        log.append(("caught", scope.cancelled_caught, scope.cancel_called))
        await zokio.sleep(0.01)           # nothing left over interrupts this
        await zokio.yield_now()
        log.append("after")
        return log, time.monotonic() - t0

    log, dt = rt.block_on(main())
    assert log == [("caught", True, True), "after"]
    assert 0.03 <= dt < 0.03 + LATE
    assert rt.metrics()["timers_pending"] == 0


@pytest.mark.timeout(20)
def test_scope_not_cancelled_leaves_everything_alone(rt):
    async def main():
        async with move_on_after(5) as scope:
            await zokio.sleep(0.01)
            v = 7
        return v, scope.cancelled_caught, scope.cancel_called

    assert rt.block_on(main()) == (7, False, False)
    assert rt.metrics()["timers_pending"] == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["after", "at"])
def test_fail_raises_timeout_error(rt, kind):
    async def main():
        scope = fail_after(0.02) if kind == "after" else fail_at(zokio.monotonic() + 0.02)
        try:
            async with scope:
                await zokio.sleep(5)
        except TimeoutError as e:
            return "timeout", scope.cancelled_caught, e.__suppress_context__
        return "no"

    assert rt.block_on(main()) == ("timeout", True, True)


@pytest.mark.timeout(20)
def test_move_on_at_and_cancel_scope_with_deadline(rt):
    async def main():
        with move_on_at(zokio.monotonic() + 0.02) as a:
            await zokio.sleep(5)
        with CancelScope(deadline=zokio.monotonic() + 0.02) as b:
            await zokio.sleep(5)
        with CancelScope() as c:          # deadline inf: never by itself
            await zokio.sleep(0.03)
        return a.cancelled_caught, b.cancelled_caught, c.cancelled_caught, c.deadline

    assert rt.block_on(main()) == (True, True, False, math.inf)


@pytest.mark.timeout(20)
def test_cancel_inside_the_scope_hits_the_next_suspension(rt):
    async def main():
        log = []
        with CancelScope() as scope:
            scope.cancel()
            log.append("still running")   # no suspension yet: not interrupted
            await zokio.sleep(5)
            log.append("not reached")
        return log, scope.cancelled_caught

    assert rt.block_on(main()) == (["still running"], True)


@pytest.mark.timeout(20)
def test_cancel_before_entry_cancels_on_entry(rt):
    async def main():
        scope = CancelScope()
        scope.cancel()
        with scope:
            await zokio.sleep(5)
        return scope.cancelled_caught

    assert rt.block_on(main()) is True


@pytest.mark.timeout(20)
def test_cancel_after_exit_has_no_effect(rt):
    async def main():
        with CancelScope() as scope:
            await zokio.sleep(0.001)
        scope.cancel()
        await zokio.sleep(0.01)
        return scope.cancelled_caught

    assert rt.block_on(main()) is False


@pytest.mark.timeout(20)
def test_entering_outside_a_task_or_twice_is_refused(rt):
    with pytest.raises(RuntimeError, match="inside a zokio task"):
        with CancelScope():
            pass

    async def main():
        scope = CancelScope()
        with scope:
            pass
        with pytest.raises(RuntimeError, match="already entered"):
            with scope:
                pass
        return "ok"

    assert rt.block_on(main()) == "ok"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad, exc", [("1", TypeError), (True, TypeError),
                                      (float("nan"), ValueError)])
def test_invalid_arguments(bad, exc):
    with pytest.raises(exc):
        move_on_after(bad)
    with pytest.raises(exc):
        fail_after(bad)
    with pytest.raises(exc):
        CancelScope(deadline=bad)


# ---- every suspension inside a cancelled scope is interrupted ---------------------

@pytest.mark.timeout(20)
def test_cancelled_scope_interrupts_every_following_suspension(rt):
    async def main():
        log = []
        with move_on_after(0.01) as scope:
            for i in range(3):
                try:
                    await zokio.sleep(5)
                except zokio.Cancelled:
                    log.append(i)
            try:
                await zokio.yield_now()
            finally:
                log.append("finally")
        log.append(scope.cancelled_caught)
        await zokio.sleep(0.005)          # outside: clean
        return log

    assert rt.block_on(main()) == [0, 1, 2, "finally", True]


@pytest.mark.timeout(20)
def test_cancelled_scope_interrupts_a_join_without_cancelling_the_joined(rt):
    async def child():
        await zokio.sleep(0.1)
        return "child done"

    async def main():
        h = zokio.spawn(child())
        with move_on_after(0.01):
            await h
        return await h

    assert rt.block_on(main()) == "child done"


# ---- nesting ------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_nested_inner_cancel_is_caught_by_inner_only(rt):
    async def main():
        with CancelScope() as outer:
            with CancelScope() as inner:
                inner.cancel()
                await zokio.sleep(5)
            await zokio.sleep(0.01)       # outer still fine
            ok = "outer alive"
        return ok, outer.cancelled_caught, inner.cancelled_caught

    assert rt.block_on(main()) == ("outer alive", False, True)


@pytest.mark.timeout(20)
def test_nested_outer_wins_when_both_are_cancelled(rt):
    async def main():
        log = []
        with CancelScope() as outer:
            with CancelScope() as inner:
                inner.cancel()
                outer.cancel()
                try:
                    await zokio.sleep(5)
                except zokio.Cancelled:
                    log.append("cancelled")
                    raise
            log.append("not reached: outer's Cancelled passes inner's exit")
        return log, outer.cancelled_caught, inner.cancelled_caught

    assert rt.block_on(main()) == (["cancelled"], True, False)


@pytest.mark.timeout(20)
def test_outer_cancel_reaches_code_that_catches_the_inner_one(rt):
    async def main():
        log = []
        with move_on_after(0.05) as outer:
            with move_on_after(0.01) as inner:
                await zokio.sleep(5)
            log.append(("inner", inner.cancelled_caught))
            await zokio.sleep(5)
            log.append("not reached")
        log.append(("outer", outer.cancelled_caught))
        return log

    assert rt.block_on(main()) == [("inner", True), ("outer", True)]


@pytest.mark.timeout(20)
def test_task_cancel_wins_over_a_cancelled_scope(rt):
    """Both pending at the same suspension: the task's own cancellation is
    the outermost and is delivered; the scope's exit lets it through."""
    async def body():
        me = zokio._native.current_task()
        with CancelScope() as scope:
            scope.cancel()
            me.cancel()
            await zokio.sleep(5)
        return "the scope swallowed the task's cancellation"

    h = rt.spawn(body())
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)


@pytest.mark.timeout(20)
def test_exception_group_holding_the_scopes_cancelled_is_split(rt):
    async def main():
        with CancelScope() as scope:
            scope.cancel()
            try:
                await zokio.sleep(5)
            except zokio.Cancelled as c:
                raise BaseExceptionGroup("both", [c, ValueError("real")])
        return "no"

    async def outer():
        try:
            await main()
        except ExceptionGroup as eg:
            return [type(e).__name__ for e in eg.exceptions]

    assert rt.block_on(outer()) == ["ValueError"]

    async def only_ours():
        with CancelScope() as scope:
            scope.cancel()
            try:
                await zokio.sleep(5)
            except zokio.Cancelled as c:
                raise BaseExceptionGroup("one", [c])
        return scope.cancelled_caught

    assert rt.block_on(only_ours()) is True


# ---- shield -------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_shield_defers_join_handle_cancel_until_it_exits(rt):
    log = []

    async def child():
        try:
            with CancelScope(shield=True):
                await zokio.sleep(0.08)
                log.append("shielded sleep finished")
                await zokio.yield_now()
                log.append("still shielded")
            log.append("left the shield")  # no suspension yet
            await zokio.sleep(5)
            log.append("not reached")
        except zokio.Cancelled:
            log.append("cancelled after the shield")
            raise

    async def main():
        h = zokio.spawn(child())
        await zokio.sleep(0.02)
        assert h.cancel()
        with pytest.raises(zokio.Cancelled):
            await h
        return log

    assert rt.block_on(main()) == ["shielded sleep finished", "still shielded",
                                   "left the shield", "cancelled after the shield"]


@pytest.mark.timeout(20)
def test_shield_defers_an_outer_deadline(rt):
    async def main():
        log = []
        t0 = time.monotonic()
        with move_on_after(0.01) as outer:
            with CancelScope(shield=True) as sh:
                await zokio.sleep(0.06)
                log.append(("slept", time.monotonic() - t0 >= 0.06))
            await zokio.sleep(5)
            log.append("not reached")
        log.append((outer.cancelled_caught, sh.cancelled_caught))
        return log

    assert rt.block_on(main()) == [("slept", True), (True, False)]


@pytest.mark.timeout(20)
def test_cancel_of_the_shielded_scope_itself_works(rt):
    async def main():
        with CancelScope(shield=True) as sh:
            sh.cancel()
            await zokio.sleep(5)
        with CancelScope(shield=True) as sh2:
            with move_on_after(0.01) as inner:   # inside the shield: delivered
                await zokio.sleep(5)
        return sh.cancelled_caught, inner.cancelled_caught, sh2.cancelled_caught

    assert rt.block_on(main()) == (True, True, False)


@pytest.mark.timeout(20)
def test_turning_the_shield_off_delivers_what_it_deferred_at_once(rt):
    async def main():
        with move_on_after(0.01) as outer:
            with CancelScope(shield=True) as sh:
                async def unshield():
                    await zokio.sleep(0.05)
                    sh.shield = False
                zokio.spawn(unshield())
                t0 = time.monotonic()
                await zokio.sleep(5)
        return outer.cancelled_caught, time.monotonic() - t0 < 0.05 + LATE

    assert rt.block_on(main()) == (True, True)


@pytest.mark.timeout(20)
def test_shield_protects_an_io_read(rt):
    """The task's cancellation arrives while it reads inside a shield: the
    read is not cancelled (the op keeps waiting) and returns the data."""
    async def reader(a, started):
        with CancelScope(shield=True):
            started.set(None)
            data = await a.read(100)
        try:
            await zokio.sleep(5)
        except zokio.Cancelled:
            return data

    async def main():
        a, b = zokio.net.UnixStream.pair()
        started = zokio.Oneshot()
        h = zokio.spawn(reader(a, started))
        await started
        await zokio.sleep(0.02)
        h.cancel()
        await zokio.sleep(0.02)
        await b.write_all(b"payload")
        r = await h
        a.close(), b.close()
        return r

    assert rt.block_on(main()) == b"payload"


# ---- deadlines move ------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_deadline_moves_earlier_later_and_to_inf(rt):
    async def main():
        log = []
        with CancelScope() as s:
            s.deadline = zokio.monotonic() + 0.02            # inf -> soon
            t0 = time.monotonic()
            await zokio.sleep(5)
        log.append(("earlier", s.cancelled_caught, 0.02 <= time.monotonic() - t0 < 0.02 + LATE))
        with move_on_after(0.02) as s:
            s.deadline += 0.1                                # later
            await zokio.sleep(0.06)
            log.append("outlived the first deadline")
            s.deadline = math.inf                            # never
            await zokio.sleep(0.15)
            log.append("outlived the second")
        log.append(("later", s.cancelled_caught, s.deadline))
        with move_on_after(10) as s:
            s.deadline = zokio.monotonic() - 1               # in the past: at once
            log.append("no suspension yet")
            await zokio.sleep(5)
        log.append(("past", s.cancelled_caught))
        return log

    assert rt.block_on(main()) == [
        ("earlier", True, True), "outlived the first deadline", "outlived the second",
        ("later", False, math.inf), "no suspension yet", ("past", True)]
    assert rt.metrics()["timers_pending"] == 0


@pytest.mark.timeout(20)
def test_deadline_is_read_back_and_settable_before_entry(rt):
    async def main():
        s = CancelScope()
        s.deadline = zokio.monotonic() + 0.01
        d = s.deadline
        with s:
            await zokio.sleep(5)
        return s.cancelled_caught, s.deadline == d

    assert rt.block_on(main()) == (True, True)


@pytest.mark.timeout(20)
def test_deadline_moved_from_another_worker_and_from_a_plain_thread(make_runtime):
    rt = make_runtime(4)

    async def main():
        log = []
        s = move_on_after(0.03)

        async def mover():
            await zokio.sleep(0.01)
            s.deadline = zokio.monotonic() + 0.2           # later, from a task

        zokio.spawn(mover())
        t0 = time.monotonic()
        with s:
            await zokio.sleep(5)
        log.append(("task later", s.cancelled_caught, time.monotonic() - t0 >= 0.2))

        s2 = move_on_after(5)
        threading.Timer(0.02, lambda: setattr(s2, "deadline", zokio.monotonic() + 0.03)).start()
        t0 = time.monotonic()
        with s2:
            await zokio.sleep(5)                           # earlier, future, plain thread
        dt = time.monotonic() - t0
        log.append(("thread earlier", s2.cancelled_caught, 0.045 <= dt < 0.05 + LATE))

        s3 = move_on_after(0.03)
        threading.Timer(0.01, lambda: setattr(s3, "deadline", zokio.monotonic() + 0.15)).start()
        t0 = time.monotonic()
        with s3:
            await zokio.sleep(5)                           # later, plain thread
        log.append(("thread later", s3.cancelled_caught, time.monotonic() - t0 >= 0.15))
        return log

    assert rt.block_on(main()) == [("task later", True, True), ("thread earlier", True, True),
                                   ("thread later", True, True)]


# ---- cancel() from elsewhere --------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("source", ["task", "thread"])
@pytest.mark.parametrize("wait", ["sleep", "read", "join"])
def test_cancel_from_another_worker_or_a_plain_thread(make_runtime, source, wait):
    rt = make_runtime(4)

    async def main():
        a, b = zokio.net.UnixStream.pair()
        scope = CancelScope()
        entered = zokio.Oneshot()

        async def blocker():
            await zokio.sleep(5)

        async def victim():
            with scope:
                entered.set(None)
                if wait == "sleep":
                    await zokio.sleep(5)
                elif wait == "read":
                    await a.read(10)
                else:
                    await zokio.spawn(blocker())
            return scope.cancelled_caught

        h = zokio.spawn(victim())
        await entered
        await zokio.sleep(0.01)
        t0 = time.monotonic()
        if source == "task":
            async def canceller():
                scope.cancel()
            await zokio.spawn(canceller())
        else:
            t = threading.Thread(target=scope.cancel)
            t.start()
            t.join()
        caught = await h
        dt = time.monotonic() - t0
        # the stream is intact: a read after the cancelled one gets the data
        await b.write_all(b"after")
        data = await a.read(10)
        a.close(), b.close()
        return caught, dt < LATE, data

    assert rt.block_on(main()) == (True, True, b"after")


@pytest.mark.timeout(20)
def test_cancelled_scope_cancels_exactly_its_own_work(make_runtime):
    rt = make_runtime(4)

    async def sibling():
        await zokio.sleep(0.05)
        await zokio.yield_now()
        return "sibling ok"

    async def main():
        sib = zokio.spawn(sibling())
        log = []
        with CancelScope() as scope:
            child = zokio.spawn(sibling())    # a child spawned inside the scope
            scope.cancel()
            try:
                await zokio.sleep(5)
            except zokio.Cancelled:
                log.append("body cancelled")
                raise
        log.append("after the scope")
        await zokio.sleep(0.01)
        log.append(await sib)
        log.append(await child)             # tasks are not scoped: it runs on
        return log

    assert rt.block_on(main()) == ["body cancelled", "after the scope", "sibling ok",
                                   "sibling ok"]


# ---- hostile use --------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_storm_scopes_cancelled_from_threads_and_tasks_on_8_workers(make_runtime):
    """200 tasks, each in nested scopes (some shielded) doing sleeps, joins
    and yields, cancelled at random moments from plain threads and from
    other tasks, with a GC thread collecting all along: every task ends,
    every scope reports consistently, nothing leaks a timer."""
    rt = make_runtime(8)
    rng = random.Random(1234)
    n = 200
    scopes = [CancelScope() for _ in range(n)]
    delays = [rng.uniform(0, 0.01) for _ in range(n)]
    shielded = [rng.random() < 0.3 for _ in range(n)]
    stop = threading.Event()

    def gc_loop():
        while not stop.is_set():
            gc.collect()
            time.sleep(0.005)

    def thread_canceller(idx):
        for i in idx:
            time.sleep(delays[i])
            scopes[i].cancel()

    async def worker(i):
        log = []
        with CancelScope() as outer:        # never cancelled: only scopes[i] ends it
            with scopes[i]:
                with CancelScope(shield=shielded[i]):
                    await zokio.sleep(0.002)
                    log.append("shield part")
                while True:                 # until the scope is cancelled
                    await zokio.sleep(0.001)
                    await zokio.yield_now()
            log.append("after inner")
        return scopes[i].cancelled_caught, outer.cancelled_caught, log

    async def task_canceller(idx):
        for i in idx:
            await zokio.sleep(delays[i])
            scopes[i].cancel()

    async def main():
        hs = [zokio.spawn(worker(i)) for i in range(n)]
        zokio.spawn(task_canceller(range(0, n, 2)))
        return [await h for h in hs]

    g = threading.Thread(target=gc_loop)
    c = threading.Thread(target=thread_canceller, args=(range(1, n, 2),))
    g.start(), c.start()
    try:
        out = rt.block_on(main())
    finally:
        stop.set()
        g.join(), c.join()
    for inner, outer, log in out:
        assert inner is True and outer is False
        assert log == ["shield part", "after inner"] or log == ["after inner"]
    # a shielded part always completes, cancelled or not
    for i, (_, _, log) in enumerate(out):
        if shielded[i]:
            assert log[0] == "shield part"
    assert rt.metrics()["timers_pending"] == 0


@pytest.mark.timeout(60)
def test_cancel_racing_the_scopes_exit_never_leaks_past_it(make_runtime):
    """Plain threads cancel scopes at random moments around their exit (and
    after it): a cancel that lands after the exit must not interrupt the
    code after the scope, and one that lands inside is caught by the scope."""
    rt = make_runtime(8)
    current = [None]
    stop = threading.Event()
    rounds = 3000

    def hammer(seed):
        r = random.Random(seed)
        while not stop.is_set():
            s = current[0]
            if s is not None:
                if r.random() < 0.5:
                    time.sleep(r.uniform(0, 0.0002))
                s.cancel()
            else:
                time.sleep(0)

    async def one(i):
        for _ in range(rounds // 20):
            with CancelScope() as s:
                current[0] = s
                await zokio.yield_now()
            current[0] = None
            # whatever the scope did, nothing may reach the code after it
            await zokio.yield_now()
            await zokio.sleep(0)
        return "clean"

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        async def main():
            hs = [zokio.spawn(one(i)) for i in range(20)]
            return [await h for h in hs]
        out = rt.block_on(main())
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert out == ["clean"] * 20


@pytest.mark.timeout(60)
def test_deadline_moved_back_and_forth_from_threads(make_runtime):
    """Threads move the deadlines of sleeping tasks' scopes earlier and later
    at random while the tasks sleep: every scope ends by its last deadline
    (or sooner), nothing crashes, no timer is left behind."""
    rt = make_runtime(8)
    n = 50
    scopes = [CancelScope(deadline=math.inf) for _ in range(n)]
    stop = threading.Event()

    def mover(seed):
        r = random.Random(seed)
        while not stop.is_set():
            s = scopes[r.randrange(n)]
            s.deadline = zokio.monotonic() + r.uniform(-0.001, 0.2)
            time.sleep(r.uniform(0, 0.001))

    async def sleeper(i):
        with scopes[i]:
            await zokio.sleep(30)
        return scopes[i].cancelled_caught

    threads = [threading.Thread(target=mover, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        async def main():
            hs = [zokio.spawn(sleeper(i)) for i in range(n)]
            return [await h for h in hs]
        out = rt.block_on(main())
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert out == [True] * n
    assert rt.metrics()["timers_pending"] == 0


# ---- the native enter/exit and zokio.timeout (native/sync/cancel_scope.c) ------------

@pytest.mark.timeout(20)
def test_native_enter_exit_and_timeout_construction(rt):
    async def main():
        scope = zokio.timeout(5)
        assert isinstance(scope, CancelScope) and scope.deadline == math.inf
        aw = scope.__aenter__()
        assert not hasattr(aw, "cr_frame")  # an already-complete awaitable, not a coroutine
        assert await aw is scope
        assert scope.deadline > zokio.monotonic() + 4  # counted from entry
        assert await scope.__aexit__(None, None, None) is False
        with pytest.raises(RuntimeError, match="entered once"):
            scope.__enter__()
        with pytest.raises(TypeError, match="3 arguments"):
            zokio.timeout(1).__exit__(None)
        for bad, err in (("1", TypeError), (True, TypeError), (float("nan"), ValueError),
                         (None, None), (0, None), (2**70, None)):
            if err is None:
                zokio.timeout(bad)
            else:
                with pytest.raises(err):
                    zokio.timeout(bad)
        async with zokio.timeout(None) as s:
            s.cancel()
            with pytest.raises(zokio.Cancelled):
                await zokio.sleep(1)
        # the block caught the Cancelled itself: the exit has nothing to turn
        # into TimeoutError, and the scope stays marked as cancelled
        assert s.cancel_called and not s.cancelled_caught

    rt.block_on(main())


@pytest.mark.timeout(20)
def test_native_exit_of_a_fired_scope_raises_timeout_error_with_the_seconds(rt):
    async def main():
        with pytest.raises(TimeoutError, match="after 0.02 s"):
            async with zokio.timeout(0.02):
                await zokio.sleep(5)
        with pytest.raises(TimeoutError, match="timed out"):
            async with zokio.timeout(None) as s:
                s.cancel()
                await zokio.sleep(5)
        with CancelScope() as s2:  # the sync form, native too
            s2.cancel()
            await zokio.sleep(5)
        assert s2.cancelled_caught

    rt.block_on(main())
