"""oneshot, broadcast and watch channels of zokio.sync in a runtime: wakes
across workers and from plain threads, ends, Lagged, cancel-safety."""
from __future__ import annotations

import gc
import threading
import time

import pytest

import zokio
import zokio.sync as zs


async def aw(a):
    return await a


# ---- oneshot ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_oneshot_from_a_plain_thread_and_across_workers(rt):
    async def main():
        tx, rx = zs.oneshot()
        threading.Timer(0.01, tx.send, args=("hello",)).start()
        first = await rx
        tx2, rx2 = zs.oneshot()
        h = zokio.spawn(aw(rx2.recv()))
        await zokio.sleep(0.01)
        tx2.send(42)
        with pytest.raises(RuntimeError):
            tx2.send(43)
        second = await h
        with pytest.raises(zs.ChannelClosed):
            rx2.try_recv()                  # already received
        return first, second

    assert rt.block_on(main()) == ("hello", 42)


@pytest.mark.timeout(30)
def test_oneshot_sender_dropped_or_closed_ends_it(rt):
    async def main():
        tx, rx = zs.oneshot()
        h = zokio.spawn(aw(rx))
        await zokio.sleep(0.01)
        del tx
        gc.collect()
        with pytest.raises(zs.ChannelClosed):
            await h
        tx, rx = zs.oneshot()
        tx.close()
        with pytest.raises(zs.ChannelClosed):
            await rx.recv()
        tx, rx = zs.oneshot()
        rx.close()
        assert tx.is_closed()
        with pytest.raises(zs.ChannelClosed) as ei:
            tx.send("v")
        assert ei.value.item == "v"
        return True

    assert rt.block_on(main())


@pytest.mark.timeout(30)
def test_oneshot_cancelled_recv_keeps_the_value(rt1):
    async def main():
        tx, rx = zs.oneshot()
        h = zokio.spawn(aw(rx.recv()))
        await zokio.yield_now()
        tx.send("v")
        h.cancel()                        # lands together with the wake
        try:
            got = await h
        except zokio.Cancelled:
            got = await rx                # still there
        return got

    assert rt1.block_on(main()) == "v"


@pytest.mark.timeout(30)
def test_oneshot_recv_blocking(rt):
    tx, rx = zs.oneshot()
    with pytest.raises(TimeoutError):
        rx.recv_blocking(timeout=0.02)
    with pytest.raises(zs.QueueEmpty):
        rx.try_recv()

    async def later():
        await zokio.sleep(0.02)
        tx.send("x")

    h = rt.spawn(later())
    assert rx.recv_blocking(timeout=5) == "x"
    h.result(timeout=5)


# ---- broadcast ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_broadcast_every_receiver_sees_every_message(rt):
    async def reader(rx):
        return [x async for x in rx]

    async def main():
        tx, rx = zs.broadcast(16)
        rxs = [rx, tx.subscribe(), tx.subscribe()]
        hs = [zokio.spawn(reader(r)) for r in rxs]
        await zokio.sleep(0.01)
        for i in range(10):
            assert tx.send(i) == 3
            await zokio.sleep(0)
        late = tx.subscribe()
        tx.send(10)
        del tx
        gc.collect()
        return [await h for h in hs], await reader(late)

    res, late = rt.block_on(main())
    assert res == [list(range(11))] * 3
    assert late == [10]


@pytest.mark.timeout(30)
def test_broadcast_lagged_then_continues_from_oldest(rt1):
    async def main():
        tx, rx = zs.broadcast(4)
        for i in range(10):
            tx.send(i)
        assert len(rx) == 4
        with pytest.raises(zs.Lagged) as ei:
            await rx.recv()
        assert ei.value.missed == 6
        got = [await rx.recv() for _ in range(4)]
        with pytest.raises(zs.QueueEmpty):
            rx.try_recv()
        tx.close()
        with pytest.raises(zs.ChannelClosed):
            await rx.recv()
        with pytest.raises(zs.ChannelClosed) as ei:
            zs.broadcast(1)[0].send("nobody")   # its receiver is garbage at once
        return got, ei.value.item

    assert rt1.block_on(main()) == ([6, 7, 8, 9], "nobody")


@pytest.mark.timeout(30)
def test_broadcast_cancelled_recv_loses_nothing_and_threads(rt):
    async def main():
        tx, rx = zs.broadcast(8)
        h = zokio.spawn(aw(rx.recv()))
        await zokio.sleep(0.01)
        h.cancel()
        with pytest.raises(zokio.Cancelled):
            await h
        tx.send("a")
        got = [await rx.recv()]
        other = tx.subscribe()
        out = []
        th = threading.Thread(target=lambda: out.append(other.recv_blocking(timeout=5)))
        th.start()
        await zokio.sleep(0.01)
        tx.send("b")
        await zokio.spawn_blocking(th.join)
        got.append(await rx.recv())
        return got, out

    assert rt.block_on(main()) == (["a", "b"], ["b"])


# ---- watch -----------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_watch_changed_and_latest_value(rt):
    async def main():
        tx, rx = zs.watch("init")
        assert rx.borrow() == "init" and not rx.has_changed()
        h = zokio.spawn(aw(rx.changed()))
        await zokio.sleep(0.01)
        tx.send("one")
        await h
        assert rx.borrow() == "one"
        for v in ["two", "three", "four"]:
            tx.send(v)
        assert rx.has_changed()
        await rx.changed()                 # coalesced: one change seen
        assert rx.borrow_and_update() == "four" and not rx.has_changed()
        rx2 = tx.subscribe()
        assert rx2.borrow() == "four" and not rx2.has_changed()
        seen = []

        async def follow(r):
            async for v in r:
                seen.append(v)

        f = zokio.spawn(follow(rx2))
        await zokio.sleep(0.01)
        tx.send("five")
        await zokio.sleep(0.01)
        tx.close()
        await f
        await rx.changed()                 # "five" is still unseen by rx
        assert rx.borrow() == "five"
        with pytest.raises(zs.ChannelClosed):
            await rx.changed()
        return seen

    assert rt.block_on(main()) == ["five"]


@pytest.mark.timeout(30)
def test_watch_from_plain_threads(rt):
    tx, rx = zs.watch(0)
    stop = threading.Event()

    def writer():
        for v in range(1, 201):
            tx.send(v)
            time.sleep(0.0002)
        stop.set()

    async def main():
        th = threading.Thread(target=writer)
        th.start()
        seen = []
        while rx.borrow() != 200:
            try:
                async with zokio.timeout(0.5):
                    await rx.changed()
            except TimeoutError:
                break
            seen.append(rx.borrow_and_update())
        await zokio.spawn_blocking(th.join)
        return seen

    seen = rt.block_on(main())
    assert seen and seen[-1] == 200 and seen == sorted(seen)

    other = tx.subscribe()
    t = threading.Timer(0.01, tx.send, args=("late",))
    t.start()
    assert other.recv_blocking(timeout=5) == "late"
    t.join()
