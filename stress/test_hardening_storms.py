"""The storms that found the kernel defects of issue 5, long and randomized
but bounded in time.

Each storm runs rounds until its time budget is spent (or a round limit is
reached) and asserts exact invariants -- every coroutine run exactly once,
every joiner given a sound exception, every handle finished -- never timing,
except where a bound in time *is* the invariant (timeouts, stranded work),
and then with generous slack.

Knobs (environment):
  ZOKIO_STRESS_SCALE  multiplies every time budget (default 1; e.g. 5 for a
                      soak run);
  ZOKIO_STRESS_SEED   the random seed (default: a fresh one, printed, so a
                      failing run can be replayed with the same draws).

The regression tests in tests/test_hardening.py pin each defect with one
small case; these storms are what found them and what keeps looking.
"""
from __future__ import annotations

import faulthandler
import gc
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import tracemalloc
from pathlib import Path

import pytest

import zokio

SCALE = float(os.environ.get("ZOKIO_STRESS_SCALE", "1") or 1)


def budget(seconds: float) -> float:
    """A storm's time budget, scaled by ZOKIO_STRESS_SCALE."""
    return seconds * SCALE


@pytest.fixture
def rng(request):
    """A seeded random.Random; the seed is printed (shown on failure)."""
    seed = int(os.environ.get("ZOKIO_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: ZOKIO_STRESS_SEED={seed}")
    return random.Random(seed)


def zokio_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("zokio-") and t.is_alive()]


def tb_chain_length(tb, bound=10_000):
    """Entries of a traceback chain; fails on a cycle or an absurd length."""
    seen = set()
    n = 0
    while tb is not None:
        assert id(tb) not in seen, "traceback chain has a cycle"
        seen.add(id(tb))
        n += 1
        assert n < bound, "traceback chain is unbounded"
        tb = tb.tb_next
    return n


def join_all(threads, timeout):
    """Join threads within one overall timeout; returns the names of those
    still alive (after dumping every thread's stack, for the report)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        faulthandler.dump_traceback(all_threads=True)
    return alive


def hog(seconds):
    """CPU-bound Python for `seconds`: the worker running it is stuck."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def subprocess_env():
    env = dict(os.environ)
    parent = str(Path(zokio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHON_GIL", None)
    return env


# ---- 1. one coroutine, many spawners ------------------------------------------

@pytest.mark.timeout(120)
def test_storm_same_coroutine_spawned_from_tasks_and_threads(rng):
    """Lists that hold each coroutine several times, spawned at once (after a
    threading.Barrier) by plain threads and by tasks on 8 workers: each
    coroutine is spawned exactly once and runs exactly once; every other
    spawn raises RuntimeError naming the mistake."""
    rt = zokio.Runtime(threads=8)
    stop_at = time.monotonic() + budget(20)
    rounds = attempts = refused = 0
    try:
        while time.monotonic() < stop_at and rounds < 10_000:
            k = rng.randrange(2, 48)
            copies = rng.randrange(2, 5)
            n_threads = rng.randrange(1, 5)
            n_tasks = rng.randrange(1, 5)
            runs = [[] for _ in range(k)]   # list.append: atomic on 3.13t

            async def body(i, kind):
                runs[i].append(threading.get_ident())
                if kind == 1:
                    await zokio.yield_now()
                elif kind == 2:
                    await zokio.sleep(0.001)
                elif kind == 3:
                    async def child():
                        await zokio.yield_now()
                        return i
                    assert await zokio.spawn(child()) == i
                return i

            coros = [body(i, rng.randrange(4)) for i in range(k)]
            index = {id(c): i for i, c in enumerate(coros)}
            plans = []
            for _ in range(n_threads + n_tasks):
                lst = coros * copies
                rng.shuffle(lst)
                plans.append(lst)
            barrier = threading.Barrier(n_threads + n_tasks, timeout=30)

            def attempt_all(lst, spawn):
                barrier.wait()
                out = []
                for c in lst:
                    try:
                        out.append((index[id(c)], spawn(c)))
                    except RuntimeError as e:
                        assert "only once" in str(e), str(e)
                        out.append((index[id(c)], None))
                return out

            async def task_spawner(lst):
                # blocks its worker in barrier.wait(): the spawns start together
                return attempt_all(lst, zokio.spawn)

            thread_out = [None] * n_threads

            def thread_spawner(j):
                thread_out[j] = attempt_all(plans[j], rt.spawn)

            spawner_tasks = [rt.spawn(task_spawner(plans[n_threads + j])) for j in range(n_tasks)]
            ts = [threading.Thread(target=thread_spawner, args=(j,)) for j in range(n_threads)]
            for t in ts:
                t.start()
            assert not join_all(ts, 60), "a plain spawner thread hangs"
            outs = thread_out + [h.result(timeout=60) for h in spawner_tasks]

            winners = [[] for _ in range(k)]
            for out in outs:
                assert len(out) == k * copies
                for i, h in out:
                    attempts += 1
                    if h is None:
                        refused += 1
                    else:
                        winners[i].append(h)
            assert [len(w) for w in winners] == [1] * k, "a coroutine was spawned twice (or never)"
            for i, (h,) in enumerate(winners):
                assert h.result(timeout=30) == i
            assert [len(r) for r in runs] == [1] * k, "a coroutine body ran twice"
            rounds += 1
    finally:
        rt.shutdown(timeout=10)
    print(f"storm 1a: {rounds} rounds, {attempts} spawn attempts, {refused} refused")
    assert rounds >= 20
    assert not zokio_threads(), zokio_threads()


# The same storm with tasks that `await` a coroutine another task owns.  It
# runs in a child process so that a crash fails the test instead of ending
# the run: it crashed 3.13t within seconds while a task held its coroutine
# only through the frame state (an await that passed GET_AWAITABLE while the
# owner ran the frame could enter it at SEND in the instant the owner's
# yield stored SUSPENDED).  The owned-coroutine type closed it.
_AWAIT_OWNED = textwrap.dedent("""
    import json, random, sys, time, zokio
    seed, seconds = int(sys.argv[1]), float(sys.argv[2])
    rng = random.Random(seed)
    stats = {"rounds": 0, "refusals": 0, "ran_it": 0, "owner_bad": []}

    async def owned(i, steps):
        for _ in range(steps):
            await zokio.yield_now()
        return i

    async def intruder(c, owner, spin, delay):
        for _ in range(delay):
            await zokio.yield_now()
        refusals = 0
        while True:
            try:
                await c
                return refusals, True          # it ran someone else's coroutine
            except (RuntimeError, ValueError):
                refusals += 1                   # "already executing" / "already awaited"
            if not spin or owner.done():
                return refusals, False
            await zokio.yield_now()

    async def main():
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            batch = []
            for i in range(rng.randrange(1, 8)):
                c = owned(i, rng.randrange(1, 60))
                h = zokio.spawn(c)
                ins = [zokio.spawn(intruder(c, h, rng.random() < 0.5, rng.randrange(0, 8)))
                       for _ in range(rng.randrange(1, 5))]
                batch.append((i, h, ins))
            for i, h, ins in batch:
                try:
                    v = await h
                    if v != i:
                        stats["owner_bad"].append(repr(v))
                except BaseException as e:
                    stats["owner_bad"].append(repr(e))
                for x in ins:
                    refusals, ran = await x
                    stats["refusals"] += refusals
                    stats["ran_it"] += ran
            stats["rounds"] += 1

    with zokio.Runtime(threads=8) as rt:
        rt.block_on(main())
    print(json.dumps(stats))
""")


@pytest.mark.timeout(120)
def test_storm_awaiting_a_coroutine_another_task_owns(rng):
    seed = rng.randrange(2**32)
    proc = subprocess.run([sys.executable, "-c", _AWAIT_OWNED, str(seed), str(budget(15))],
                          env=subprocess_env(), capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, (
        f"child died with {proc.returncode} (seed {seed}): {proc.stderr[-1500:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print("storm 1b:", stats)
    assert stats["rounds"] >= 10
    assert stats["ran_it"] == 0, "an awaiter ran a coroutine another task owns"
    assert stats["owner_bad"] == [], "an owner did not finish normally"
    assert stats["refusals"] > 0


# ---- 2. one failed handle, many joiners ---------------------------------------

class AppError(Exception):
    def __init__(self, code, detail=""):
        super().__init__(code, detail)
        self.code = code


def make_failure(kind, i):
    """(exception to raise, checker of what a joiner got)."""
    if kind == 0:
        return ValueError("bad", i), lambda e: type(e) is ValueError and e.args == ("bad", i)
    if kind == 1:
        return AppError(i, "x" * (i % 7)), lambda e: (
            type(e) is AppError and e.args == (i, "x" * (i % 7)) and e.code == i)
    if kind == 2:
        exc = FileNotFoundError(2, "No such file", f"/nope/{i}")
        return exc, lambda e: (type(e) is FileNotFoundError and e.errno == 2
                               and e.filename == f"/nope/{i}")
    if kind == 3:
        exc = KeyError(i)
        exc.add_note(f"note {i}")
        return exc, lambda e: type(e) is KeyError and e.args == (i,) and e.__notes__ == [f"note {i}"]
    exc = ExceptionGroup(f"group {i}", [ValueError(i), TypeError(i)])
    return exc, lambda e: (type(e) is ExceptionGroup and e.message == f"group {i}"
                           and [type(x) for x in e.exceptions] == [ValueError, TypeError])


N_KINDS = 5


async def _failing(kind, i, depth, gate):
    async def frame(d):
        if d == 0:
            await gate
            exc, _ = make_failure(kind, i)
            if kind == 1 and i % 2:
                raise exc from OSError("cause")
            raise exc
        await frame(d - 1)
    await frame(depth)


def tb_names(tb):
    """The function names of a traceback chain, outermost first."""
    out = []
    while tb is not None:
        out.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return out


def check_joiner_exception(e, checker, expect_text):
    assert checker(e), f"wrong exception: {e!r}"
    tb_chain_length(e.__traceback__)
    for x in (e.__cause__, e.__context__):
        if x is not None:
            tb_chain_length(x.__traceback__)
    text = "".join(traceback.format_exception(e))
    assert expect_text in text, text[-800:]


@pytest.mark.timeout(120)
def test_storm_failed_handles_shared_by_many_joiners(rng):
    """Failed tasks, each awaited by 16-32 tasks on 8 workers and by plain
    threads through result() at once: every joiner gets the right exception
    whose traceback chain is finite and acyclic and formats with the
    raising frame."""
    rt = zokio.Runtime(threads=8)
    stop_at = time.monotonic() + budget(20)
    rounds = joins = 0
    try:
        while time.monotonic() < stop_at and rounds < 500:
            n_failed = rng.randrange(2, 12)
            opener = zokio.Oneshot()

            async def wait_open():
                await opener

            gate = rt.spawn(wait_open())   # a handle: many tasks may await it
            plans = [(rng.randrange(N_KINDS), i, rng.randrange(0, 6)) for i in range(n_failed)]
            failed = [rt.spawn(_failing(kind, i, depth, gate)) for kind, i, depth in plans]
            n_joiners = rng.randrange(16, 33)
            n_threads = rng.randrange(1, 5)

            async def joiner(h, start):
                await start
                try:
                    await h
                except BaseException as e:  # noqa: BLE001 -- checked below
                    return e, tb_names(e.__traceback__)   # as this joiner saw it
                return None, None

            async def fan_out():
                out = []
                for h in failed:
                    js = [zokio.spawn(joiner(h, gate)) for _ in range(n_joiners)]
                    out.append(js)
                # every joiner is parked on the gate, then released together
                opener.set(None)
                return [[await j for j in js] for js in out]

            thread_out = [[] for _ in range(n_threads)]
            ready = threading.Barrier(n_threads + 1, timeout=30)

            def waiter(j):
                ready.wait()
                for h in failed:
                    try:
                        h.result(timeout=30)
                        thread_out[j].append((None, None))
                    except BaseException as e:  # noqa: BLE001
                        thread_out[j].append((e, tb_names(e.__traceback__)))

            ts = [threading.Thread(target=waiter, args=(j,)) for j in range(n_threads)]
            for t in ts:
                t.start()
            ready.wait()          # plain threads block in result() as the gate opens
            task_out = rt.block_on(fan_out())
            assert not join_all(ts, 60)
            for (kind, i, depth), excs in zip(plans, task_out):
                _, checker = make_failure(kind, i)
                task_frames = ["_failing"] + ["frame"] * (depth + 1)
                got = [(e, names, "joiner") for e, names in excs] + [
                    (*tout[i], "waiter") for tout in thread_out]
                for e, names, catcher in got:
                    assert e is not None, "a joiner of a failed task got a value"
                    check_joiner_exception(e, checker, "raise exc")
                    joins += 1
                    # the joiner's own frame, then the task's: nobody else's
                    assert names == [catcher] + task_frames, f"{catcher} saw {names}"
                # one object must never unwind on two threads at once: every
                # joiner but the first gets its own copy
                assert len({id(e) for e, _, _ in got}) == len(got)
            rounds += 1
    finally:
        rt.shutdown(timeout=10)
    print(f"storm 2a: {rounds} rounds, {joins} joins of failed handles")
    assert rounds >= 10
    assert not zokio_threads(), zokio_threads()


# An exception type that cannot be rebuilt from its args (here a keyword-only
# argument in __new__) is not copied: raise_task_exception falls back to
# raising the one object to every joiner.  Joiners on several workers then
# unwind it at once.  In a child process: it corrupts memory (a double free
# that later hands out a thread's TCB as a tuple; segfault within seconds).
_NON_COPYABLE = textwrap.dedent("""
    import json, sys, threading, time, zokio
    seconds = float(sys.argv[1])

    class Strict(Exception):
        def __new__(cls, code, *, tag):
            self = super().__new__(cls, code)
            self.tag = tag
            return self

        def __init__(self, code, *, tag):
            super().__init__(code)

    async def failing():
        await zokio.sleep(0.001)
        raise Strict(7, tag="t")

    def names(tb):
        out = []
        while tb is not None:
            out.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        return out

    stats = {"joins": 0, "wrong": 0, "examples": []}

    def record(e, catcher):
        ok = (type(e) is Strict and e.args == (7,) and e.tag == "t"
              and names(e.__traceback__) == [catcher, "failing"])
        stats["joins"] += 1
        if not ok:
            stats["wrong"] += 1
            if len(stats["examples"]) < 5:
                stats["examples"].append(names(e.__traceback__))

    with zokio.Runtime(threads=8) as rt:
        h = rt.spawn(failing())
        stop_at = time.monotonic() + seconds

        async def rejoin():
            while time.monotonic() < stop_at:
                for _ in range(100):
                    try:
                        await h
                    except Strict as e:
                        record(e, "rejoin")

        def waiter():
            while time.monotonic() < stop_at:
                try:
                    h.result(timeout=30)
                except Strict as e:
                    record(e, "waiter")

        async def main():
            for hh in [zokio.spawn(rejoin()) for _ in range(16)]:
                await hh

        ts = [threading.Thread(target=waiter) for _ in range(2)]
        for t in ts:
            t.start()
        rt.block_on(main())
        for t in ts:
            t.join()
    print(json.dumps(stats))
""")


@pytest.mark.timeout(120)
def test_storm_failed_handle_with_a_non_copyable_exception():
    proc = subprocess.run([sys.executable, "-c", _NON_COPYABLE, str(budget(10))],
                          env=subprocess_env(), capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-1500:]}"
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print("storm 2c:", stats)
    assert stats["joins"] > 1000
    assert stats["wrong"] == 0, "joiners saw another joiner's traceback entries"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", [1, 4], ids=["AppError", "ExceptionGroup"])
def test_storm_reawaiting_a_failed_handle_keeps_memory_flat(kind):
    """100k awaits of one failed handle, by 8 tasks on 8 workers and by two
    plain threads through result(): the traceback each joiner gets does not
    grow, and neither does traced memory."""
    rt = zokio.Runtime(threads=8)
    _, checker = make_failure(kind, 7)
    gate = zokio.Oneshot()
    gate.set(None)
    h = rt.spawn(_failing(kind, 7, 3, gate))
    warmed = threading.Event()
    n_tasks, per_task, per_thread = 8, 12_500, 2_000
    warm = 500

    async def rejoin(k, lengths):
        for n in range(per_task):
            try:
                await h
            except (AppError, ExceptionGroup) as e:
                if n % 997 == 0:
                    assert checker(e), repr(e)
                    lengths.append(tb_chain_length(e.__traceback__))
            if k == 0 and n == warm:
                warmed.set()              # the main thread takes the baseline now

    def rejoin_thread(lengths):
        for n in range(per_thread):
            try:
                h.result(timeout=30)
            except (AppError, ExceptionGroup) as e:
                if n % 97 == 0:
                    lengths.append(tb_chain_length(e.__traceback__))

    try:
        with pytest.raises((AppError, ExceptionGroup)):
            h.result(timeout=30)
        gc.collect()
        tracemalloc.start()
        lengths = [[] for _ in range(n_tasks + 2)]

        async def main():
            hs = [zokio.spawn(rejoin(k, lengths[k])) for k in range(n_tasks)]
            for hh in hs:
                await hh

        ts = [threading.Thread(target=rejoin_thread, args=(lengths[n_tasks + j],)) for j in range(2)]
        for t in ts:
            t.start()
        main_h = rt.spawn(main())
        # the baseline: once task 0 is past its warm-up awaits, with every
        # task still going (their frames are live at both measurements)
        assert warmed.wait(60)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        main_h.result(timeout=120)
        assert not join_all(ts, 60)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    finally:
        rt.shutdown(timeout=10)
    growth = after - before
    awaits = n_tasks * per_task + 2 * per_thread
    print(f"storm 2b ({kind=}): {awaits} awaits, traced memory {before} -> {after} B "
          f"({growth / awaits:.2f} B per await); tb lengths {sorted({x for ls in lengths for x in ls})}")
    flat = [x for ls in lengths for x in ls]
    assert flat and max(flat) <= 20, "a joiner's traceback grew"
    # The defect was ~125 B per await (25 MB over 200k); allow 1 MiB of noise.
    assert growth < 1 << 20, f"memory grew by {growth} B over {awaits} awaits"


# ---- 3. metrics() against the blocking pool and the GC ------------------------

@pytest.mark.timeout(120)
def test_storm_metrics_polled_while_blocking_jobs_run_and_gc_collects(rng):
    """Plain threads poll metrics() while tasks keep spawn_blocking jobs
    running (the pool starting and retiring threads: keep-alive 1 ms), jobs
    and tasks call metrics() and gc.collect() too, and other threads run
    gc.collect() in a loop (each one a stop-the-world pause on 3.13t).  It
    must all finish: no deadlock, every job's outcome delivered."""
    rt = zokio.Runtime(threads=rng.choice([2, 4]), blocking_threads=rng.choice([2, 8, 64]),
                       blocking_keep_alive=0.001)
    stop = threading.Event()
    seconds = budget(15)
    polls = []
    collections_ = []

    def job(i, mode):
        if mode == 0:
            return i
        if mode == 1:
            gc.collect()
            return i
        if mode == 2:
            assert rt.metrics()["workers"] == rt.threads
            return i
        if mode == 3:
            time.sleep(0.0005)
            return i
        raise AppError(i)

    async def driver(seed):
        r = random.Random(seed)
        done = 0
        while not stop.is_set():
            batch = [(i, r.randrange(5)) for i in range(r.randrange(1, 12))]
            hs = [zokio.spawn_blocking(job, i, mode) for i, mode in batch]
            for (i, mode), h in zip(batch, hs):
                if mode == 4:
                    with pytest.raises(AppError):
                        await h
                else:
                    assert await h == i
                done += 1
            if r.random() < 0.1:
                rt.metrics()                  # from a worker, too
            if r.random() < 0.02:
                gc.collect()
        return done

    def poller():
        n = 0
        while not stop.is_set():
            m = rt.metrics()
            assert m["blocking_threads"] >= 0 and m["tasks_live"] >= 0
            n += 1
        polls.append(n)

    def collector(seed):
        # back to back, or paced so that the pool and the workers get
        # through some work between the stop-the-world pauses
        r = random.Random(seed)
        n = 0
        while not stop.is_set():
            gc.collect()
            n += 1
            pause = r.choice((0, 0, 0.0002, 0.001, 0.003))
            if pause:
                stop.wait(pause)
        collections_.append(n)

    drivers = [rt.spawn(driver(rng.randrange(2**32))) for _ in range(rng.randrange(2, 6))]
    ts = ([threading.Thread(target=poller, name=f"poller-{j}") for j in range(3)]
          + [threading.Thread(target=collector, args=(rng.randrange(2**32),), name=f"collector-{j}")
             for j in range(2)])
    for t in ts:
        t.start()
    stop.wait(seconds)
    stop.set()
    alive = join_all(ts, 60)
    jobs = [h.result(timeout=60) for h in drivers] if not alive else []
    assert not alive, f"threads stuck (deadlock?): {alive}"
    m = rt.metrics()
    rt.shutdown(timeout=30)
    print(f"storm 3: {sum(jobs)} blocking jobs, {sum(polls)} metrics() polls, "
          f"{sum(collections_)} gc.collect() calls from plain threads, {m['polls']} task polls")
    assert len(polls) == 3 and min(polls) > 0, polls
    assert len(collections_) == 2 and min(collections_) > 0, collections_
    assert sum(jobs) > 50, jobs
    assert not zokio_threads(), zokio_threads()


# ---- 4. spawn from plain threads racing shutdown() ----------------------------

async def _forever():
    while True:
        await zokio.sleep(0.001)


async def _short():
    await zokio.yield_now()
    return 1


async def _parent(children):
    hs = []
    try:
        for _ in range(3):
            h = zokio.spawn(_short())
            children.append(h)
            hs.append(h)
    except RuntimeError as e:          # the runtime began shutting down
        assert "shut down" in str(e), str(e)
    for h in hs:
        await h
    return 2


async def _unwinds_with_awaits():
    try:
        await zokio.sleep(10)
    finally:
        await zokio.sleep(0.001)
        await zokio.yield_now()


async def _blocking():
    try:
        return await zokio.spawn_blocking(time.sleep, 0.001)
    except RuntimeError as e:          # the runtime began shutting down
        assert "shut down" in str(e), str(e)


async def _parked(cell):
    return await cell


@pytest.mark.timeout(170)
def test_storm_spawn_from_plain_threads_racing_shutdown(rng):
    """Plain threads spawn a mix of tasks (some spawning children, some
    unwinding with awaits, some in the blocking pool) in a loop while the
    runtime shuts down after a random number of spawns: shutdown() returns,
    every handle spawn returned is done (finished or cancelled), every later
    spawn raises RuntimeError, and no zokio thread is left."""
    stop_at = time.monotonic() + budget(25)
    rounds = spawned = cancelled = 0
    slowest = 0.0
    while time.monotonic() < stop_at and rounds < 400:
        workers = rng.choice([1, 2, 4, 8])
        n_spawners = rng.randrange(1, 7)
        trigger = rng.choice([0, 1, 10, 100, 1000, rng.randrange(1, 5000)])
        timeout = rng.choice([None, 2.0, 20.0])
        rt = zokio.Runtime(threads=workers)
        mine = [[] for _ in range(n_spawners)]
        children = []
        cells = []          # Oneshots that are never set: only cancel ends _parked
        refused = [False] * n_spawners
        counter_lock = threading.Lock()
        total = [0]
        triggered = threading.Event()
        if trigger == 0:
            triggered.set()
        go = threading.Barrier(n_spawners + 1, timeout=30)

        def spawner(j, seed):
            r = random.Random(seed)
            go.wait()
            while True:
                kind = r.randrange(6)
                if kind == 0:
                    coro = _forever()
                elif kind == 1:
                    coro = _short()
                elif kind == 2:
                    coro = _parent(children)
                elif kind == 3:
                    coro = _unwinds_with_awaits()
                elif kind == 4:
                    coro = _blocking()
                else:
                    cell = zokio.Oneshot()
                    cells.append(cell)
                    coro = _parked(cell)
                try:
                    h = rt.spawn(coro)
                except RuntimeError as e:
                    assert "shut down" in str(e), str(e)
                    refused[j] = True
                    return
                mine[j].append(h)
                with counter_lock:
                    total[0] += 1
                    if total[0] >= trigger:
                        triggered.set()

        ts = [threading.Thread(target=spawner, args=(j, rng.randrange(2**32)))
              for j in range(n_spawners)]
        for t in ts:
            t.start()
        go.wait()
        assert triggered.wait(60)
        # shutdown() on a helper thread, so that one that never returns is
        # reported (with every stack) instead of hanging the suite
        t0 = time.monotonic()
        closer = threading.Thread(target=rt.shutdown, args=(timeout,), name="closer")
        closer.start()
        assert not join_all([closer], 60), f"shutdown({timeout}) did not return"
        slowest = max(slowest, time.monotonic() - t0)
        assert not join_all(ts, 30), "a spawner neither spawned nor got RuntimeError"
        assert all(refused)
        with pytest.raises(RuntimeError, match="shut down"):
            rt.spawn(_short())
        handles = [h for m in mine for h in m] + children
        not_done = [h for h in handles if not h.done()]
        assert not not_done, f"{len(not_done)} of {len(handles)} handles never finished"
        for h in handles:
            if h.cancelled():
                cancelled += 1
            else:
                assert h.exception() is None, repr(h.exception())
        assert not zokio_threads(), zokio_threads()
        spawned += len(handles)
        rounds += 1
    print(f"storm 4: {rounds} rounds, {spawned} tasks spawned ({cancelled} cancelled by "
          f"shutdown), slowest shutdown {slowest:.2f} s")
    assert rounds >= 20


# ---- 5. nested timeouts under load ----------------------------------------------

def _block_worker(r, lo, hi):
    """Block the calling worker: time.sleep or a busy loop, lo..hi s."""
    d = r.uniform(lo, hi)
    if r.random() < 0.5:
        time.sleep(d)
    else:
        hog(d)


def _nested_plan(r):
    depth = r.randrange(2, 5)
    levels = []
    used = set()
    for k in range(depth):
        while True:        # distinct seconds: the TimeoutError message names its scope
            s = round(r.uniform(0.005, 0.08), 6)
            if s not in used:
                used.add(s)
                break
        levels.append({
            "seconds": s,
            # block the worker inside the scope before going deeper/awaiting
            "hog": r.uniform(0.002, 0.05) if r.random() < 0.25 else 0.0,
            # and again after catching the inner scope's TimeoutError
            "hog_after_catch": r.uniform(0.002, 0.05) if r.random() < 0.2 else 0.0,
        })
    return levels


async def _nested(levels, seed, ev):
    """Enter len(levels) nested zokio.timeout() scopes.  Each body catches
    the TimeoutError of the scope just inside it and awaits again (a long
    sleep), so only a deadline can end it.  `ev` records what happened."""
    r = random.Random(seed)
    mono = time.monotonic

    async def level(k):
        lv = levels[k]
        lo = mono() + lv["seconds"]
        try:
            async with zokio.timeout(lv["seconds"]):
                # upper bound of when this deadline is due (1 ms timer ticks)
                ev.append(("enter", k, lo, mono() + lv["seconds"] + 0.001))
                if lv["hog"]:
                    _block_worker(r, lv["hog"], lv["hog"])
                    ev.append(("hog_end", k, mono()))
                if k + 1 < len(levels):
                    try:
                        await level(k + 1)
                    except TimeoutError as e:
                        ev.append(("caught", k + 1, str(e), mono()))
                    if lv["hog_after_catch"]:
                        _block_worker(r, lv["hog_after_catch"], lv["hog_after_catch"])
                        ev.append(("hog_end", k, mono()))
                ev.append(("suspend", k, mono()))
                await zokio.sleep(10)
                ev.append(("slept_through", k, mono()))   # a deadline was lost
        finally:
            ev.append(("exit", k, mono()))

    try:
        await level(0)
    except TimeoutError as e:
        ev.append(("caught", 0, str(e), mono()))
        return "timed out"
    return "returned"


def _check_nested(levels, ev, slack, due_margin, stats):
    """The invariants of one _nested() run; updates `stats`.

    `slack`: how long after its effective deadline (or after a worker-
    blocking stretch inside it) a block may end: the wait in the run queue
    behind the hogs.  `due_margin`: an outer scope whose deadline passed this
    long before the task suspended must be the one reported, not an inner
    one (below the margin its timer may not have been fired yet: timers are
    fired by their worker, or by the monitor within a few 2 ms ticks when
    that worker is stuck)."""
    msg = {k: f"timed out after {lv['seconds']} s" for k, lv in enumerate(levels)}
    assert not [e for e in ev if e[0] == "slept_through"], "a deadline was lost"
    caught = [e for e in ev if e[0] == "caught"]
    assert caught and caught[-1][1] == 0, "the outermost scope did not end it"
    for _, j, text, _ in caught:
        assert text == msg[j], f"scope {j} reported {text!r}"
    enter_hi, enter_lo, armed = {}, {}, set()
    hog_end = {}
    for e in ev:
        kind, k = e[0], e[1]
        if kind == "enter":
            enter_lo[k], enter_hi[k] = e[2], e[3]
            armed.add(k)
        elif kind == "hog_end":
            for i in armed:                 # a hog inside block i (or deeper)
                hog_end[i] = e[2]
        elif kind == "suspend":
            last_suspend = e[2]
        elif kind == "caught" and k > 0:
            # scope k's TimeoutError reached level k-1's body: was an outer
            # scope already past its deadline when the task last suspended?
            outer_due = [i for i in armed if i < k and enter_hi[i] <= last_suspend]
            if outer_due:
                lag = last_suspend - min(enter_hi[i] for i in outer_due)
                stats["inner_reported_after_outer_due"].append(round(lag * 1e3, 2))
                assert lag < due_margin, (
                    f"scope {k} reported, but outer scope(s) {outer_due} had been due for "
                    f"{lag * 1e3:.1f} ms when the task suspended")
        elif kind == "exit":
            # block k ends by its effective deadline (its own or an outer
            # one's), or by the end of a worker-blocking stretch inside it
            eff = min(enter_hi[i] for i in armed if i <= k)
            end_of_work = max(eff, hog_end.get(k, 0.0))
            over = e[2] - end_of_work
            stats["overshoot"].append(over)
            assert over <= slack, f"block {k} ended {over:.3f} s after its deadline"
            armed.discard(k)
            hog_end.pop(k, None)


@pytest.mark.timeout(150)
def test_storm_nested_timeouts_under_load(rng):
    """Nested zokio.timeout() scopes (depth 2-4, random deadlines) whose
    bodies catch the inner TimeoutError and await again, while hog tasks
    block the workers (time.sleep and busy loops) so that several deadlines
    pass before a task's next poll: every block ends by its effective
    deadline (+ generous slack: the queue behind the hogs), the outermost
    scope always ends the run, no deadline is lost."""
    workers = rng.choice([2, 3, 4])
    rt = zokio.Runtime(threads=workers)
    # Generous.  A task whose deadline passed waits behind the hogs, and
    # more: the monitor fires a stuck worker's timers into the inject queue,
    # which a worker whose local queue never empties (the load tasks yield
    # to each other) looks at only every 61 polls -- ~1 s when polls last
    # 20 ms.  That is what the p99 printed below shows (about 1 s at
    # threads=2); tighten the slack when it is fixed.
    slack, due_margin = 5.0, 0.1
    stats = {"inner_reported_after_outer_due": [], "overshoot": []}
    stop_at = time.monotonic() + budget(25)
    rounds = runs = 0
    try:
        while time.monotonic() < stop_at and rounds < 300:
            n_load = rng.randrange(1, workers + 1)
            n_nested = rng.randrange(4, 16)
            plans = [(_nested_plan(rng), rng.randrange(2**32), []) for _ in range(n_nested)]
            done = zokio.Oneshot()
            load_seeds = [rng.randrange(2**32) for _ in range(n_load)]

            async def load(seed, finished):
                r = random.Random(seed)
                while not finished.done():
                    _block_worker(r, 0.002, 0.04)
                    await zokio.yield_now()

            async def main():
                finished = zokio.spawn(done_waiter())
                hogs = [zokio.spawn(load(s, finished)) for s in load_seeds]
                hs = [zokio.spawn(_nested(levels, seed, ev)) for levels, seed, ev in plans]
                out = [await h for h in hs]
                done.set(None)
                for h in hogs:
                    await h
                return out

            async def done_waiter():
                await done

            out = rt.block_on(main())
            assert out == ["timed out"] * n_nested
            for levels, _, ev in plans:
                _check_nested(levels, ev, slack, due_margin, stats)
                runs += 1
            rounds += 1
    finally:
        rt.shutdown(timeout=10)
    lags = sorted(stats["inner_reported_after_outer_due"])
    over = sorted(stats["overshoot"])
    print(f"storm 5 (threads={workers}): {rounds} rounds, {runs} nested runs, {len(over)} blocks; "
          f"end after effective deadline p50 {over[len(over) // 2] * 1e3:.1f} ms, "
          f"p99 {over[int(len(over) * 0.99)] * 1e3:.1f} ms, max {over[-1] * 1e3:.1f} ms; "
          f"inner scope reported although an outer one was already due when the task "
          f"suspended: {len(lags)} times, by (ms) {lags[-10:]}")
    assert rounds >= 10


# ---- 6. stuck workers strand nothing ------------------------------------------

@pytest.mark.timeout(150)
def test_storm_stuck_workers_strand_no_timer_and_no_lifo_task(rng):
    """Tasks that run one CPU-bound poll of 50-300 ms after leaving work on
    their worker -- a sleep filed on its timer wheel, a child in its LIFO
    slot, children in its local queue -- while other tasks sleep and spawn
    children.  Each hog keeps its poll going until its own stranded work and
    all the other tasks are done (capped at 10 s): every sleep ends and
    every child runs while the hogs still run, so nothing waited for a hog
    to finish, and the monitor reports rescues."""
    workers = rng.choice([2, 3, 4])
    rt = zokio.Runtime(threads=workers)
    cap = 10.0
    stop_at = time.monotonic() + budget(25)
    rounds = hog_runs = 0
    child_delays, sleep_lateness, extensions = [], [], []
    round_started = [time.monotonic()]
    finished = threading.Event()

    def watchdog():
        # diagnostics only: a round normally takes well under a second
        while not finished.wait(0.25):
            if time.monotonic() - round_started[0] > 3.0:
                print(f"storm 6: round {rounds} running for 3 s; metrics: {rt.metrics()}",
                      file=sys.stderr, flush=True)
                faulthandler.dump_traceback(all_threads=True)
                return

    threading.Thread(target=watchdog, name="storm6-watchdog", daemon=True).start()
    try:
        while time.monotonic() < stop_at and rounds < 200:
            round_started[0] = time.monotonic()
            n_hogs = rng.randrange(1, workers)        # at least one worker stays free
            n_others = rng.randrange(2, 20)
            others_done = threading.Event()
            hog_seeds = [rng.randrange(2**32) for _ in range(n_hogs)]
            other_seeds = [rng.randrange(2**32) for _ in range(n_others)]
            report = []                                # (hog ok, extension) per hog

            async def stranded_child(spawned_at, hog_done, mine):
                child_delays.append(time.monotonic() - spawned_at)
                mine.append(not hog_done.is_set())

            async def stranded_sleeper(d, hog_done, mine):
                deadline = time.monotonic() + d
                await zokio.sleep(d)
                sleep_lateness.append(time.monotonic() - deadline)
                mine.append(not hog_done.is_set())

            async def hog_task(seed):
                r = random.Random(seed)
                hog_done = threading.Event()
                mine = []                              # one entry per stranded item that ran
                variant = r.randrange(4)
                expected = 0
                if variant in (0, 3):                  # a timer on this worker's wheel
                    zokio.spawn(stranded_sleeper(r.uniform(0.001, 0.02), hog_done, mine))
                    expected += 1
                    await zokio.yield_now()            # the sleeper runs here, files its timer
                if variant in (1, 3):                  # a child in the LIFO slot
                    zokio.spawn(stranded_child(time.monotonic(), hog_done, mine))
                    expected += 1
                if variant == 2:                       # LIFO slot + local queue
                    for _ in range(r.randrange(2, 6)):
                        zokio.spawn(stranded_child(time.monotonic(), hog_done, mine))
                        expected += 1
                d = r.uniform(0.05, 0.3)
                t0 = time.perf_counter()
                end = t0 + d
                while True:                            # one poll: no await in here
                    now = time.perf_counter()
                    if now >= end and len(mine) == expected and others_done.is_set():
                        break
                    if now - t0 > cap:
                        break
                hog_done.set()
                report.append((len(mine) == expected and all(mine) and others_done.is_set(),
                               max(0.0, time.perf_counter() - end)))

            async def other(seed):
                r = random.Random(seed)
                total = 0
                for _ in range(r.randrange(1, 5)):
                    d = r.choice((0, 0.001, r.uniform(0.001, 0.03)))
                    deadline = time.monotonic() + d
                    await zokio.sleep(d)
                    assert time.monotonic() >= deadline - 1e-6   # never early
                    kids = [zokio.spawn(_short()) for _ in range(r.randrange(0, 4))]
                    for k in kids:
                        total += await k
                return total

            async def main():
                hogs = [zokio.spawn(hog_task(s)) for s in hog_seeds]
                outs = [zokio.spawn(other(s)) for s in other_seeds]
                for h in outs:
                    assert await h >= 0
                others_done.set()
                for h in hogs:
                    await h

            rt.block_on(main())
            assert len(report) == n_hogs
            for ok, ext in report:
                assert ok, "stranded work (or another task) waited for a hog to finish"
                extensions.append(ext)
            hog_runs += n_hogs
            rounds += 1
        rescued = rt.metrics()["stranded_rescued"]
    finally:
        finished.set()
        rt.shutdown(timeout=10)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3 if xs else float("nan")

    print(f"storm 6 (threads={workers}): {rounds} rounds, {hog_runs} hog polls, "
          f"{rescued} rescues by the monitor; stranded child start delay p50 "
          f"{q(child_delays, .5):.1f} / max {q(child_delays, 1):.1f} ms, stranded sleep "
          f"lateness p50 {q(sleep_lateness, .5):.1f} / max {q(sleep_lateness, 1):.1f} ms, hog "
          f"poll extended past its 50-300 ms p50 {q(extensions, .5):.1f} / max "
          f"{q(extensions, 1):.1f} ms")
    assert rounds >= 10
    assert rescued > 0
