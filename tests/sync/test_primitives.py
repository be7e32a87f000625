"""zokio.sync's locks and notifications: semantics, FIFO order, cancel-safety
(including a cancel at the very moment of the handoff), plain threads,
shutdown and garbage collection."""
from __future__ import annotations

import gc
import random
import threading
import time
import weakref

import pytest

import zokio
from zokio.sync import (Barrier, BoundedSemaphore, Condition, Event, Lock, Mutex, Notify,
                        RwLock, Semaphore)


async def until(pred, limit=5.0):
    """Yield until pred() holds (a bounded wait)."""
    deadline = zokio.monotonic() + limit
    while not pred():
        assert zokio.monotonic() < deadline, "condition not reached"
        await zokio.sleep(0.001)


# ---- semantics -------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_lock_basics(make_runtime):
    async def main():
        lock = Lock()
        assert not lock.locked()
        assert await lock.acquire() is True
        assert lock.locked() and not lock.try_acquire()
        lock.release()
        with pytest.raises(RuntimeError):
            lock.release()
        async with lock:
            assert lock.locked()
        assert not lock.locked() and lock.try_acquire()
        lock.release()

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_lock_is_fifo_and_hands_over_without_barging(make_runtime):
    async def main():
        lock = Lock()
        await lock.acquire()
        order = []

        async def w(i):
            async with lock:
                order.append(i)
                await zokio.yield_now()

        hs = []
        for i in range(8):
            hs.append(zokio.spawn(w(i)))
            await until(lambda: lock.waiting == i + 1)
        lock.release()
        # Handed to waiter 0: nobody can take it meanwhile.
        assert lock.locked() and not lock.try_acquire()
        for h in hs:
            await h
        assert order == list(range(8))
        assert not lock.locked()

    make_runtime(threads=4).block_on(main())


@pytest.mark.timeout(30)
def test_semaphore_batch_acquire_is_fifo(make_runtime):
    async def main():
        sem = Semaphore(3)
        assert sem.available == 3
        assert await sem.acquire(2) is True and sem.available == 1
        order = []

        async def take(n, tag):
            await sem.acquire(n)
            order.append(tag)

        big = zokio.spawn(take(3, "big"))
        await until(lambda: sem.waiting == 1)
        # The free permit went to the head: small requests cannot overtake.
        assert sem.available == 0 and not sem.try_acquire(1)
        small = zokio.spawn(take(1, "small"))
        await until(lambda: sem.waiting == 2)
        sem.release(1)  # big now holds 2 of 3
        await zokio.sleep(0.005)
        assert order == []
        sem.release(1)  # big complete (3); small still waits
        await big
        assert order == ["big"] and sem.waiting == 1
        sem.release(1)
        await small
        assert order == ["big", "small"] and sem.available == 0
        sem.release(4)
        assert sem.available == 4  # a plain Semaphore may grow
        with pytest.raises(ValueError):
            await sem.acquire(-1)
        assert await sem.acquire(0) is True

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_bounded_semaphore_refuses_over_release(make_runtime):
    async def main():
        sem = BoundedSemaphore(2)
        with pytest.raises(ValueError):
            sem.release()
        await sem.acquire()
        sem.release()
        with pytest.raises(ValueError):
            await sem.acquire(3)  # more than can ever exist
        async with sem:
            assert sem.available == 1
        assert sem.available == 2

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_semaphore_permits_cannot_overflow(make_runtime):
    """Two release(2**62) used to wrap the count negative (available ==
    -2**63, then 0 after two more: permits lost, locked() True)."""
    async def main():
        sem = Semaphore(0)
        sem.release(2 ** 59)
        sem.release(2 ** 59 - 1)           # the most a semaphore holds: 2**60 - 1
        top = sem.available
        assert top == 2 ** 60 - 1
        with pytest.raises(OverflowError):
            sem.release(1)
        assert sem.available == top > 0 and not sem.locked()
        with pytest.raises(OverflowError):
            Semaphore(2 ** 63 - 1)
        with pytest.raises(ValueError):
            await sem.acquire(2 ** 62)      # more than any semaphore can hold
        assert await sem.acquire(top) is True
        assert sem.available == 0
        sem.release(top)
        assert sem.try_acquire(1) and sem.available == top - 1

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_mutex_guard(make_runtime):
    async def main():
        m = Mutex([])
        async with m as g:
            g.value.append(1)
            g.value = g.value + [2]
            assert m.locked() and m.try_lock() is None
        with pytest.raises(RuntimeError):
            g.value  # released
        with pytest.raises(RuntimeError):
            g.value = 3
        g2 = await m.lock()
        assert g2.value == [1, 2]
        g2.release()
        with pytest.raises(RuntimeError):
            g2.release()
        g3 = m.try_lock()
        assert g3 is not None and g3.held
        m.release()
        assert not g3.held and not m.locked()
        with pytest.raises(RuntimeError):
            m.release()

        async def bump():
            for _ in range(200):
                async with m as g:
                    v = g.value
                    await zokio.yield_now()
                    g.value = v + [0]

        m2 = Mutex(0)

        async def count():
            for _ in range(200):
                async with m2 as g:
                    v = g.value
                    await zokio.yield_now()
                    g.value = v + 1

        hs = [zokio.spawn(count()) for _ in range(8)]
        for h in hs:
            await h
        g = await m2.lock()
        assert g.value == 1600
        g.release()

    make_runtime(threads=4).block_on(main())


@pytest.mark.timeout(30)
def test_rwlock_readers_share_and_a_queued_writer_blocks_new_readers(make_runtime):
    async def main():
        rw = RwLock({"v": 0})
        r1 = await rw.read()
        async with rw.read() as r2:
            assert r1.value is r2.value and rw.readers == 2
            with pytest.raises(AttributeError):
                r2.value = 1
        order = []

        async def writer():
            async with rw.write() as g:
                order.append("w")
                g.value = {"v": 1}

        async def reader():
            async with rw.read() as g:
                order.append(("r", g.value["v"]))

        w = zokio.spawn(writer())
        await until(lambda: rw.waiting == 1)
        assert rw.try_read() is None and rw.try_write() is None  # writer queued
        r = zokio.spawn(reader())
        await until(lambda: rw.waiting == 2)
        r1.release()
        await w
        await r
        assert order == ["w", ("r", 1)]
        g = rw.try_write()
        assert g is not None and g.value == {"v": 1}
        del g  # a guard dropped while held releases
        gc.collect()
        assert rw.readers == 0 and rw.try_read() is not None

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_notify_stores_one_permit_and_notify_waiters_wakes_current_ones(make_runtime):
    async def main():
        n = Notify()
        n.notify_one()
        n.notify_one()  # at most one permit is stored
        await n.notified()
        assert not n.has_permit
        order = []

        async def w(i):
            await n.notified()
            order.append(i)

        hs = []
        for i in range(4):
            hs.append(zokio.spawn(w(i)))
            await until(lambda: n.waiting == i + 1)
        n.notify_one()
        await hs[0]
        n.notify_one()
        await hs[1]
        assert order == [0, 1]  # FIFO
        assert n.notify_waiters() == 2
        await hs[2]
        await hs[3]
        assert not n.has_permit  # notify_waiters stores nothing
        # A Notified taken before the check cannot miss the notify.
        fut = n.notified()
        n.notify_waiters()
        await fut

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_event(make_runtime):
    async def main():
        e = Event()
        assert not e.is_set()

        async def w():
            await e.wait()
            return e.is_set()

        hs = [zokio.spawn(w()) for _ in range(5)]
        await until(lambda: e.waiting == 5)
        e.set()
        assert [await h for h in hs] == [True] * 5
        await e.wait()  # set: no wait
        e.clear()
        assert not e.is_set()

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_condition(make_runtime):
    async def main():
        cond = Condition()
        with pytest.raises(RuntimeError):
            cond.notify()
        with pytest.raises(RuntimeError):
            await cond.wait()
        items = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: items)
                assert cond.locked()
                return items.pop(0)

        hs = [zokio.spawn(consumer()) for _ in range(4)]
        await until(lambda: cond._waiters.waiting == 4)
        for i in range(4):
            async with cond:
                items.append(i)
                cond.notify()
        assert sorted([await h for h in hs]) == [0, 1, 2, 3]

        woke = []

        async def waiter():
            async with cond:
                await cond.wait()
                woke.append(1)

        hs = [zokio.spawn(waiter()) for _ in range(3)]
        await until(lambda: cond._waiters.waiting == 3)
        async with cond:
            assert cond.notify_all() == 3
        for h in hs:
            await h
        assert woke == [1, 1, 1]

    make_runtime(threads=2).block_on(main())


@pytest.mark.timeout(30)
def test_barrier_rounds_and_indices(make_runtime):
    async def main():
        b = Barrier(4)
        for _ in range(5):
            hs = [zokio.spawn(b.wait()) for _ in range(4)]
            assert sorted([await h for h in hs]) == [0, 1, 2, 3]
        assert b.n_waiting == 0
        with pytest.raises(ValueError):
            Barrier(0)

    make_runtime(threads=4).block_on(main())


# ---- plain threads ------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_plain_threads_release_notify_and_set_while_tasks_wait(make_runtime):
    lock, sem, n, e = Lock(), Semaphore(0), Notify(), Event()
    N = 200

    async def main():
        await lock.acquire()
        got = {"lock": 0, "sem": 0, "notify": 0}
        mu = threading.Lock()  # the tasks run on several threads

        def bump(key):
            with mu:
                got[key] += 1

        async def on_lock():
            async with lock:
                bump("lock")

        async def on_sem():
            await sem.acquire()
            bump("sem")

        async def on_notify():
            await n.notified()
            bump("notify")

        async def on_event():
            await e.wait()

        hs = [zokio.spawn(f()) for f in (on_sem, on_notify) for _ in range(N)]
        hs += [zokio.spawn(on_event()) for _ in range(20)]
        hl = zokio.spawn(on_lock())
        await until(lambda: sem.waiting == N and lock.waiting == 1 and n.waiting == N
                    and e.waiting == 20)

        def thread_side():
            for _ in range(N):
                sem.release()
                n.notify_one()
            lock.release()  # released by a thread that never acquired it
            e.set()

        threads = [threading.Thread(target=thread_side)]
        threads[0].start()
        for h in hs:
            await h
        await hl
        threads[0].join()
        assert got == {"lock": 1, "sem": N, "notify": N}
        assert sem.available == 0 and not lock.locked() and not n.has_permit

    make_runtime(threads=4).block_on(main())
    # And plain threads can wait too.
    assert sem.acquire_blocking(timeout=0.01) is False
    threading.Timer(0.02, sem.release).start()
    assert sem.acquire_blocking(timeout=5) is True
    assert n.wait_blocking(timeout=0.01) is False
    threading.Timer(0.02, n.notify_one).start()
    assert n.wait_blocking(timeout=5) is True
    assert e.wait_blocking(timeout=0) is True


# ---- cancellation ---------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancelled_acquire_leaks_nothing_and_loses_its_place(make_runtime, how):
    async def main():
        sem = Semaphore(2)
        await sem.acquire(2)

        async def take(n, interrupted):
            if interrupted and how == "timeout":
                async with zokio.timeout(0.01):
                    await sem.acquire(n)
            else:
                await sem.acquire(n)
            return n

        a = zokio.spawn(take(2, True))
        await until(lambda: sem.waiting == 1)
        b = zokio.spawn(take(1, False))
        await until(lambda: sem.waiting == 2)
        sem.release(1)  # a holds 1 of its 2
        if how == "cancel":
            a.cancel()
        with pytest.raises(zokio.Cancelled if how == "cancel" else TimeoutError):
            await a
        # a's partial permit went on to b; nothing leaked.
        assert await b == 1
        sem.release(1)  # b's
        sem.release(1)  # the last of main's two
        assert sem.available == 2 and sem.waiting == 0

    make_runtime(threads=2).block_on(main())


def _handoff_cases():
    """name -> (make, acquire(prim) -> awaitable or coroutine, release(prim, held),
    free(prim) -> bool)"""

    async def lock_acq(p):
        await p.acquire()

    async def sem_acq(p):
        await p.acquire(2)

    async def mutex_acq(p):
        return await p.lock()

    async def write_acq(p):
        return await p.write()

    async def read_acq(p):
        return await p.read()

    return {
        "Lock": (Lock, lock_acq, lambda p, h: p.release(), lambda p: not p.locked()),
        "Semaphore": (lambda: Semaphore(2), sem_acq, lambda p, h: p.release(2),
                      lambda p: p.available == 2),
        "BoundedSemaphore": (lambda: BoundedSemaphore(2), sem_acq, lambda p, h: p.release(2),
                             lambda p: p.available == 2),
        "Mutex": (lambda: Mutex(0), mutex_acq, lambda p, h: h.release(), lambda p: not p.locked()),
        "RwLock.write": (RwLock, write_acq, lambda p, h: h.release(), lambda p: p.readers == 0),
        "RwLock.read-after-write": (RwLock, "write-then-read", None, lambda p: p.readers == 0),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(_handoff_cases()))
def test_cancel_at_the_moment_of_handoff_never_loses_or_doubles_the_permit(make_runtime, name):
    make, acq, rel, free = _handoff_cases()[name]
    rounds = 150
    rng = random.Random(7)

    async def main():
        p = make()
        holding = [0]
        outcomes = {"got": 0, "cancelled": 0}
        for i in range(rounds):
            if acq == "write-then-read":
                held = await p.write()

                async def acquire_one(p=p):
                    return await p.read()

                def release_held(held=held):
                    held.release()
            else:
                held = await acq(p)

                async def acquire_one(p=p):
                    return await acq(p)

                def release_held(held=held):
                    rel(p, held)

            async def waiter():
                g = await acquire_one()
                holding[0] += 1
                assert holding[0] == 1  # never doubly held
                outcomes["got"] += 1
                try:
                    await zokio.yield_now()  # a cancel that came with the grant lands here
                finally:
                    holding[0] -= 1
                    if acq == "write-then-read":
                        g.release()
                    else:
                        rel(p, g)

            h = zokio.spawn(waiter())
            await until(lambda: (p.waiting if hasattr(p, "waiting") else p._sem.waiting) == 1)
            go = threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), h.cancel()))
            t.start()
            x = rng.random()
            if x < 0.3:
                go.set()
                release_held()
            elif x < 0.6:
                release_held()
                go.set()
            else:
                # cancel first; release after a short random spin, so that
                # the cancel lands anywhere around the handoff
                go.set()
                end = time.perf_counter() + rng.random() * 0.0002
                while time.perf_counter() < end:
                    pass
                release_held()
            try:
                await h
            except zokio.Cancelled:
                outcomes["cancelled"] += 1
            t.join()
            await until(lambda: free(p))
            assert holding[0] == 0
        return outcomes

    out = make_runtime(threads=4).block_on(main())
    assert sum(out.values()) >= rounds  # every round finished (no lost wake)


@pytest.mark.timeout(60)
def test_notify_one_racing_a_cancel_is_never_lost(make_runtime):
    """Each round: two waiters; the first is cancelled from a plain thread
    while notify_one() runs.  The one notification ends up observed by a
    task, or stored: never lost, never doubled."""

    async def main():
        n = Notify()
        for i in range(200):
            seen = []

            async def w(tag):
                await n.notified()
                seen.append(tag)
                await zokio.yield_now()

            a = zokio.spawn(w("a"))
            await until(lambda: n.waiting == 1)
            b = zokio.spawn(w("b"))
            await until(lambda: n.waiting == 2)
            go = threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), a.cancel()))
            t.start()
            go.set()
            n.notify_one()
            try:
                await a
            except zokio.Cancelled:
                pass
            t.join()
            # a either took it (seen has "a"), or it passed on to b.
            if "a" not in seen:
                await b
                assert seen == ["b"]
            else:
                assert seen == ["a"] and not n.has_permit
                n.notify_one()
                await b
            assert n.waiting == 0 and not n.has_permit

    make_runtime(threads=4).block_on(main())


@pytest.mark.timeout(60)
def test_condition_notify_racing_a_cancel_passes_the_notification_on(make_runtime):
    async def main():
        cond = Condition()
        for i in range(100):
            woke = []

            async def w(tag):
                async with cond:
                    await cond.wait()
                    woke.append(tag)

            a = zokio.spawn(w("a"))
            await until(lambda: cond._waiters.waiting == 1)
            b = zokio.spawn(w("b"))
            await until(lambda: cond._waiters.waiting == 2)
            go = threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), a.cancel()))
            t.start()
            async with cond:
                go.set()
                cond.notify(1)
            try:
                await a
            except zokio.Cancelled:
                pass
            t.join()
            if "a" in woke:
                # a took the notification (its wait returned before the
                # cancel landed): b is still parked.
                await until(lambda: cond._waiters.waiting == 1)
                async with cond:
                    assert cond.notify(1) == 1
            await b  # woken by the notification, directly or passed on
            assert "b" in woke and not cond.locked() and cond._waiters.waiting == 0

    make_runtime(threads=4).block_on(main())


@pytest.mark.timeout(60)
def test_event_and_barrier_racing_cancels_strand_nobody(make_runtime):
    async def main():
        for i in range(100):
            e = Event()
            async def wait(e=e):
                await e.wait()

            hs = [zokio.spawn(wait()) for _ in range(4)]
            await until(lambda: e.waiting == 4)
            go = threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), hs[0].cancel()))
            t.start()
            go.set()
            e.set()
            for h in hs:
                try:
                    await h
                except zokio.Cancelled:
                    assert h is hs[0]
            t.join()

            b = Barrier(3)
            hs = [zokio.spawn(b.wait()) for _ in range(2)]
            await until(lambda: b.n_waiting == 2)
            go = threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), hs[0].cancel()))
            t.start()
            go.set()
            assert await b.wait() == 2  # the last arrival
            for h in hs:
                try:
                    await h
                except zokio.Cancelled:
                    assert h is hs[0]
            t.join()

    make_runtime(threads=4).block_on(main())


# ---- the storm ----------------------------------------------------------------------

def storm(rt, tasks=16, iterations=300, seed=1):
    """Tasks on every worker take a Lock, a Semaphore(3) (1 to 3 permits at a
    time) and a Mutex; each operation runs as its own task, and a random
    share of them are cancelled (at once, after a yield, or after a short
    sleep) or time out.  Checks mutual exclusion, no leaked permit (every
    count back to its start), no lost wake (everything finishes: the test's
    timeout bounds the run)."""
    rng = random.Random(seed)

    async def main():
        lock = Lock()
        sem = Semaphore(3)
        m = Mutex(0)
        inside = {"lock": 0, "sem": 0}
        bad = []
        done = {"ok": 0, "cancelled": 0, "timeout": 0}
        count_lock = threading.Lock()

        async def pause(r):
            if r.random() < 0.2:
                await zokio.sleep(0.001)
            else:
                await zokio.yield_now()

        async def op(r):
            kind = r.random()
            try:
                async with zokio.timeout(r.choice([None, None, 0.001, 0.003])):
                    if kind < 0.4:
                        async with lock:
                            inside["lock"] += 1
                            try:
                                if inside["lock"] != 1:
                                    bad.append("lock")
                                await pause(r)
                            finally:
                                inside["lock"] -= 1
                    elif kind < 0.8:
                        n = r.choice([1, 1, 2, 3])
                        await sem.acquire(n)
                        try:
                            with count_lock:  # holders run on several threads
                                inside["sem"] += n
                                if inside["sem"] > 3:
                                    bad.append("sem")
                            await pause(r)
                        finally:
                            with count_lock:
                                inside["sem"] -= n
                            sem.release(n)
                    else:
                        async with m as g:
                            v = g.value
                            await pause(r)
                            g.value = v + 1
                done["ok"] += 1
            except TimeoutError:
                done["timeout"] += 1

        async def worker(seed):
            r = random.Random(seed)
            for _ in range(iterations):
                h = zokio.spawn(op(random.Random(r.random())))
                x = r.random()
                if x < 0.1:
                    h.cancel()
                elif x < 0.2:
                    await zokio.yield_now()
                    h.cancel()
                elif x < 0.3:
                    await zokio.sleep(0.0005)
                    h.cancel()
                try:
                    await h
                except zokio.Cancelled:
                    done["cancelled"] += 1

        hs = [zokio.spawn(worker(rng.random())) for _ in range(tasks)]
        for h in hs:
            await h
        assert bad == []
        assert not lock.locked() and lock.waiting == 0
        assert sem.available == 3 and sem.waiting == 0
        assert not m.locked() and m.waiting == 0
        g = m.try_lock()
        done["mutex"] = g.value
        g.release()
        return done

    return rt.block_on(main())


@pytest.mark.timeout(120)
def test_storm_8_workers_random_cancels_and_timeouts(make_runtime):
    done = storm(make_runtime(threads=8))
    assert done["ok"] > 0 and done["cancelled"] > 0


# ---- shutdown and garbage collection -------------------------------------------------

@pytest.mark.timeout(30)
def test_waiters_of_tasks_cancelled_at_shutdown_return_what_they_hold():
    sem = Semaphore(2)
    lock = Lock()
    rt = zokio.Runtime(threads=4)

    async def hold_forever():
        async with lock:
            await zokio.sleep(100)

    async def park(n):
        await sem.acquire(n)
        sem.release(n)

    async def main():
        await sem.acquire(1)
        zokio.spawn(hold_forever())
        await until(lambda: lock.locked())
        # One at a time: spawned tasks run in any order on 4 workers, and a
        # park(1) that ran before the first park(2) had queued would take the
        # free permit instead of queueing behind it.
        for k, n in enumerate((2, 1, 2, 1), 1):
            zokio.spawn(park(n))
            await until(lambda: sem.waiting == k)
        async def take_lock():
            async with lock:
                await zokio.sleep(100)

        for _ in range(3):
            zokio.spawn(take_lock())
        await until(lambda: sem.waiting == 4 and lock.waiting == 3)
        # main returns holding one permit: hand it back from a plain thread

    rt.block_on(main())
    rt.shutdown()
    sem.release(1)
    assert sem.available == 2 and sem.waiting == 0
    assert not lock.locked() and lock.waiting == 0


@pytest.mark.timeout(30)
def test_primitive_with_parked_waiters_becomes_garbage(make_runtime):
    rt = make_runtime(threads=2)
    refs = []

    async def main():
        prims = [Lock(), Semaphore(0), Mutex(1), RwLock(2), Notify(), Event(),
                 Condition(), Barrier(3)]
        await prims[0].acquire()
        await prims[2].lock()
        await prims[3].write()
        waits = [prims[0].acquire(), prims[1].acquire(), prims[2].lock(),
                 prims[3].read().acquire(), prims[4].notified(), prims[5].wait()]

        async def enter(c):
            async with c:
                await c.wait()

        hs = [zokio.spawn(enter(prims[6])), zokio.spawn(prims[7].wait())]
        await zokio.sleep(0.01)
        for h in hs:
            h.cancel()
        for p in prims:
            refs.append(weakref.ref(p))
        # Waiters never awaited, left parked: lists <-> waiters <-> owners.
        del waits, prims, p, hs

    rt.block_on(main())
    gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


@pytest.mark.timeout(30)
def test_acquirer_closed_at_shutdown_past_its_deadline_leaves_the_queue():
    """A task that swallows its cancellation and parks again is closed when
    shutdown's deadline passes: its parked acquire leaves the queue and the
    permits it was handed in part go back."""
    sem = Semaphore(3)
    rt = zokio.Runtime(threads=2)

    steps = []

    async def stubborn():
        try:
            await sem.acquire(3)
        except zokio.Cancelled:
            steps.append("cancelled")
            await sem.acquire(5)  # parks again, holding what is free
            steps.append("never")

    async def main():
        await sem.acquire(2)
        zokio.spawn(stubborn())
        await until(lambda: sem.waiting == 1)
        assert sem.available == 0  # stubborn holds the free one, wants 2 more

    rt.block_on(main())
    rt.shutdown(timeout=0.3)  # cancel: removed; re-parked for 5; closed
    gc.collect()
    assert steps == ["cancelled"]
    assert sem.waiting == 0
    assert sem.available == 1  # each parked acquire's partial grant came back
    sem.release(2)  # main's
    assert sem.available == 3


@pytest.mark.timeout(30)
def test_condition_waiter_closed_at_shutdown_does_not_await_again(monkeypatch):
    """Closing a coroutine inside Condition.wait() must not try to take the
    lock back (a closed coroutine may not await: CPython would report
    "coroutine ignored GeneratorExit")."""
    reported = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u))
    cond = Condition()
    rt = zokio.Runtime(threads=2)

    async def stubborn():
        async with cond:
            try:
                await cond.wait()
            except zokio.Cancelled:
                await cond.wait()  # parks again; closed at the deadline

    async def main():
        zokio.spawn(stubborn())
        await until(lambda: cond._waiters.waiting == 1)

    rt.block_on(main())
    rt.shutdown(timeout=0.3)
    gc.collect()
    assert reported == []
    assert cond._waiters.waiting == 0
    assert not cond.locked()  # re-taken without a wait, released by `async with`
