"""Concurrency: wake storms from plain threads, 10^5 tasks waking one another
across 8 workers (each completes exactly once, never runs on two threads at
once), cancel racing with wake and with completion."""
from __future__ import annotations

import random
import threading
import time

import pytest

import zokio
from _helpers import settled


class Overlap(AssertionError):
    pass


class Guard:
    """Per-task "in progress" flag: enter() at every resume, leave() before
    every suspension.  Two threads inside one task's segment at once means
    the runtime polled one coroutine concurrently."""

    __slots__ = ("busy", "violations")

    def __init__(self):
        self.busy = False
        self.violations = 0

    def enter(self):
        if self.busy:
            self.violations += 1
            raise Overlap("task resumed while already running")
        self.busy = True

    def leave(self):
        self.busy = False


# ---- wake storms --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_wake_storm_oneshot_set_from_16_threads(make_runtime, util):
    rt = make_runtime(4)
    n = 800
    cells = [zokio.Oneshot() for _ in range(n)]
    registered = threading.Semaphore(0)

    async def waiter(i):
        registered.release()
        v = await cells[i]
        return v

    handles = [rt.spawn(waiter(i)) for i in range(n)]
    for _ in range(n):
        assert registered.acquire(timeout=10)
    time.sleep(0.01)        # most are now parked on their cells

    n_threads = 16
    barrier = threading.Barrier(n_threads)
    wins = [[] for _ in range(n_threads)]

    def setter(k):
        barrier.wait()
        # every cell is set by two threads at once; exactly one must win
        for i in list(range(k, n, n_threads // 2)):
            if cells[i].set(("v", i, k)):
                wins[k].append(i)

    ts = [threading.Thread(target=setter, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    winners = sorted(i for w in wins for i in w)
    assert winners == list(range(n))     # each cell set exactly once
    for i, h in enumerate(handles):
        tag, j, k = h.result(timeout=10)
        assert (tag, j) == ("v", i) and i in wins[k]
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5)


@pytest.mark.timeout(60)
def test_cancel_storm_from_16_threads_while_others_set(make_runtime, util):
    rt = make_runtime(4)
    n = 640
    cells = [zokio.Oneshot() for _ in range(n)]
    finals = [0] * n
    registered = threading.Semaphore(0)

    async def waiter(i):
        try:
            registered.release()
            return await cells[i]
        finally:
            finals[i] += 1

    handles = [rt.spawn(waiter(i)) for i in range(n)]
    for _ in range(n):
        assert registered.acquire(timeout=10)
    time.sleep(0.01)

    barrier = threading.Barrier(16)
    cancel_ret = [None] * n

    def canceller(k):
        barrier.wait()
        for i in range(k, n, 8):
            cancel_ret[i] = handles[i].cancel()

    def setter(k):
        barrier.wait()
        for i in range(k, n, 8):
            cells[i].set(i)

    ts = [threading.Thread(target=canceller, args=(k,)) for k in range(8)]
    ts += [threading.Thread(target=setter, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    n_cancelled = n_value = 0
    for i, h in enumerate(handles):
        try:
            v = h.result(timeout=10)
        except zokio.Cancelled:
            n_cancelled += 1
            assert cancel_ret[i] is True
        else:
            assert v == i
            n_value += 1
    assert n_cancelled + n_value == n
    assert finals == [1] * n             # every finally ran exactly once
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5)
    m = rt.metrics()
    assert m["tasks_spawned"] == m["tasks_completed"] == n


@pytest.mark.timeout(60)
def test_spawn_storm_from_16_threads(make_runtime):
    rt = make_runtime(4)
    barrier = threading.Barrier(16)
    results = [None] * 16

    async def job(k, i):
        if i % 3 == 0:
            await zokio.yield_now()
        return k * 1000 + i

    def client(k):
        barrier.wait()
        hs = [rt.spawn(job(k, i)) for i in range(300)]
        results[k] = [h.result(timeout=20) for h in hs]

    ts = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in range(16):
        assert results[k] == [k * 1000 + i for i in range(300)]
    m = settled(rt)
    assert m["tasks_spawned"] == m["tasks_completed"] == 16 * 300


# ---- 10^5 tasks waking one another ------------------------------------------

@pytest.mark.timeout(120)
def test_100k_tasks_ring_of_oneshots_on_8_workers(make_runtime):
    """1000 rings of 100 tasks; a token goes round each ring 3 times, every
    hop a Oneshot set by the previous task (often on another worker).  Each
    task completes exactly once and is never resumed while running."""
    rt = make_runtime(8)
    rings, size, rounds = 1000, 100, 3
    n = rings * size
    cells = [[zokio.Oneshot() for _ in range(rounds)] for _ in range(n)]
    guards = [Guard() for _ in range(n)]
    completions = [0] * n
    threads_seen = [set() for _ in range(8)]
    ring_done = [zokio.Oneshot() for _ in range(rings)]

    async def member(idx):
        g = guards[idx]
        ring, pos = divmod(idx, size)
        nxt = ring * size + (pos + 1) % size
        g.enter()
        total = 0
        for r in range(rounds):
            g.leave()
            token = await cells[idx][r]
            g.enter()
            threads_seen[idx % 8].add(threading.get_ident())
            total += token
            if pos == size - 1:
                if r + 1 < rounds:
                    cells[nxt][r + 1].set(token + 1)
                else:
                    ring_done[ring].set(token + 1)
            else:
                cells[nxt][r].set(token + 1)
            if (idx + r) % 7 == 0:
                g.leave()
                await zokio.yield_now()
                g.enter()
        g.leave()
        completions[idx] += 1
        return total

    async def main():
        hs = [zokio.spawn(member(i)) for i in range(n)]
        for ring in range(rings):
            cells[ring * size][0].set(0)
        ends = [await d for d in ring_done]
        totals = [await h for h in hs]
        return ends, totals

    t0 = time.monotonic()
    ends, totals = rt.block_on(main())
    elapsed = time.monotonic() - t0
    assert ends == [rounds * size] * rings
    # task at ring position p sees tokens p, size+p, 2*size+p
    for idx, total in enumerate(totals):
        p = idx % size
        assert total == sum(r * size + p for r in range(rounds)), idx
    assert completions == [1] * n
    assert sum(g.violations for g in guards) == 0
    assert not any(g.busy for g in guards)
    m = settled(rt)
    assert m["tasks_spawned"] == m["tasks_completed"] == n + 1
    assert m["tasks_live"] == 0
    all_threads = set().union(*threads_seen)
    assert len(all_threads) >= 2, "all work ran on one worker"
    assert all_threads <= {t.ident for t in threading.enumerate() if t.name.startswith("zokio-worker")}
    print(f"100k ring: {elapsed:.2f} s, steals={m['steals']} polls={m['polls']}")


@pytest.mark.timeout(60)
def test_plain_thread_wakes_interleaved_with_task_wakes(make_runtime):
    """Each task is woken alternately from a plain thread and from another
    task, many times, while the guard checks exclusive execution."""
    rt = make_runtime(4)
    n, steps = 200, 20
    guards = [Guard() for _ in range(n)]
    inbox = [[zokio.Oneshot() for _ in range(steps)] for _ in range(n)]
    progressed = [0] * n

    async def task(i):
        g = guards[i]
        g.enter()
        for s in range(steps):
            g.leave()
            await inbox[i][s]
            g.enter()
            progressed[i] += 1
            if s % 2 == 0 and s + 1 < steps:
                # wake our neighbour-independent next step from this task
                inbox[i][s + 1].set(None)
        g.leave()
        return progressed[i]

    hs = [rt.spawn(task(i)) for i in range(n)]

    def pumper(lo, hi):
        for s in range(0, steps, 2):
            for i in range(lo, hi):
                inbox[i][s].set(None)
            time.sleep(0.001)

    ts = [threading.Thread(target=pumper, args=(k * 50, k * 50 + 50)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [h.result(timeout=20) for h in hs] == [steps] * n
    assert sum(g.violations for g in guards) == 0


# ---- cancel racing with wake and with completion ------------------------------

@pytest.mark.timeout(60)
def test_cancel_races_wake(make_runtime, util):
    rt = make_runtime(4)
    iterations, batch = 120, 25
    rng = random.Random(11)
    totals = {"value": 0, "cancelled": 0}
    for it in range(iterations):
        cells = [zokio.Oneshot() for _ in range(batch)]
        started = [0] * batch
        unwound = [0] * batch

        async def waiter(i, cells=cells, started=started, unwound=unwound):
            started[i] += 1
            try:
                return await cells[i]
            finally:
                unwound[i] += 1

        hs = [rt.spawn(waiter(i)) for i in range(batch)]
        if rng.random() < 0.5:
            time.sleep(0.001)
        barrier = threading.Barrier(2)

        def do_set():
            barrier.wait()
            for i, c in enumerate(cells):
                c.set(("ok", i))

        def do_cancel():
            barrier.wait()
            for h in reversed(hs):
                h.cancel()

        ts = [threading.Thread(target=do_set), threading.Thread(target=do_cancel)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i, h in enumerate(hs):
            try:
                v = h.result(timeout=10)     # never hangs
            except zokio.Cancelled:
                totals["cancelled"] += 1
                assert h.cancelled()
            else:
                assert v == ("ok", i)
                assert started[i] == 1
                totals["value"] += 1
        # a task cancelled before its first poll never starts; every task
        # that started unwound exactly once
        assert started == unwound
        assert set(started) <= {0, 1}
    assert totals["value"] + totals["cancelled"] == iterations * batch
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5), rt.metrics()


@pytest.mark.timeout(60)
def test_cancel_races_completion(make_runtime, util):
    rt = make_runtime(4)
    rng = random.Random(5)
    seen = {"value": 0, "cancelled": 0, "false_cancel": 0}
    for it in range(120):
        hs = []

        async def short(k):
            for _ in range(k):
                await zokio.yield_now()
            return k

        for j in range(25):
            hs.append((j % 4, rt.spawn(short(j % 4))))
        # cancel while they are finishing, at a random moment
        spin = rng.randrange(0, 2000)
        while spin:
            spin -= 1
        rets = [h.cancel() for _, h in hs]
        for (k, h), ret in zip(hs, rets):
            try:
                v = h.result(timeout=10)
            except zokio.Cancelled:
                assert ret is True            # only a successful request cancels
                assert h.cancelled()
                seen["cancelled"] += 1
            else:
                assert v == k
                assert not h.cancelled()
                seen["value"] += 1
                if ret is False:
                    seen["false_cancel"] += 1
            assert h.done()
            assert h.cancel() is False       # finished now: always False
    assert seen["value"] + seen["cancelled"] == 120 * 25
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5), rt.metrics()


@pytest.mark.timeout(60)
def test_cancel_races_join_from_tasks_and_threads(make_runtime, util):
    rt = make_runtime(4)
    for it in range(100):
        gate = zokio.Oneshot()

        async def target(gate=gate):
            return await gate

        t = rt.spawn(target())

        async def joiner(t=t):
            try:
                return ("value", await t)
            except zokio.Cancelled:
                return ("cancelled", None)

        js = [rt.spawn(joiner()) for _ in range(10)]
        barrier = threading.Barrier(3)
        outcomes = []

        def thread_join():
            barrier.wait()
            try:
                outcomes.append(("value", t.result(timeout=10)))
            except zokio.Cancelled:
                outcomes.append(("cancelled", None))

        def setter():
            barrier.wait()
            gate.set(it)

        def canceller():
            barrier.wait()
            t.cancel()

        ths = [threading.Thread(target=f) for f in (thread_join, setter, canceller)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        res = [j.result(timeout=10) for j in js] + outcomes
        # every joiner agrees on the single outcome of the target
        assert len(set(res)) == 1, res
        assert res[0] in (("value", it), ("cancelled", None))
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5), rt.metrics()


@pytest.mark.timeout(60)
def test_cancel_races_timer_and_timeout(make_runtime, util):
    """Cancellation arriving while the task's sleep or timeout scope fires."""
    rt = make_runtime(4)
    rng = random.Random(9)
    outcomes = {"value": 0, "timeout": 0, "cancelled": 0}

    async def napper(d):
        try:
            async with zokio.timeout(0.002):
                await zokio.sleep(d)
            return "value"
        except TimeoutError:
            return "timeout"

    for _ in range(50):
        hs = [rt.spawn(napper(rng.choice([0.0, 0.001, 0.002, 0.003]))) for _ in range(30)]
        time.sleep(rng.choice([0.0, 0.001, 0.002, 0.003]))
        for h in hs:
            h.cancel()
        for h in hs:
            try:
                outcomes[h.result(timeout=10)] += 1
            except zokio.Cancelled:
                outcomes["cancelled"] += 1
    assert sum(outcomes.values()) == 50 * 30
    assert util.wait_for(lambda: rt.metrics()["tasks_live"] == 0, timeout=5)
    assert util.wait_for(lambda: rt.metrics()["timers_pending"] == 0, timeout=5), rt.metrics()

