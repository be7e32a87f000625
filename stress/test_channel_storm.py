"""Long channel storm: zokio.sync mpsc channels on 8 workers with plain
threads, random cancels of senders and receivers, receivers dropped and
recreated senders, and garbage-collector pauses.

Rounds of: a bounded or unbounded channel; sender tasks (cancelled at
random and restarted where they stopped), plain threads sending with
send_blocking and short timeouts, receiver tasks cancelled at random and a
plain thread in recv_blocking.  Checked every round: what arrived is exactly
what the senders saw complete, each once, in per-sender order per receiver.

ZOKIO_STRESS_SECONDS (default 20) bounds the run.
"""
from __future__ import annotations

import gc
import os
import random
import threading
import time

import pytest

import zokio
import zokio.sync as zs

SECONDS = float(os.environ.get("ZOKIO_STRESS_SECONDS", "20"))


def _one_round(rt, seed):
    rnd = random.Random(seed)
    capacity = rnd.choice([1, 2, 8, 64, None])
    tx, rx = zs.channel(capacity) if capacity else zs.unbounded_channel()
    n_tasks, n_threads, per = rnd.randint(2, 12), rnd.randint(0, 3), rnd.randint(50, 400)
    completed = [[] for _ in range(n_tasks + n_threads)]
    received = []
    lock = threading.Lock()

    async def sender_run(k, start, chunk):
        i = start
        try:
            while i < min(per, start + chunk):
                await tx.send((k, i))
                completed[k].append(i)
                i += 1
        except zokio.Cancelled:
            pass
        return i

    async def sender(k):
        i = 0
        r = random.Random(seed * 100 + k)
        while i < per:
            h = zokio.spawn(sender_run(k, i, r.randint(1, 30)))
            if r.random() < 0.5:
                for _ in range(r.randint(0, 4)):
                    await zokio.yield_now()
                h.cancel()
            try:
                i = await h
            except zokio.Cancelled:
                pass

    def thread_sender(k, s):
        i = 0
        while i < per:
            try:
                s.send_blocking((k, i), timeout=rnd.choice([None, 0.0005]))
            except TimeoutError:
                continue  # nothing was sent: try the same item again
            completed[k].append(i)
            i += 1
        s.close()

    def thread_receiver():
        mine = []
        with lock:
            received.append(mine)
        while True:
            try:
                mine.append(rx.recv_blocking(timeout=0.001))
            except TimeoutError:
                continue
            except zs.ChannelClosed:
                return

    async def receiver_run(mine, chunk):
        try:
            async for x in rx:
                mine.append(x)
                if len(mine) >= chunk:
                    return False
        except zokio.Cancelled:
            return False
        return True

    async def receiver(j):
        r = random.Random(seed * 1000 + j)
        while True:
            mine = []
            with lock:
                received.append(mine)
            h = zokio.spawn(receiver_run(mine, r.randint(1, 100)))
            if r.random() < 0.5:
                for _ in range(r.randint(0, 4)):
                    await zokio.yield_now()
                h.cancel()
            try:
                if await h:
                    return
            except zokio.Cancelled:
                pass

    async def main():
        threads = [threading.Thread(target=thread_sender, args=(n_tasks + t, tx.clone()))
                   for t in range(n_threads)]
        threads.append(threading.Thread(target=thread_receiver))
        for th in threads:
            th.start()
        rs = [zokio.spawn(receiver(j)) for j in range(rnd.randint(1, 3))]
        ss = [zokio.spawn(sender(k)) for k in range(n_tasks)]
        for h in ss:
            await h
        tx.close()
        for h in rs:
            await h
        for th in threads:
            await zokio.spawn_blocking(th.join)

    rt.block_on(main())
    got = sorted(m for r in received for m in r)
    want = sorted((k, i) for k in range(n_tasks + n_threads) for i in completed[k])
    assert got == want, f"round {seed}: {len(got)} received, {len(want)} completed"
    assert all(c == list(range(per)) for c in completed), f"round {seed}"
    for r in received:
        last = {}
        for s, n in r:
            assert n > last.get(s, -1), f"round {seed}: sender {s} out of order"
            last[s] = n


@pytest.mark.timeout(int(SECONDS * 4) + 120)
def test_long_channel_storm_with_random_cancels():
    stop = threading.Event()

    def pauses():
        while not stop.is_set():
            gc.collect()
            stop.wait(0.01)

    gc_thread = threading.Thread(target=pauses)
    gc_thread.start()
    rounds = 0
    try:
        with zokio.Runtime(threads=8) as rt:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                _one_round(rt, rounds)
                rounds += 1
    finally:
        stop.set()
        gc_thread.join()
    assert rounds > 0
