"""A long storm on zokio.sync's locks: tasks on 8 workers and plain threads
take a Lock, a Semaphore, a Mutex and an RwLock, with random cancels at any
moment (before parking, while parked, right as a release hands over) and
random timeouts, until the time budget is spent.

Invariants, checked exactly: mutual exclusion (never two Lock/Mutex
holders, never a writer with anyone else, never more Semaphore permits held
than exist); no leaked permit (every count back to its start at the end);
no lost wake (every round finishes: the rounds are bounded by the test's
timeout); the Mutex's counter equals the number of completed increments.

Knobs (environment), as the other storms: ZOKIO_STRESS_SCALE multiplies the
time budget; ZOKIO_STRESS_SEED replays a run's random draws.
"""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

import zokio
from zokio.sync import Lock, Mutex, RwLock, Semaphore

SCALE = float(os.environ.get("ZOKIO_STRESS_SCALE", "1") or 1)
PERMITS = 4


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("ZOKIO_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: ZOKIO_STRESS_SEED={seed}")
    return random.Random(seed)


class Books:
    """Who holds what, updated under a threading lock (holders run on
    several threads)."""

    def __init__(self):
        self.mu = threading.Lock()
        self.lock = self.mutex = self.sem = self.readers = self.writers = 0
        self.bad = []
        self.increments = 0
        self.counts = {"ok": 0, "cancelled": 0, "timeout": 0, "thread": 0}

    def enter(self, what, n=1):
        with self.mu:
            setattr(self, what, getattr(self, what) + n)
            if self.lock > 1 or self.mutex > 1 or self.sem > PERMITS or self.writers > 1 or (
                    self.writers and self.readers):
                self.bad.append((what, self.lock, self.mutex, self.sem, self.readers, self.writers))

    def leave(self, what, n=1):
        with self.mu:
            setattr(self, what, getattr(self, what) - n)

    def count(self, key):
        with self.mu:
            self.counts[key] += 1


@pytest.mark.timeout(300)
def test_sync_storm_locks_semaphores_cancels_timeouts_threads(rng):
    budget = 20 * SCALE
    lock, sem, mutex, rw = Lock(), Semaphore(PERMITS), Mutex(0), RwLock(None)
    books = Books()
    stop = threading.Event()

    async def pause(r):
        x = r.random()
        if x < 0.15:
            await zokio.sleep(r.choice([0.0005, 0.001, 0.002]))
        elif x < 0.9:
            await zokio.yield_now()

    async def op(r):
        kind = r.random()
        try:
            async with zokio.timeout(r.choice([None, None, None, 0.0005, 0.002, 0.005])):
                if kind < 0.25:
                    async with lock:
                        books.enter("lock")
                        try:
                            await pause(r)
                        finally:
                            books.leave("lock")
                elif kind < 0.5:
                    n = r.choice([1, 1, 2, 3, PERMITS])
                    await sem.acquire(n)
                    try:
                        books.enter("sem", n)
                        try:
                            await pause(r)
                        finally:
                            books.leave("sem", n)
                    finally:
                        sem.release(n)
                elif kind < 0.7:
                    async with mutex as g:
                        books.enter("mutex")
                        try:
                            v = g.value
                            await pause(r)
                            g.value = v + 1
                            with books.mu:
                                books.increments += 1
                        finally:
                            books.leave("mutex")
                elif kind < 0.9:
                    async with rw.read():
                        books.enter("readers")
                        try:
                            await pause(r)
                        finally:
                            books.leave("readers")
                else:
                    async with rw.write():
                        books.enter("writers")
                        try:
                            await pause(r)
                        finally:
                            books.leave("writers")
            books.count("ok")
        except TimeoutError:
            books.count("timeout")

    async def worker(seed):
        r = random.Random(seed)
        while not stop.is_set():
            h = zokio.spawn(op(random.Random(r.random())))
            x = r.random()
            if x < 0.08:
                h.cancel()
            elif x < 0.16:
                await zokio.yield_now()
                h.cancel()
            elif x < 0.24:
                await zokio.sleep(r.choice([0.0002, 0.001]))
                h.cancel()
            try:
                await h
            except zokio.Cancelled:
                books.count("cancelled")

    def thread_side(seed):
        """A plain thread: blocking acquires with timeouts, and releases."""
        r = random.Random(seed)
        while not stop.is_set():
            n = r.choice([1, 2])
            if sem.acquire_blocking(n, timeout=r.choice([0.0, 0.001, 0.01])):
                books.enter("sem", n)
                time.sleep(r.choice([0, 0.0002]))
                books.leave("sem", n)
                sem.release(n)
                books.count("thread")

    async def main():
        hs = [zokio.spawn(worker(rng.random())) for _ in range(24)]
        threads = [threading.Thread(target=thread_side, args=(rng.random(),)) for _ in range(2)]
        for t in threads:
            t.start()
        await zokio.sleep(budget)
        stop.set()
        for h in hs:
            await h
        for t in threads:
            t.join()

    with zokio.Runtime(threads=8) as rt:
        rt.block_on(main())
    print(books.counts, "mutex increments", books.increments)
    assert books.bad == []
    assert books.counts["ok"] > 0 and books.counts["cancelled"] > 0 and books.counts["timeout"] > 0
    assert not lock.locked() and lock.waiting == 0
    assert sem.available == PERMITS and sem.waiting == 0
    assert not mutex.locked() and mutex.waiting == 0
    assert rw.readers == 0 and rw.waiting == 0
    g = mutex.try_lock()
    assert g.value == books.increments
    g.release()
