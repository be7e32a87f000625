"""Storms on zokio.sync channels: 8 workers, plain threads, random cancels
and garbage-collector pauses.  Every message is received exactly once, in
per-sender order; a cancelled send delivers nothing unless it completed; a
cancelled receive loses nothing."""
from __future__ import annotations

import gc
import random
import threading

import pytest

import zokio
import zokio.sync as zs


def _gc_pauses(stop):
    """A plain thread forcing collections (stop-the-world on 3.13t)."""
    def run():
        while not stop.is_set():
            gc.collect()
            stop.wait(0.005)
    th = threading.Thread(target=run)
    th.start()
    return th


def _check_per_sender_order(seqs):
    """seqs: one receiver's messages (sender, n) in arrival order."""
    last = {}
    for s, n in seqs:
        assert n > last.get(s, -1), f"sender {s}: {n} after {last.get(s)}"
        last[s] = n


@pytest.mark.timeout(90)
@pytest.mark.parametrize("capacity", [1, 16, None])
def test_many_senders_tasks_and_threads_several_receivers(make_runtime, capacity):
    rt = make_runtime(8)
    tx, rx = zs.channel(capacity) if capacity else zs.unbounded_channel()
    n_tasks, n_threads, per = 16, 3, 300
    stop = threading.Event()
    pauses = _gc_pauses(stop)

    def thread_sender(t, s):
        for i in range(per):
            s.send_blocking((n_tasks + t, i))
        s.close()

    thread_got = []

    def thread_receiver():
        try:
            while True:
                thread_got.append(rx.recv_blocking())
        except zs.ChannelClosed:
            pass

    async def sender(k, s):
        for i in range(per):
            await s.send((k, i))
            if i % 37 == 0:
                await zokio.yield_now()
        s.close()

    async def receiver():
        return [x async for x in rx]

    async def main():
        threads = [threading.Thread(target=thread_sender, args=(t, tx.clone()))
                   for t in range(n_threads)]
        threads.append(threading.Thread(target=thread_receiver))
        for th in threads:
            th.start()
        recvs = [zokio.spawn(receiver()) for _ in range(3)]
        sends = [zokio.spawn(sender(k, tx.clone())) for k in range(n_tasks)]
        tx.close()
        for h in sends:
            await h
        out = [await h for h in recvs]
        for th in threads:
            await zokio.spawn_blocking(th.join)
        return out

    try:
        per_receiver = rt.block_on(main())
    finally:
        stop.set()
        pauses.join()
    per_receiver.append(thread_got)
    everything = [m for r in per_receiver for m in r]
    assert sorted(everything) == [(s, i) for s in range(n_tasks + n_threads) for i in range(per)]
    for r in per_receiver:
        _check_per_sender_order(r)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("capacity", [1, 4])
def test_storm_with_random_cancels(make_runtime, capacity):
    """Senders and receivers on 8 workers are cancelled at random moments
    and restarted.  What arrived is exactly what the senders saw complete,
    each once, in per-sender order (per receiver task)."""
    rt = make_runtime(8)
    tx, rx = zs.channel(capacity)
    n_senders, per = 12, 250
    completed = [[] for _ in range(n_senders)]   # written by sender k only
    received = []                                 # one list per receiver run
    stop = threading.Event()
    pauses = _gc_pauses(stop)

    cancels = {"send": 0, "recv": 0}

    async def sender_run(k, start, chunk):
        i = start
        try:
            while i < min(per, start + chunk):
                await tx.send((k, i))
                completed[k].append(i)
                i += 1
        except zokio.Cancelled:
            cancels["send"] += 1  # (a race between tasks: only a rough count)
        return i

    async def sender(k):
        i = 0
        rnd = random.Random(k)
        while i < per:
            h = zokio.spawn(sender_run(k, i, rnd.randint(1, 20)))
            if rnd.random() < 0.5:
                for _ in range(rnd.randint(0, 3)):
                    await zokio.yield_now()
                h.cancel()
            try:
                i = await h
            except zokio.Cancelled:
                cancels["send"] += 1  # before its first step: it sent nothing

    async def receiver_run(mine, chunk):
        try:
            async for x in rx:
                mine.append(x)
                if len(mine) >= chunk:
                    return False
        except zokio.Cancelled:
            cancels["recv"] += 1
            return False
        return True

    async def receivers(seed):
        rnd = random.Random(seed)
        while True:
            mine = []
            received.append(mine)
            h = zokio.spawn(receiver_run(mine, rnd.randint(1, 40)))
            if rnd.random() < 0.5:
                for _ in range(rnd.randint(0, 3)):
                    await zokio.yield_now()
                h.cancel()
            try:
                if await h:
                    return
            except zokio.Cancelled:
                cancels["recv"] += 1  # before its first step

    async def main():
        rs = [zokio.spawn(receivers(100 + j)) for j in range(2)]
        ss = [zokio.spawn(sender(k)) for k in range(n_senders)]
        for h in ss:
            await h
        tx.close()
        for h in rs:
            await h

    try:
        rt.block_on(main())
    finally:
        stop.set()
        pauses.join()
    got = sorted(m for r in received for m in r)
    want = sorted((k, i) for k in range(n_senders) for i in completed[k])
    assert got == want
    assert all(completed[k] == list(range(per)) for k in range(n_senders))
    assert cancels["send"] > 0 and cancels["recv"] > 0, cancels
    for r in received:
        _check_per_sender_order(r)


@pytest.mark.timeout(90)
def test_cross_worker_ping_pong(make_runtime):
    """Two tasks on different workers bounce a counter through two
    capacity-1 channels; nothing is lost or duplicated."""
    rt = make_runtime(8)
    rounds = 3000

    async def echo(rx, tx):
        async for x in rx:
            await tx.send(x + 1)
        tx.close()

    async def main():
        a_tx, a_rx = zs.channel(1)
        b_tx, b_rx = zs.channel(1)
        h = zokio.spawn(echo(a_rx, b_tx))
        x = 0
        for _ in range(rounds):
            await a_tx.send(x)
            x = await b_rx.recv() + 1
        a_tx.close()
        await h
        with pytest.raises(zs.ChannelClosed):
            await b_rx.recv()
        return x

    assert rt.block_on(main()) == 2 * rounds


@pytest.mark.timeout(90)
def test_broadcast_and_watch_storm(make_runtime):
    rt = make_runtime(8)
    n_senders, per = 4, 200
    btx, brx0 = zs.broadcast((n_senders + 1) * per)   # never lags (+1: the thread)
    brxs = [brx0] + [btx.subscribe() for _ in range(3)]
    wtx, wrx0 = zs.watch(-1)
    wrxs = [wrx0] + [wtx.subscribe() for _ in range(3)]

    async def bsender(k, s):
        for i in range(per):
            s.send((k, i))
            if i % 17 == 0:
                await zokio.yield_now()
        s.close()

    def thread_bsender(s):
        for i in range(per):
            s.send((n_senders, i))
        s.close()

    async def breceiver(r):
        return [x async for x in r]

    async def wsender():
        for v in range(500):
            wtx.send(v)
            if v % 7 == 0:
                await zokio.yield_now()
        wtx.close()

    async def wreceiver(r):
        seen = []
        async for v in r:
            seen.append(v)
        return seen

    async def main():
        th = threading.Thread(target=thread_bsender, args=(btx.clone(),))
        brs = [zokio.spawn(breceiver(r)) for r in brxs]
        wrs = [zokio.spawn(wreceiver(r)) for r in wrxs]
        bss = [zokio.spawn(bsender(k, btx.clone())) for k in range(n_senders)]
        th.start()
        btx.close()
        ws = zokio.spawn(wsender())
        for h in bss:
            await h
        await zokio.spawn_blocking(th.join)
        await ws
        return [await h for h in brs], [await h for h in wrs]

    bres, wres = rt.block_on(main())
    want = sorted((k, i) for k in range(n_senders + 1) for i in range(per))
    for r in bres:
        assert sorted(r) == want
        _check_per_sender_order(r)
    for seen in wres:
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert seen and seen[-1] == 499   # the last value is always seen
