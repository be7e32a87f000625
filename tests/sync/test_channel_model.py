"""hypothesis stateful models of zokio.sync's channels against plain Python
models.

mpsc: every step is one call on the channel from this thread; a send or
recv that has to wait hands back its parked Waiter (a send that did not wait
hands back the shared done object, a recv the Ready holding its item), so
the model can keep many operations pending at once, complete them in any
order and withdraw them (``close()``, what closing a suspended coroutine
does).  A pending operation's outcome is read by awaiting it in a one-shot
task on a one-thread runtime.

oneshot, broadcast, watch: their synchronous surface (send, try_recv,
subscribe, close, drop) against a model, plus parked receivers woken or
withdrawn.
"""
from __future__ import annotations

import collections
import gc
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import zokio
import zokio.sync as zs
from zokio import _native

# ZOKIO_CHAN_EXAMPLES=2000 for a long run (the small kinds run a quarter).
EXAMPLES = int(os.environ.get("ZOKIO_CHAN_EXAMPLES", "40"))


def _settings(n):
    return settings(max_examples=max(1, n), stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


SETTINGS = _settings(EXAMPLES)
SMALL = _settings(EXAMPLES // 4)

def _done_type():
    tx, rx = zs.unbounded_channel()
    return type(tx.send(0))


SendDone = _done_type()
Waiter = _native.Waiter

async def _await(a):
    try:
        return ("ok", await a)
    except zs.ChannelClosed as e:
        return ("closed", e.item)


class MpscMachine(RuleBasedStateMachine):
    """The model: buffer, receivers parked (FIFO), senders parked with their
    items (FIFO), the number of live senders, whether the receiver closed."""

    def __init__(self):
        super().__init__()
        self._consumed = set()

    @initialize(cap=st.one_of(st.none(), st.integers(1, 4)))
    def setup(self, cap):
        if cap is None:
            tx, self.rx = zs.unbounded_channel()
        else:
            tx, self.rx = zs.channel(cap)
        self.cap = cap if cap is not None else 10**9
        self.rt = zokio.Runtime(threads=1)
        self.senders = [tx]
        self.buf = collections.deque()
        self.precv = collections.deque()      # parked recv waiters
        self.psend = collections.deque()      # (waiter, item)
        self.expect = {}                      # completed waiter -> expected outcome
        self.rx_closed = False
        self.next = 0

    # -- helpers ------------------------------------------------------------
    def outcome(self, a):
        """('ok', value) or ('closed', item) of a completed awaitable, read
        by awaiting it in a task."""
        return self.rt.block_on(_await(a))

    def _live(self):
        return len(self.senders)

    def _item(self):
        self.next += 1
        return f"m{self.next}"

    def _refill(self):
        while self.psend and len(self.buf) < self.cap:
            w, y = self.psend.popleft()
            self.buf.append(y)
            self.expect[w] = ("ok", None)

    def _give_back(self, x):
        if self.precv:
            r = self.precv.popleft()
            self.expect[r] = ("ok", x)
        else:
            self.buf.appendleft(x)

    def _end_receivers(self):
        while self.precv:
            self.expect[self.precv.popleft()] = ("closed", None)

    # -- sends ------------------------------------------------------------------
    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 7))
    def send(self, which):
        tx = self.senders[which % len(self.senders)]
        x = self._item()
        if self.rx_closed:
            with pytest.raises(zs.ChannelClosed) as ei:
                tx.send(x)
            assert ei.value.item == x
            return
        a = tx.send(x)
        if self.precv:
            assert type(a) is SendDone
            self.expect[self.precv.popleft()] = ("ok", x)
        elif len(self.buf) < self.cap and not self.psend:
            assert type(a) is SendDone
            self.buf.append(x)
        else:
            assert type(a) is Waiter and not a.done()
            self.psend.append((a, x))

    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 7))
    def try_send(self, which):
        tx = self.senders[which % len(self.senders)]
        x = self._item()
        if self.rx_closed:
            with pytest.raises(zs.ChannelClosed):
                tx.try_send(x)
        elif self.precv:
            tx.try_send(x)
            self.expect[self.precv.popleft()] = ("ok", x)
        elif len(self.buf) < self.cap and not self.psend:
            tx.try_send(x)
            self.buf.append(x)
        else:
            with pytest.raises(zs.QueueFull) as ei:
                tx.try_send(x)
            assert ei.value.item == x

    # -- receives ---------------------------------------------------------------
    @rule()
    def recv(self):
        if self.buf:
            x = self.buf.popleft()
            self._refill()
            a = self.rx.recv()
            # One pending at most between our own steps: read it now.
            assert self.outcome(a) == ("ok", x)
        elif self._live() == 0 or self.rx_closed:
            with pytest.raises(zs.ChannelClosed):
                self.rx.recv()
        else:
            a = self.rx.recv()
            assert type(a) is Waiter and not a.done()
            self.precv.append(a)

    @rule()
    def try_recv(self):
        if self.buf:
            x = self.buf.popleft()
            self._refill()
            assert self.rx.try_recv() == x
        elif self._live() == 0 or self.rx_closed:
            with pytest.raises(zs.ChannelClosed):
                self.rx.try_recv()
        else:
            with pytest.raises(zs.QueueEmpty):
                self.rx.try_recv()

    @rule()
    def recv_not_awaited(self):
        """A recv() that took an item but is dropped: the item goes back to
        the front."""
        if not self.buf:
            return
        x = self.buf.popleft()
        self._refill()         # the recv freed a slot: a parked send moved in
        a = self.rx.recv()
        del a
        self._give_back(x)

    # -- withdrawing (what closing a suspended coroutine does) ------------------
    @rule(data=st.data())
    def withdraw_recv(self, data):
        done = [w for w, e in self.expect.items()
                if e is not None and w.kind == 2 and w not in self._consumed]
        pool = list(self.precv) + done
        if not pool:
            return
        w = data.draw(st.sampled_from(pool))
        self._consumed.add(w)
        if w in self.precv:
            self.precv.remove(w)
            w.close()
            assert w.state == "removed"
            self.expect[w] = None  # never completes
        else:
            exp = self.expect[w]
            w.close()
            if exp[0] == "ok":
                self._give_back(exp[1])

    @precondition(lambda self: self.psend)
    @rule(data=st.data())
    def withdraw_send(self, data):
        i = data.draw(st.integers(0, len(self.psend) - 1))
        w, x = self.psend[i]
        del self.psend[i]
        w.close()
        assert w.state == "removed"
        self.expect[w] = None
        self._consumed.add(w)

    # -- taking outcomes ---------------------------------------------------------
    @rule(data=st.data())
    def consume(self, data):
        ready = [w for w, e in self.expect.items() if e is not None and w not in self._consumed]
        if not ready:
            return
        w = data.draw(st.sampled_from(ready))
        assert w.done()
        assert self.outcome(w) == self.expect[w]
        self._consumed.add(w)

    # -- ends -------------------------------------------------------------------
    @precondition(lambda self: self.senders)
    @rule()
    def clone(self):
        self.senders.append(self.senders[-1].clone())

    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 7), drop=st.booleans())
    def close_sender(self, which, drop):
        tx = self.senders.pop(which % len(self.senders))
        if drop:
            del tx
            gc.collect()
        else:
            tx.close()
            assert tx.is_closed()
            with pytest.raises(zs.ChannelClosed):
                tx.try_send("x")
        if not self.senders:
            self._end_receivers()

    @precondition(lambda self: not self.rx_closed)
    @rule()
    def close_receiver(self):
        self.rx.close()
        self.rx_closed = True
        while self.psend:
            w, x = self.psend.popleft()
            self.expect[w] = ("closed", x)
        if not self.buf:
            self._end_receivers()

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def lengths(self):
        if not hasattr(self, "rx"):
            return
        assert len(self.rx) == len(self.buf)
        for w in self.precv:
            assert w.state == "linked" and not w.done()
        for w, _ in self.psend:
            assert w.state == "linked" and not w.done()
        for w, e in self.expect.items():
            if e is not None and w not in self._consumed:
                assert w.done(), (w, e)

    def teardown(self):
        if not hasattr(self, "rx"):
            return
        self.rt.shutdown(timeout=10)
        # Everything received in the end: drain and compare.
        if not self.rx_closed:
            got = []
            while True:
                try:
                    got.append(self.rx.try_recv())
                except (zs.QueueEmpty, zs.ChannelClosed):
                    break
            # Draining frees slots: the parked sends move in, in order.
            assert got == list(self.buf) + [y for _, y in self.psend]


TestMpscModel = pytest.mark.timeout(max(120, EXAMPLES // 2))(MpscMachine.TestCase)
MpscMachine.TestCase.settings = SETTINGS


# ---- broadcast ------------------------------------------------------------------

class BroadcastMachine(RuleBasedStateMachine):
    @initialize(cap=st.integers(1, 4))
    def setup(self, cap):
        self.cap = cap
        tx, rx = zs.broadcast(cap)
        self.log = []                      # every message sent, in order
        self.rxs = [[rx, 0]]               # receiver, next index into log
        self.senders = [tx]

    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 3))
    def send(self, which):
        tx = self.senders[which % len(self.senders)]
        v = len(self.log)
        if not self.rxs:
            with pytest.raises(zs.ChannelClosed) as ei:
                tx.send(v)
            assert ei.value.item == v
            return
        assert tx.send(v) == len(self.rxs)
        self.log.append(v)

    @precondition(lambda self: self.senders)
    @rule()
    def subscribe(self):
        self.rxs.append([self.senders[0].subscribe(), len(self.log)])

    @precondition(lambda self: self.rxs)
    @rule(which=st.integers(0, 7))
    def try_recv(self, which):
        r = self.rxs[which % len(self.rxs)]
        rx, nxt = r
        oldest = max(0, len(self.log) - self.cap)
        if nxt < oldest:
            with pytest.raises(zs.Lagged) as ei:
                rx.try_recv()
            assert ei.value.missed == oldest - nxt
            r[1] = oldest
        elif nxt < len(self.log):
            assert rx.try_recv() == self.log[nxt]
            r[1] = nxt + 1
        elif not self.senders:
            with pytest.raises(zs.ChannelClosed):
                rx.try_recv()
        else:
            with pytest.raises(zs.QueueEmpty):
                rx.try_recv()

    @precondition(lambda self: self.rxs)
    @rule(which=st.integers(0, 7), drop=st.booleans())
    def close_receiver(self, which, drop):
        rx, _ = self.rxs.pop(which % len(self.rxs))
        if not drop:
            rx.close()
        del rx
        if drop:
            gc.collect()  # a traceback kept by an earlier step may still hold it

    @precondition(lambda self: self.senders)
    @rule()
    def clone(self):
        self.senders.append(self.senders[0].clone())

    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 3), drop=st.booleans())
    def close_sender(self, which, drop):
        tx = self.senders.pop(which % len(self.senders))
        if not drop:
            tx.close()
        del tx
        if drop:
            gc.collect()

    @rule()
    def idle(self):
        """Always possible (every half may be gone)."""

    @invariant()
    def counts(self):
        if hasattr(self, "rxs"):
            for rx, nxt in self.rxs:
                assert len(rx) == len(self.log) - max(nxt, len(self.log) - self.cap)


TestBroadcastModel = pytest.mark.timeout(max(120, EXAMPLES // 2))(BroadcastMachine.TestCase)
BroadcastMachine.TestCase.settings = SMALL


# ---- watch --------------------------------------------------------------------------

class WatchMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        tx, rx = zs.watch(0)
        self.value, self.version = 0, 0
        self.rxs = [[rx, 0]]
        self.senders = [tx]

    @precondition(lambda self: self.senders)
    @rule(v=st.integers(), which=st.integers(0, 3))
    def send(self, v, which):
        tx = self.senders[which % len(self.senders)]
        if not self.rxs:
            with pytest.raises(zs.ChannelClosed):
                tx.send(v)
            return
        tx.send(v)
        self.value, self.version = v, self.version + 1

    @precondition(lambda self: self.senders)
    @rule(v=st.integers())
    def send_replace(self, v):
        assert self.senders[0].send_replace(v) == self.value
        self.value, self.version = v, self.version + 1

    @precondition(lambda self: self.senders)
    @rule()
    def subscribe(self):
        self.rxs.append([self.senders[0].subscribe(), self.version])

    @precondition(lambda self: self.rxs)
    @rule(which=st.integers(0, 7))
    def try_recv(self, which):
        r = self.rxs[which % len(self.rxs)]
        rx, seen = r
        assert rx.borrow() == self.value
        assert rx.has_changed() == (seen != self.version)
        if seen != self.version:
            assert rx.try_recv() == self.value
            r[1] = self.version
        elif not self.senders:
            with pytest.raises(zs.ChannelClosed):
                rx.try_recv()
        else:
            with pytest.raises(zs.QueueEmpty):
                rx.try_recv()

    @precondition(lambda self: self.rxs)
    @rule(which=st.integers(0, 7), drop=st.booleans())
    def close_receiver(self, which, drop):
        rx, _ = self.rxs.pop(which % len(self.rxs))
        if not drop:
            rx.close()
        del rx
        if drop:
            gc.collect()  # a traceback kept by an earlier step may still hold it

    @precondition(lambda self: self.senders)
    @rule(which=st.integers(0, 3), drop=st.booleans())
    def close_sender(self, which, drop):
        tx = self.senders.pop(which % len(self.senders))
        if not drop:
            tx.close()
        del tx
        if drop:
            gc.collect()

    @precondition(lambda self: self.senders)
    @rule()
    def clone(self):
        self.senders.append(self.senders[0].clone())

    @rule()
    def idle(self):
        """Always possible (every half may be gone)."""


TestWatchModel = pytest.mark.timeout(max(120, EXAMPLES // 2))(WatchMachine.TestCase)
WatchMachine.TestCase.settings = SMALL


# ---- oneshot ------------------------------------------------------------------------

class OneshotMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.tx, self.rx = zs.oneshot()
        self.state = "pending"   # pending / sent / taken / closed
        self.rx_closed = False
        self.value = None

    @precondition(lambda self: self.tx is not None)
    @rule(v=st.integers())
    def send(self, v):
        if self.state != "pending":
            with pytest.raises(RuntimeError):
                self.tx.send(v)
        elif self.rx_closed:
            with pytest.raises(zs.ChannelClosed) as ei:
                self.tx.send(v)
            assert ei.value.item == v
            self.state = "closed"
        else:
            self.tx.send(v)
            self.state, self.value = "sent", v

    @precondition(lambda self: self.tx is not None)
    @rule(drop=st.booleans())
    def close_sender(self, drop):
        if drop:
            self.tx = None
            gc.collect()
        else:
            self.tx.close()
        if self.state == "pending":
            self.state = "closed"

    @rule()
    def close_receiver(self):
        self.rx.close()
        self.rx_closed = True

    @rule()
    def try_recv(self):
        if self.state == "sent":
            assert self.rx.try_recv() == self.value
            self.state = "taken"
        elif self.state == "pending" and not self.rx_closed:
            with pytest.raises(zs.QueueEmpty):
                self.rx.try_recv()
        else:
            with pytest.raises(zs.ChannelClosed):
                self.rx.try_recv()


TestOneshotModel = pytest.mark.timeout(max(120, EXAMPLES // 2))(OneshotMachine.TestCase)
OneshotMachine.TestCase.settings = SMALL
