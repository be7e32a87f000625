"""zokio.sync mpsc channels (native/sync/channel.c): order, back-pressure,
ends (close, drop, garbage), cancel-safety at the moment of handoff, plain
threads, the coroutine budget, and garbage collection of channels holding
parked waiters and buffered items."""
from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

import zokio
import zokio.sync as zs
from zokio import _native


async def aw(a):
    """A coroutine awaiting `a` (spawn takes coroutines)."""
    return await a


class Item:
    """A message that can be weakly referenced (to see it freed)."""

    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return f"Item({self.n})"


# ---- basics ------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_order_len_and_try_variants(rt1):
    async def main():
        tx, rx = zs.channel(3)
        assert len(rx) == 0
        for i in range(3):
            await tx.send(i)
        assert len(rx) == 3
        with pytest.raises(zs.QueueFull) as ei:
            tx.try_send("x")
        assert ei.value.item == "x"
        assert [await rx.recv(), rx.try_recv(), await rx.recv()] == [0, 1, 2]
        with pytest.raises(zs.QueueEmpty):
            rx.try_recv()
        # Values that __next__ must not unpack: tuples, exceptions, None.
        for v in [(1, 2), (), ValueError("v"), None, StopIteration(3)]:
            await tx.send(v)
            assert (await rx.recv()) is v
        return True

    assert rt1.block_on(main())


@pytest.mark.timeout(30)
def test_capacity_is_validated():
    for bad in [0, -1]:
        with pytest.raises(ValueError):
            zs.channel(bad)
    for bad in [1.5, "3", True, None]:
        with pytest.raises(TypeError):
            zs.channel(bad)


@pytest.mark.timeout(30)
def test_bounded_send_waits_for_room_in_fifo_order(rt1):
    async def main():
        tx, rx = zs.channel(2)
        order, started = [], []

        async def sender(k):
            started.append(k)
            await tx.send(k)
            order.append(k)

        await tx.send("a")
        await tx.send("b")
        hs = [zokio.spawn(sender(k)) for k in range(5)]
        for _ in range(3):
            await zokio.yield_now()
        assert order == [] and len(rx) == 2  # all five wait, nothing barged
        assert sorted(started) == list(range(5))
        got = [await rx.recv() for _ in range(7)]
        for h in hs:
            await h
        return got, order, started

    got, order, started = rt1.block_on(main())
    assert got == ["a", "b"] + started      # in the order they parked
    assert sorted(order) == list(range(5))  # (resume order is the scheduler's)


@pytest.mark.timeout(30)
def test_unbounded_grows(rt1):
    async def main():
        tx, rx = zs.unbounded_channel()
        for i in range(10_000):
            await tx.send(i)
        assert len(rx) == 10_000
        return [rx.try_recv() for _ in range(10_000)]

    assert rt1.block_on(main()) == list(range(10_000))


@pytest.mark.timeout(30)
def test_wraparound_with_give_back_keeps_order(rt1):
    async def main():
        tx, rx = zs.channel(4)
        out = []
        for round_ in range(50):
            for i in range(3):
                await tx.send((round_, i))
            r = rx.recv()          # takes (round_, 0) ...
            del r                  # ... never awaited: back to the front
            out += [await rx.recv() for _ in range(3)]
        return out

    assert rt1.block_on(main()) == [(r, i) for r in range(50) for i in range(3)]


# ---- ends ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_last_sender_closed_ends_after_drain(rt):
    async def main():
        tx, rx = zs.channel(8)
        tx2 = tx.clone()
        await tx.send(1)
        tx.close()
        assert tx.is_closed() and not tx2.is_closed()
        with pytest.raises(zs.ChannelClosed):
            await tx.send(2)
        with pytest.raises(zs.ChannelClosed):
            tx.clone()
        await tx2.send(3)
        waiting = zokio.spawn(collect(rx))
        await zokio.sleep(0.01)
        tx2.close()
        return await waiting

    async def collect(rx):
        return [x async for x in rx]

    assert rt.block_on(main()) == [1, 3]


@pytest.mark.timeout(30)
def test_garbage_senders_end_the_channel_and_wake_receiver(rt):
    async def main():
        tx, rx = zs.unbounded_channel()
        clones = [tx.clone() for _ in range(3)]
        h = zokio.spawn(aw(rx.recv()))   # parked: wait for a message
        await zokio.sleep(0.01)
        await clones[1].send("last")
        assert await h == "last"
        h = zokio.spawn(aw(rx.recv()))
        await zokio.sleep(0.01)
        del tx, clones
        with pytest.raises(zs.ChannelClosed):
            await h
        with pytest.raises(zs.ChannelClosed):
            rx.try_recv()
        assert rx.is_closed()
        return True

    assert rt.block_on(main())


@pytest.mark.timeout(30)
def test_receiver_close_refuses_sends_keeps_buffer_and_returns_parked_items(rt):
    async def main():
        tx, rx = zs.channel(1)
        await tx.send("in")
        parked = zokio.spawn(aw(tx.send("parked")))
        await zokio.sleep(0.01)
        rx.close()
        with pytest.raises(zs.ChannelClosed) as ei:
            await parked
        assert ei.value.item == "parked"
        with pytest.raises(zs.ChannelClosed) as ei:
            tx.try_send("late")
        assert ei.value.item == "late"
        assert tx.is_closed()
        assert await rx.recv() == "in"       # still buffered
        with pytest.raises(zs.ChannelClosed):
            await rx.recv()
        return True

    assert rt.block_on(main())


@pytest.mark.timeout(30)
def test_receiver_dropped_fails_parked_and_later_sends(rt):
    async def main():
        tx, rx = zs.channel(1)
        await tx.send(Item(0))
        parked = [zokio.spawn(aw(tx.send(Item(k)))) for k in (1, 2)]
        await zokio.sleep(0.01)
        del rx
        gc.collect()
        items = []
        for h in parked:
            with pytest.raises(zs.ChannelClosed) as ei:
                await h
            items.append(ei.value.item.n)
        with pytest.raises(zs.ChannelClosed):
            await tx.send(3)
        return items

    assert rt.block_on(main()) == [1, 2]


# ---- cancellation ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_cancelled_parked_recv_and_send(rt1):
    async def main():
        tx, rx = zs.channel(1)
        r = zokio.spawn(aw(rx.recv()))
        await zokio.yield_now()
        r.cancel()
        with pytest.raises(zokio.Cancelled):
            await r
        await tx.send("kept")                 # not handed to the dead recv
        s = zokio.spawn(aw(tx.send("never")))     # full: parks
        await zokio.yield_now()
        s.cancel()
        with pytest.raises(zokio.Cancelled):
            await s
        assert await rx.recv() == "kept"
        with pytest.raises(zs.QueueEmpty):
            rx.try_recv()                     # the cancelled send sent nothing
        with pytest.raises(TimeoutError):
            async with zokio.timeout(0.02):
                await rx.recv()
        await tx.send("after timeout")
        return await rx.recv()

    assert rt1.block_on(main()) == "after timeout"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 2])
def test_recv_cancelled_as_the_send_lands_loses_nothing(make_runtime, threads):
    """Each round a task parks in recv(); a second task sends and cancels it
    in the same breath (in both orders).  Whatever the cancelled recv
    resumed with is recorded; the rest must still be in the channel."""
    rt = make_runtime(threads)
    rounds = 400

    async def main():
        tx, rx = zs.channel(4)
        received, leftover = [], []

        async def receiver():
            x = await rx.recv()
            received.append(x)          # runs even if a cancel is pending
            await zokio.yield_now()     # the deferred cancel lands here

        for i in range(rounds):
            h = zokio.spawn(receiver())
            for _ in range(i % 3):
                await zokio.yield_now()
            if i % 2:
                await tx.send(i)
                h.cancel()
            else:
                h.cancel()
                await tx.send(i)
            try:
                await h
            except zokio.Cancelled:
                pass
            while True:
                try:
                    leftover.append(rx.try_recv())
                except zs.QueueEmpty:
                    break
        return received, leftover

    received, leftover = rt.block_on(main())
    assert sorted(received + leftover) == list(range(rounds))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 2])
def test_send_cancelled_as_a_slot_frees_sends_nothing_or_completes(make_runtime, threads):
    rt = make_runtime(threads)
    rounds = 400

    async def main():
        tx, rx = zs.channel(1)
        done = []

        async def sender(i):
            await tx.send(i)
            done.append(i)               # the send completed
            await zokio.yield_now()

        got = []
        for i in range(rounds):
            await tx.send(("fill", i))
            h = zokio.spawn(sender(i))
            for _ in range(i % 3):
                await zokio.yield_now()
            if i % 2:
                got.append(await rx.recv())  # frees the slot: the sender's item moves in
                h.cancel()
            else:
                h.cancel()
                got.append(await rx.recv())
            try:
                await h
            except zokio.Cancelled:
                pass
            while True:
                try:
                    got.append(rx.try_recv())
                except zs.QueueEmpty:
                    break
        return done, got

    done, got = rt.block_on(main())
    fills = [g for g in got if isinstance(g, tuple)]
    sent = [g for g in got if not isinstance(g, tuple)]
    assert fills == [("fill", i) for i in range(rounds)]
    assert sent == done  # exactly the completed sends arrived, once each


@pytest.mark.timeout(30)
def test_budget_spent_yields_and_a_cancel_there_is_deferred(rt1):
    """A producer that never waits (unbounded) still lets the other task of
    its worker run; being cancelled at that forced yield does not undo the
    send it made."""
    async def main():
        tx, rx = zs.unbounded_channel()
        ticks = []

        async def ticker():
            while True:
                ticks.append(len(rx))
                await zokio.yield_now()

        t = zokio.spawn(ticker())
        await zokio.yield_now()
        for i in range(5000):
            await tx.send(i)
        t.cancel()
        n_ticks = len(ticks)

        sent = []

        async def producer():
            i = 0
            while True:
                await tx.send(("p", i))
                sent.append(i)
                i += 1

        p = zokio.spawn(producer())
        for _ in range(5):
            await zokio.yield_now()
        p.cancel()
        with pytest.raises(zokio.Cancelled):
            await p
        got = []
        while len(rx):
            got.append(rx.try_recv())
        return n_ticks, got, sent

    n_ticks, got, sent = rt1.block_on(main())
    assert n_ticks >= 5000 // 200
    assert got[:5000] == list(range(5000))
    assert [g[1] for g in got[5000:]] == sent


# ---- plain threads --------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_plain_threads_send_blocking_into_bounded_while_workers_receive(make_runtime):
    rt = make_runtime(2)
    tx, rx = zs.channel(4)
    n_threads, per = 4, 500
    errors = []

    clones = [tx.clone() for _ in range(n_threads)]

    def producer(t):
        try:
            s = clones[t]
            for i in range(per):
                s.send_blocking((t, i))
            s.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]

    async def main():
        for th in threads:
            th.start()
        tx.close()
        return [x async for x in rx]

    got = rt.block_on(main())
    for th in threads:
        th.join()
    assert not errors
    assert sorted(got) == [(t, i) for t in range(n_threads) for i in range(per)]
    for t in range(n_threads):
        assert [i for (tt, i) in got if tt == t] == list(range(per))


@pytest.mark.timeout(60)
def test_plain_threads_recv_blocking_while_workers_send(make_runtime):
    rt = make_runtime(2)
    tx, rx = zs.channel(2)
    results = [[] for _ in range(3)]

    def consumer(k):
        while True:
            try:
                results[k].append(rx.recv_blocking())
            except zs.ChannelClosed:
                return

    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()

    async def producer(p, tx):
        for i in range(300):
            await tx.send((p, i))
        tx.close()

    async def main():
        hs = [zokio.spawn(producer(p, tx.clone())) for p in range(4)]
        tx.close()
        for h in hs:
            await h

    rt.block_on(main())
    for th in threads:
        th.join(10)
        assert not th.is_alive()
    got = [x for r in results for x in r]
    assert sorted(got) == [(p, i) for p in range(4) for i in range(300)]


@pytest.mark.timeout(30)
def test_blocking_timeouts_and_worker_refusal(rt):
    tx, rx = zs.channel(1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        rx.recv_blocking(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    tx.send_blocking("a")
    with pytest.raises(TimeoutError):
        tx.send_blocking("b", timeout=0.05)
    assert rx.recv_blocking(timeout=1) == "a"
    with pytest.raises(zs.QueueEmpty):
        rx.try_recv()                     # the timed-out send sent nothing

    async def on_worker():
        with pytest.raises(RuntimeError):
            tx.send_blocking(1)
        with pytest.raises(RuntimeError):
            rx.recv_blocking()
        return True

    assert rt.block_on(on_worker())


@pytest.mark.timeout(30)
def test_blocked_plain_thread_does_not_block_workers(rt):
    """A plain thread parked in recv_blocking leaves every worker free."""
    tx, rx = zs.channel(1)
    got = []
    th = threading.Thread(target=lambda: got.append(rx.recv_blocking()))
    th.start()
    time.sleep(0.05)

    async def busy():
        total = 0
        for _ in range(200):
            await zokio.sleep(0)
            total += 1
        return total

    async def main():
        hs = [zokio.spawn(busy()) for _ in range(4)]
        r = [await h for h in hs]
        await tx.send("wake")
        return r

    assert rt.block_on(main()) == [200] * 4
    th.join(5)
    assert got == ["wake"]


@pytest.mark.timeout(30)
def test_recv_blocking_races_timeouts_with_sends_loses_nothing(rt):
    """Plain threads with tiny timeouts against a sender: an item granted as
    the timeout expires is returned, never dropped."""
    tx, rx = zs.unbounded_channel()
    got, stop = [], threading.Event()

    def consumer():
        while not stop.is_set() or len(rx):
            try:
                got.append(rx.recv_blocking(timeout=0.0005))
            except TimeoutError:
                pass

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for th in threads:
        th.start()

    async def main():
        for i in range(2000):
            await tx.send(i)
            if i % 50 == 0:
                await zokio.sleep(0.001)

    rt.block_on(main())
    time.sleep(0.05)
    stop.set()
    for th in threads:
        th.join(10)
    assert sorted(got) == list(range(2000))


# ---- garbage collection ----------------------------------------------------------------

@pytest.mark.timeout(30)
def test_gc_of_channel_cycle_with_parked_waiters_and_buffered_items():
    """A channel whose items refer back to its own halves, with a parked
    sender and a receiver waiter nobody awaits: all of it is collected."""
    gc.collect()
    refs = []

    def build():
        tx, rx = zs.channel(2)
        a, b = Item(1), Item(2)
        a.tx, b.rx = tx, rx           # cycles through the buffer
        tx.try_send(a)
        tx.try_send(b)
        c = Item(3)
        c.tx = tx
        w = tx.send(c)                # full: parks c on a Waiter
        assert type(w) is _native.Waiter and not w.done()
        c.w = w                       # a cycle through the parked waiter
        refs.extend(weakref.ref(o) for o in (a, b, c, tx, rx))

    build()
    gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None] * 5

    def build_recv():
        tx, rx = zs.channel(2)
        w = rx.recv()                  # empty: parks
        it = Item(4)
        it.w, it.rx = w, rx
        tx.try_send(it)                # handed to the parked waiter
        assert w.done()
        refs2.extend(weakref.ref(o) for o in (it, tx, rx))

    refs2 = []
    build_recv()
    gc.collect()
    gc.collect()
    assert [r() for r in refs2] == [None] * 3


@pytest.mark.timeout(30)
def test_dropped_granted_receiver_waiter_gives_item_back():
    tx, rx = zs.channel(2)
    w = rx.recv()
    tx.try_send("first")              # handed to w
    tx.try_send("second")
    assert w.done() and len(rx) == 1
    del w                             # never consumed: back to the front
    assert len(rx) == 2
    assert [rx.try_recv(), rx.try_recv()] == ["first", "second"]


@pytest.mark.timeout(60)
def test_tasks_abandoned_at_shutdown_leave_the_channel_consistent(make_runtime):
    """Runtime shutdown closes coroutines parked in recv and in send: the
    parked send sends nothing, and the parked recv no longer takes items."""
    rt = make_runtime(2)
    tx, rx = zs.channel(1)
    other_tx, other_rx = zs.channel(1)

    async def main():
        zokio.spawn(aw(other_rx.recv()))          # parks forever
        await tx.send("in")
        zokio.spawn(aw(tx.send("parked")))        # parks forever
        await zokio.sleep(0.01)

    rt.block_on(main())
    rt.shutdown(timeout=5)
    gc.collect()
    assert rx.try_recv() == "in"
    with pytest.raises(zs.QueueEmpty):
        rx.try_recv()                              # "parked" was never sent
    other_tx.try_send("x")                         # not handed to the dead recv
    with pytest.raises(zs.QueueFull):
        other_tx.try_send("y")
    assert other_rx.try_recv() == "x"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("op", ["send", "recv"])
def test_cancel_deferred_by_a_shield_at_a_spent_budget_still_does_every_operation(rt1, op):
    """A task in a shielded scope is cancelled (by itself, mid-loop) while
    it sends (receives) thousands of times without waiting: the next spent
    budget meets the pending cancel and hands out a deferred operation that
    yields first; the shield defers the cancel, the task is resumed, and the
    operation must then happen -- nothing skipped, no None received.  The
    cancel lands when the shield ends."""
    n = 2000

    async def main():
        tx, rx = zs.unbounded_channel()
        if op == "recv":
            for i in range(n):
                tx.try_send(i)
        out, kinds = [], set()

        async def worker():
            me = _native.current_task()
            with zokio.CancelScope(shield=True):
                for i in range(n):
                    if i == 700:
                        me.cancel()
                    a = tx.send(i) if op == "send" else rx.recv()
                    kinds.add(type(a).__name__)
                    r = await a
                    if op == "recv":
                        out.append(r)
            await zokio.sleep(10)                 # the deferred cancel lands

        h = zokio.spawn(worker())
        with pytest.raises(zokio.Cancelled):
            await h
        if op == "send":
            while len(rx):
                out.append(rx.try_recv())
        return out, kinds

    out, kinds = rt1.block_on(main())
    assert out == list(range(n))
    assert "ChannelRetry" in kinds, kinds   # the deferred path was taken
