"""The native wait list (native/sync/waitlist.c) driven directly through the
test-only zokio._native._WaitListProbe: FIFO order, each waiter granted or
removed exactly once, grants that never reach their user given back, nothing
leaked; and the Waiter as a task awaits it (cancellation rules of
native/sync/waitlist.h)."""
from __future__ import annotations

import gc
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import zokio
from zokio import _native

Probe = _native._WaitListProbe


def _count(tp):
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is tp)


# ---- the list, step by step ---------------------------------------------------

# Rules draw indices, not waiters: hypothesis keeps what it draws (for its
# report), which would hold references the teardown counts.
class WaitListModel(RuleBasedStateMachine):
    """Model: `linked` (FIFO), `granted` (popped/taken, not completed),
    `done` (completed), `gone` (removed or cancelled).  Each waiter is in
    exactly one of them."""

    def __init__(self):
        super().__init__()
        self.p = Probe()
        self.linked = []
        self.granted = []
        self.done = []
        self.gone = []
        self.expected_back = 0
        self.outcomes = {}

    @rule(want=st.integers(1, 5))
    def push(self, want):
        w = self.p.push(want)
        assert w.state == "linked" and w.want == want
        self.linked.append(w)

    @rule()
    def pop(self):
        h = self.p.pop()
        if not self.linked:
            assert h is None
            return
        assert h is self.linked.pop(0)  # FIFO
        assert h.state == "granted" and not h.done()
        self.granted.append(h)

    @precondition(lambda self: self.linked)
    @rule(data=st.data())
    def take_from_middle(self, data):
        w = self.linked[data.draw(st.integers(0, len(self.linked) - 1))]
        assert self.p.take(w) is w
        self.linked.remove(w)
        self.granted.append(w)
        assert self.p.take(w) is None  # granted once only

    @precondition(lambda self: self.linked)
    @rule(data=st.data())
    def remove(self, data):
        w = self.linked[data.draw(st.integers(0, len(self.linked) - 1))]
        assert self.p.remove(w) is True
        assert self.p.remove(w) is False  # removed once only
        assert w.state == "removed"
        self.linked.remove(w)
        self.gone.append(w)

    @precondition(lambda self: self.linked)
    @rule(data=st.data(), got=st.integers(1, 4))
    def partial_grant_then_cancel(self, data, got):
        """A waiter served in part and then cancelled gives its part back."""
        w = self.linked[data.draw(st.integers(0, len(self.linked) - 1))]
        got = min(got, w.want)
        self.p.grant(w, got)
        w.close()
        assert w.state == "removed"
        self.linked.remove(w)
        self.gone.append(w)
        self.expected_back += got

    @precondition(lambda self: self.granted)
    @rule(data=st.data(), value=st.integers())
    def complete(self, data, value):
        w = self.granted[data.draw(st.integers(0, len(self.granted) - 1))]
        self.p.complete(w, value)
        assert w.done() and not w.consumed
        self.granted.remove(w)
        self.done.append(w)
        self.outcomes[id(w)] = value
        with pytest.raises(RuntimeError):
            self.p.complete(w, value)  # completed once only

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def consume(self, data):
        w = self.done[data.draw(st.integers(0, len(self.done) - 1))]
        if w.consumed:
            return
        assert self.p.outcome(w) == self.outcomes[id(w)]
        assert w.consumed
        w.close()  # nothing to give back any more
        assert w.state == "granted"

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def cancel_after_grant(self, data):
        """close() of a delivered but unconsumed grant gives it back."""
        w = self.done[data.draw(st.integers(0, len(self.done) - 1))]
        if not w.consumed:
            self.expected_back += w.got
        w.close()
        w.close()  # idempotent
        assert w.consumed
        self.done.remove(w)
        self.gone.append(w)

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def drop_unconsumed(self, data):
        """A granted waiter dropped without being consumed: dealloc gives the
        grant back."""
        w = self.done[data.draw(st.integers(0, len(self.done) - 1))]
        self.done.remove(w)
        if not w.consumed:
            self.expected_back += w.got
        del w

    @invariant()
    def list_matches_model(self):
        order = self.p.order()
        assert order == self.linked
        assert all(a is b for a, b in zip(order, self.linked))
        assert self.p.length == len(self.linked)
        assert self.p.given_back == self.expected_back
        for w in self.linked:
            assert w.state == "linked"
        for w in self.granted:
            assert w.state == "granted" and not w.done()

    def teardown(self):
        # Drain: complete the granted, remove the linked; then every waiter
        # must be referenced only by the model's lists.
        for w in self.granted:
            self.p.complete(w, None)
        for w in list(self.linked):
            assert self.p.remove(w)
        everyone = self.linked + self.granted + self.done + self.gone
        for w in everyone:
            # `everyone`, the model's list, the loop variable, the argument
            assert sys.getrefcount(w) == 4, w
        assert self.p.length == 0


TestWaitListModel = WaitListModel.TestCase
TestWaitListModel.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(30)
def test_no_waiter_or_list_outlives_its_last_reference():
    gc.collect()
    before_w, before_p = _count(_native.Waiter), _count(Probe)
    p = Probe()
    ws = [p.push(i + 1) for i in range(50)]
    for _ in range(10):
        p.complete(p.pop(), "v")
    for w in ws[10:20]:
        p.remove(w)
    del ws, w
    # The remaining 30 linked waiters and the probe form cycles
    # (list -> waiter -> owner): the collector frees them.
    del p
    assert _count(_native.Waiter) == before_w
    assert _count(Probe) == before_p


@pytest.mark.timeout(30)
def test_unconsumed_grants_come_back_exactly_once():
    p = Probe()
    a, b, c = p.push(2), p.push(3), p.push(4)
    ga = p.pop()
    p.complete(ga, 1)
    del ga
    gb = p.pop()
    p.complete(gb, 2)
    del gb
    assert p.outcome(a) == 1  # consumed: never given back
    del a
    assert p.given_back == 0
    b.close()  # delivered, not consumed: back now
    assert p.given_back == 3
    del b  # and not again from dealloc
    assert p.given_back == 3
    gc_ = p.pop()
    del gc_
    del c  # granted, never completed, dropped: dealloc gives it back
    assert p.given_back == 7


# ---- plain threads ------------------------------------------------------------

@pytest.mark.timeout(30)
def test_plain_thread_blocks_until_completed_and_times_out_otherwise():
    p = Probe()
    w = p.push()
    t0 = time.monotonic()
    assert p.block(w, 0.05) == 0  # nobody completes it
    assert time.monotonic() - t0 >= 0.045
    assert p.remove(w)

    results = []
    ws = [p.push() for _ in range(8)]
    threads = [threading.Thread(target=lambda w=w: results.append((p.block(w, 10.0), p.outcome(w))))
               for w in ws]
    for t in threads:
        t.start()
    time.sleep(0.02)
    for i in range(8):
        p.complete(p.pop(), i)
    for t in threads:
        t.join()
    assert sorted(results) == [(1, i) for i in range(8)]


@pytest.mark.timeout(60)
def test_completion_racing_a_blocked_thread_is_never_lost():
    """The futex handshake: complete() right as the thread starts to wait."""
    p = Probe()
    for i in range(2000):
        w = p.push()
        out = []
        t = threading.Thread(target=lambda: out.append(p.block(w, 5.0)))
        t.start()
        if i % 2:
            time.sleep(0)
        p.complete(p.pop(), i)
        t.join()
        assert out == [1]
        assert p.outcome(w) == i


# ---- tasks awaiting a waiter ----------------------------------------------------

@pytest.mark.timeout(30)
def test_task_wakes_with_the_value_completed_from_a_plain_thread(make_runtime):
    p = Probe()
    rt = make_runtime(threads=2)

    async def main():
        ws = [p.push() for _ in range(16)]

        async def wait(w):
            return await w

        hs = [zokio.spawn(wait(w)) for w in ws]
        await zokio.sleep(0.01)

        def complete_all():
            for i in range(16):
                p.complete(p.pop(), i)

        threading.Thread(target=complete_all).start()
        return [await h for h in hs]

    assert rt.block_on(main()) == list(range(16))  # FIFO: i-th pushed gets i


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_interrupt_of_a_linked_waiter_removes_it(make_runtime, how):
    p = Probe()
    rt = make_runtime(threads=2)

    async def main():
        a, b, c = p.push(), p.push(), p.push()

        async def wait(w):
            if how == "timeout":
                async with zokio.timeout(0.01):
                    return await w
            return await w

        h = zokio.spawn(wait(b))
        await zokio.sleep(0.005)
        if how == "cancel":
            h.cancel()
        with pytest.raises(zokio.Cancelled if how == "cancel" else TimeoutError):
            await h
        assert b.state == "removed"
        assert p.order() == [a, c]
        assert p.given_back == 0
        for w in (a, c):
            assert p.remove(w)

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_interrupt_while_the_grant_is_in_flight_delivers_the_grant_first(make_runtime):
    """Popped (GRANTED) but not completed when the cancel lands: the task
    waits for the completion, resumes with the grant, and is cancelled at its
    next suspension; nothing is given back."""
    p = Probe()
    rt = make_runtime(threads=2)

    async def main():
        w = p.push()
        seen = []

        async def wait():
            seen.append(await w)
            await zokio.sleep(10)
            seen.append("not cancelled")

        h = zokio.spawn(wait())
        await zokio.sleep(0.005)
        g = p.pop()
        h.cancel()
        await zokio.sleep(0.01)
        assert not h.done() and not seen  # waiting for the completion
        p.complete(g, "the grant")
        with pytest.raises(zokio.Cancelled):
            await h
        assert seen == ["the grant"]
        assert w.consumed and p.given_back == 0

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_waiter_of_a_task_closed_at_shutdown_leaves_the_list_or_gives_back():
    """Tasks still parked when shutdown's deadline passes are closed: a linked
    waiter leaves the list (Waiter.close); a grant still in flight comes back
    through the waiter's dealloc once it lands."""
    p = Probe()
    rt = zokio.Runtime(threads=2)
    first, stubborn, granted = p.push(), p.push(), p.push(5)

    async def ignore_cancel():
        try:
            await first
        except zokio.Cancelled:
            await stubborn  # parks again: shutdown's deadline passes

    async def wait():
        await granted

    async def main():
        zokio.spawn(ignore_cancel())
        zokio.spawn(wait())
        await zokio.sleep(0.01)

    rt.block_on(main())
    g = p.take(granted)  # granted under the lock, completion not landed
    del granted
    rt.shutdown(timeout=0.2)
    gc.collect()
    assert first.state == "removed" and stubborn.state == "removed"
    assert p.length == 0
    assert p.given_back == 0  # the grant has not landed yet
    p.complete(g, "late")
    del g
    gc.collect()
    assert p.given_back == 5  # landed on a closed task: back, once


@pytest.mark.timeout(30)
def test_waiter_completion_landing_during_shutdown_reaches_its_task():
    p = Probe()
    rt = zokio.Runtime(threads=2)
    w = p.push()
    got = []

    async def wait():
        got.append(await w)

    async def main():
        zokio.spawn(wait())
        await zokio.sleep(0.01)

    rt.block_on(main())
    g = p.pop()
    threading.Timer(0.05, p.complete, (g, "v")).start()
    rt.shutdown()  # the cancel waits for the grant in flight
    assert got == ["v"] and w.consumed and p.given_back == 0


@pytest.mark.timeout(30)
def test_waiter_awaited_outside_a_task_says_so():
    p = Probe()
    w = p.push()

    async def f():
        await w

    c = f()
    with pytest.raises(RuntimeError, match="inside a zokio task"):
        c.send(None)
    assert p.remove(w)
