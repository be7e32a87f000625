"""Model tests for the hierarchical timer wheel (native/core/timer_wheel.c).

The wheel is driven through ``_native_testing.TestTimerWheel`` and compared
with a ``SortedList`` of ``(deadline, seq, id)``: the wheel must fire exactly the
model's entries with ``deadline <= now``, in deadline order (insertion order
among equal deadlines), each at the first poll that reaches it.

Set ZOKIO_TW_EXAMPLES (e.g. 2000) for a long hypothesis run.
"""
import os
import random
import time

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sortedcontainers import SortedList

from zokio._native_testing import TestTimerWheel as TW

U64 = 2**64 - 1
SLOT_BITS = 6
LEVELS = 6
WHEEL_BITS = SLOT_BITS * LEVELS  # the wheel spans 2**36 ticks

# 64**k and its neighbours: the places where the level of a timer changes.
LEVEL_EDGES = sorted(
    {64**k + o for k in range(1, LEVELS + 2) for o in (-1, 0, 1)}
    | {2**40, 2**50, 2**62}
)


def expected_next_expiration(elapsed, earliest):
    """What zk_wheel_next_expiration returns by design for the earliest
    deadline: the start of the slot holding it.  That is the deadline itself
    at level 0, the deadline with its low 6k bits cleared at level k, and the
    next 2**36 boundary for deadlines beyond the wheel's range."""
    if earliest <= elapsed:  # due, waiting on the wheel's pending list
        return earliest
    diff = elapsed ^ earliest
    if diff >> WHEEL_BITS:
        return ((elapsed >> WHEEL_BITS) + 1) << WHEEL_BITS
    level = (diff.bit_length() - 1) // SLOT_BITS
    return earliest & ~((1 << (SLOT_BITS * level)) - 1)


# ---------------------------------------------------------------------------
# Model-based state machine
# ---------------------------------------------------------------------------

starts = st.one_of(
    st.sampled_from(
        [0, 1, 63, 64, 4095, 4096, 2**36 - 2, 2**36 - 1, 2**36, 2**64 - 2**37, U64 - 70]
    ),
    st.integers(0, 2**50),
)

# Offsets from now for a new deadline.
deltas = st.one_of(
    st.integers(0, 130),
    st.sampled_from(LEVEL_EDGES),
    st.integers(0, 2**24),
    st.integers(0, 2**40),
)

# Steps for advancing time.
steps = st.one_of(
    st.integers(0, 70),
    st.sampled_from(LEVEL_EDGES),
    st.integers(0, 2**20),
    st.integers(0, 2**38),
)


class TimerWheelMachine(RuleBasedStateMachine):
    @initialize(start=starts)
    def setup(self, start):
        self.wheel = TW(start)
        self.model = SortedList()  # (deadline, seq, id)
        self.by_id = {}  # id -> (deadline, seq)
        self.seq = 0
        self.elapsed = start
        # Every entry with deadline <= drained has fired (a poll ran to NULL).
        self.drained = start

    # -- inserting ---------------------------------------------------------

    def _insert(self, deadline):
        deadline = min(deadline, U64)
        self.seq += 1
        tid = self.seq
        ok = self.wheel.insert(tid, deadline)
        assert ok == (deadline > self.elapsed)
        if ok:
            self.model.add((deadline, tid, tid))
            self.by_id[tid] = (deadline, tid)

    @rule(delta=deltas)
    def insert_relative(self, delta):
        self._insert(self.elapsed + delta)

    @rule(k=st.integers(1, LEVELS + 1), ahead=st.integers(0, 3), off=st.integers(-2, 2))
    def insert_at_level_edge(self, k, ahead, off):
        # Just around an absolute multiple of 64**k after now: where the
        # wheel hands entries from one level to the next.
        unit = 64**k
        edge = (self.elapsed // unit + ahead) * unit
        self._insert(max(0, edge + off))

    @rule(deadline=st.integers(0, U64))
    def insert_absolute(self, deadline):
        self._insert(deadline)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def insert_same_deadline(self, data):
        # Equal deadlines must fire in insertion order.
        d, _, _ = data.draw(st.sampled_from(list(self.model)))
        self._insert(d)

    @rule(tid=st.integers(-5, 0))
    def insert_duplicate_or_odd_id(self, tid):
        # Negative and zero ids are fine; an id already linked is rejected.
        if self.wheel.contains(tid):
            with pytest.raises(ValueError):
                self.wheel.insert(tid, self.elapsed + 1)
            return
        deadline = min(self.elapsed + 1 + abs(tid), U64)
        ok = self.wheel.insert(tid, deadline)
        assert ok == (deadline > self.elapsed)
        if ok:
            self.seq += 1
            self.model.add((deadline, self.seq, tid))
            self.by_id[tid] = (deadline, self.seq)

    # -- cancelling --------------------------------------------------------

    @precondition(lambda self: len(self.by_id) > 0)
    @rule(data=st.data())
    def cancel(self, data):
        tid = data.draw(st.sampled_from(sorted(self.by_id)))
        deadline, seq = self.by_id.pop(tid)
        self.model.remove((deadline, seq, tid))
        assert self.wheel.remove(tid) is True
        assert self.wheel.remove(tid) is False

    @rule(tid=st.integers(10**12, 10**12 + 5))
    def cancel_unknown(self, tid):
        assert self.wheel.remove(tid) is False

    # -- advancing ---------------------------------------------------------

    def _due(self, now):
        return [(tid, d) for d, _, tid in self.model.irange(maximum=(now, U64, U64))]

    def _forget(self, fired):
        for tid, d in fired:
            _, seq = self.by_id.pop(tid)
            self.model.remove((d, seq, tid))

    def _poll(self, now):
        now = min(now, U64)
        expected = self._due(now)
        fired = self.wheel.poll(now)
        assert fired == expected
        for _, d in fired:
            # Never early, never late: fired by the first poll reaching it.
            assert self.drained < d <= now
        self._forget(fired)
        self.elapsed = max(self.elapsed, now)
        self.drained = max(self.drained, now)

    @rule(step=steps)
    def advance(self, step):
        self._poll(self.elapsed + step)

    @precondition(lambda self: len(self.model) > 0)
    @rule(off=st.integers(-1, 1))
    def advance_to_next_deadline(self, off):
        self._poll(max(self.elapsed, self.model[0][0] + off))

    @rule(extra=st.integers(0, 1))
    def advance_to_next_expiration(self, extra):
        nx = self.wheel.next_expiration()
        if nx is not None:
            self._poll(nx + extra)

    @rule()
    def advance_to_end_of_time(self):
        self._poll(U64)

    @precondition(lambda self: self.elapsed > 0)
    @rule(back=st.integers(1, 2**20))
    def poll_in_the_past(self, back):
        # A stale `now` fires nothing and does not move the wheel back.
        assert self.wheel.poll(max(0, self.elapsed - back)) == []
        assert self.wheel.poll_one(max(0, self.elapsed - back)) is None

    @rule(step=steps)
    def poll_one(self, step):
        # A single zk_wheel_poll step: leaves the rest of a due batch on the
        # pending list, so later rules insert and cancel around it.
        now = min(self.elapsed + step, U64)
        got = self.wheel.poll_one(now)
        if self.model and self.model[0][0] <= now:
            d, _, tid = self.model[0]
            assert got == (tid, d)
            assert self.drained < d
            self._forget([got])
            self.elapsed = d  # the wheel stops at the deadline it handed out
        else:
            assert got is None
            self.elapsed = max(self.elapsed, now)
            self.drained = max(self.drained, now)

    # -- invariants --------------------------------------------------------

    @invariant()
    def matches_model(self):
        assert len(self.wheel) == len(self.model)
        assert self.wheel.elapsed == self.elapsed
        nx = self.wheel.next_expiration()
        if not self.model:
            assert nx is None
            return
        earliest = self.model[0][0]
        assert earliest > self.drained and earliest >= self.elapsed
        if nx is None:
            # Only a timer due at 2**64 - 1 is indistinguishable from
            # ZK_WHEEL_NEVER; it fires when now reaches that value.
            assert earliest == U64
            return
        assert nx <= earliest
        assert nx > self.drained or nx == earliest
        assert nx == expected_next_expiration(self.elapsed, earliest)
        if (earliest ^ self.elapsed) < 64:  # level 0 (or pending): exact
            assert nx == earliest


MODEL_EXAMPLES = int(os.environ.get("ZOKIO_TW_EXAMPLES", "150"))
TimerWheelMachine.TestCase.settings = settings(
    max_examples=MODEL_EXAMPLES,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# About 0.1 s per example; long runs (ZOKIO_TW_EXAMPLES) get a longer timeout.
TestTimerWheelModel = pytest.mark.timeout(max(120, MODEL_EXAMPLES // 2))(
    TimerWheelMachine.TestCase
)


# ---------------------------------------------------------------------------
# Targeted tests
# ---------------------------------------------------------------------------

BOUNDARY_STARTS = [0, 1, 62, 63, 64, 4095, 4096, 64**3 - 1, 2**36 - 1, 2**36, 12345678901]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start", BOUNDARY_STARTS)
def test_boundaries_fire_exactly_at_deadline(start):
    for delta in [1, 2] + LEVEL_EDGES:
        w = TW(start)
        d = start + delta
        assert w.insert(7, d) is True
        nx = w.next_expiration()
        assert nx == expected_next_expiration(start, d)
        assert start < nx <= d
        assert w.poll(d - 1) == []
        assert w.elapsed == d - 1
        assert len(w) == 1
        assert w.next_expiration() == d
        assert w.poll(d) == [(7, d)]
        assert len(w) == 0 and w.next_expiration() is None


@pytest.mark.timeout(60)
def test_absolute_level_edges():
    # Deadlines on and around multiples of 64**k, reached in small and big
    # jumps, from a start just before such a multiple.
    for k in range(1, LEVELS + 2):
        unit = 64**k
        for start in (unit - 1, unit - 2, 3 * unit - 1):
            w = TW(start)
            ds = [start + 1, unit * (start // unit + 1), unit * (start // unit + 1) + 1,
                  unit * (start // unit + 2) - 1, unit * (start // unit + 2)]
            for i, d in enumerate(ds):
                assert w.insert(i, d)
            got = []
            now = start
            while len(w):
                nx = w.next_expiration()
                assert nx is not None and nx > now
                now = nx
                got += w.poll(now)
            assert got == sorted(((i, d) for i, d in enumerate(ds)), key=lambda t: t[1])


def test_already_due_is_refused():
    w = TW(100)
    assert w.insert(1, 100) is False
    assert w.insert(2, 5) is False
    assert w.insert(3, 0) is False
    assert len(w) == 0 and not w.contains(1)
    assert w.insert(1, 101) is True  # a refused id can be used again
    assert w.poll(100) == []
    assert w.poll(101) == [(1, 101)]
    assert w.insert(4, 101) is False  # elapsed moved to 101


def test_duplicate_id_rejected_and_remove_unknown():
    w = TW(0)
    assert w.insert(1, 10)
    with pytest.raises(ValueError):
        w.insert(1, 20)
    assert w.remove(2) is False
    assert w.remove(1) is True
    assert w.remove(1) is False
    assert w.poll(100) == []
    with pytest.raises(OverflowError):
        w.insert(3, -1)
    with pytest.raises(OverflowError):
        TW(-1)


def test_empty_wheel_jumps():
    w = TW(5)
    assert w.next_expiration() is None
    assert w.poll(10**15) == []
    assert w.elapsed == 10**15
    assert w.poll(3) == []  # stale now: no effect
    assert w.elapsed == 10**15


@pytest.mark.timeout(30)
def test_far_jumps_are_not_tick_by_tick():
    # A wheel that walked tick by tick would take ages here.
    hour = 3_600_000
    w = TW(0)
    assert w.insert(1, hour)
    assert w.insert(2, 10 * hour)
    assert w.insert(3, 2**50)
    assert w.insert(4, 2**62 + 12345)
    assert w.insert(5, U64)
    assert w.poll(10 * hour) == [(1, hour), (2, 10 * hour)]
    assert w.next_expiration() <= 2**50
    assert w.poll(2**62 + 12344) == [(3, 2**50)]
    assert w.next_expiration() == 2**62 + 12345  # re-filed at level 0 by now
    assert w.poll(2**62 + 12345) == [(4, 2**62 + 12345)]
    assert w.poll(U64 - 1) == []
    assert w.poll(U64) == [(5, U64)]
    # Many timers beyond the wheel's range, spread over the whole uint64_t
    # span: one poll reaches them all without stepping 2**36 at a time.
    w = TW(0)
    far = [U64 - i * 2**40 for i in range(1000)]
    for i, d in enumerate(far):
        assert w.insert(i, d)
    assert w.poll(U64) == sorted(enumerate(far), key=lambda t: t[1])
    # Many big jumps over a nearly empty wheel.
    w = TW(0)
    w.insert(1, 2**60)
    t0 = time.perf_counter()
    for i in range(1, 20001):
        assert w.poll(i * 10 * hour) == []
    assert time.perf_counter() - t0 < 10
    assert w.poll(2**60) == [(1, 2**60)]


@pytest.mark.timeout(30)
def test_overflow_entries_fire_exactly():
    # Beyond the 2**36 range: the next expiration is the block boundary (a
    # lower bound), and entries are re-filed so they fire exactly on time.
    start = 1000
    w = TW(start)
    far = [2**36 + 5, 2**37 - 1, 2**37, 5 * 2**36 + 3, 2**45]
    for i, d in enumerate(far):
        assert w.insert(i, d)
    assert w.next_expiration() == 2**36
    assert w.poll(2**36 + 4) == []
    assert w.next_expiration() == 2**36 + 5
    fired = []
    for d in far:
        assert w.poll(d - 1) == []
        fired += w.poll(d)
    assert fired == list(enumerate(far))


@pytest.mark.timeout(60)
def test_100k_timers_fire_in_order():
    rng = random.Random(1234)
    start = 987_654_321
    w = TW(start)
    ds = []
    for i in range(100_000):
        r = rng.random()
        if r < 0.3:
            d = start + rng.randint(1, 64**2)
        elif r < 0.9:
            d = start + rng.randint(1, 2**30)
        elif r < 0.98:
            d = start + rng.randint(1, 2**40)
        else:
            d = start + rng.choice(LEVEL_EDGES)
        ds.append(d)
        assert w.insert(i, d)
    assert len(w) == 100_000
    expected = sorted(enumerate(ds), key=lambda t: (t[1], t[0]))
    # Half in many small/medium steps, the rest in one jump.
    fired = []
    now = start
    half = expected[len(expected) // 2][1]
    while now < half:
        now = min(half, now + rng.randint(1, 2**22))
        batch = w.poll(now)
        assert all(d <= now for _, d in batch)
        fired += batch
    fired += w.poll(U64)
    assert fired == expected
    assert len(w) == 0 and w.next_expiration() is None


@pytest.mark.timeout(60)
def test_remove_from_middle_is_constant_time():
    # 200k entries share one slot; removing them middle-out would cost
    # O(n^2) if remove walked the slot list.
    n = 200_000
    w = TW(0)
    for i in range(n):
        assert w.insert(i, 5000)
    mid = n // 2
    order = []
    for k in range(n // 4):
        order += [mid + k, mid - 1 - k]
    t0 = time.perf_counter()
    for i in order:
        assert w.remove(i)
    assert time.perf_counter() - t0 < 20
    assert len(w) == n - len(order)
    removed = set(order)
    assert w.poll(5000) == [(i, 5000) for i in range(n) if i not in removed]


def test_equal_deadlines_fire_in_insertion_order():
    w = TW(0)
    # Inserted at different times, so filed at different levels first.
    assert w.insert(1, 64**3 + 7)
    w.poll(64**2 + 3)
    assert w.insert(2, 64**3 + 7)
    w.poll(64**3)
    assert w.insert(3, 64**3 + 7)
    assert w.insert(0, 64**3 + 7)
    assert w.poll(64**3 + 7) == [(1, 64**3 + 7), (2, 64**3 + 7), (3, 64**3 + 7), (0, 64**3 + 7)]


def test_pending_entries_can_be_removed_and_interleaved():
    w = TW(0)
    for i in range(4):
        assert w.insert(i, 100)
    assert w.insert(10, 150)
    assert w.poll_one(200) == (0, 100)
    assert w.elapsed == 100
    assert w.next_expiration() == 100  # the rest of the batch is due
    assert len(w) == 4
    assert w.remove(2) is True  # sitting on the pending list
    assert w.insert(20, 100) is False  # not after elapsed: caller fires it
    assert w.insert(21, 120)
    assert w.poll_one(99) is None  # stale now hands out nothing
    assert w.poll(200) == [(1, 100), (3, 100), (21, 120), (10, 150)]
    assert len(w) == 0 and w.elapsed == 200


def test_dealloc_frees_linked_and_pending_entries():
    for _ in range(50):
        w = TW(0)
        for i in range(1000):
            w.insert(i, 1 + i % 7 + (i % 3) * 10**6)
        w.poll_one(10)  # leave some on the pending list
        del w


@pytest.mark.timeout(60)
def test_wrapper_is_safe_to_share_between_threads():
    # The wheel itself is single-threaded; the test wrapper serialises calls
    # with a lock, so a shared instance must stay consistent (GIL off).
    import threading

    w = TW(0)
    n_threads, per_thread = 4, 5000
    fired = []
    barrier = threading.Barrier(n_threads + 1)

    def producer(t):
        barrier.wait()
        for i in range(per_thread):
            tid = t * per_thread + i
            if i % 5 == 0:
                # Beyond the poller's range, so it cannot fire before the
                # remove below: removal must take it out for good.
                assert w.insert(tid, 200_000 + tid)
                assert w.remove(tid)
            else:
                w.insert(tid, 1 + (tid * 7919) % 100_000)

    def poller():
        barrier.wait()
        for now in range(0, 100_001, 97):
            fired.extend(w.poll(now))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    threads.append(threading.Thread(target=poller))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    fired.extend(w.poll(U64))
    assert len(w) == 0
    ids = [tid for tid, _ in fired]
    assert len(ids) == len(set(ids))
    assert all(tid % per_thread % 5 != 0 for tid in ids)
    deadlines = [d for _, d in fired]
    assert deadlines == sorted(deadlines)
