"""Run queues (native/core/run_queue.c): model tests and a concurrent C stress.

The local queue is compared against a deque model.  Single-threaded, a steal
is never in progress, so the model is exact:

* push: append; when full, the oldest capacity//2 items and then the new item
  move to the inject queue in that order (FIFO preserved).
* steal_into(dst): refused (None, nothing moves) when dst holds more than
  capacity//2 items; otherwise take ceil(len(src)/2) items from the front of
  src (never more than dst has room for), append all but the last to dst and
  return the last.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from zokio import _native_testing

pytestmark = pytest.mark.timeout(120)

CAPACITIES = [2, 4, 8, 256]
# Initial values of the free-running 32-bit indices: include the wrap point.
STARTS = [0, 1, 2**31 - 1, 2**31, 2**32 - 300, 2**32 - 3, 2**32 - 1]


def make(capacity, inject=None, start=0):
    if inject is None:
        inject = _native_testing.TestInjectQueue()
    return _native_testing.TestLocalQueue(capacity, inject, start=start)


def drain_local(q):
    out = []
    while (v := q.pop()) is not None:
        out.append(v)
    return out


def drain_inject(inj):
    out = []
    while (v := inj.pop()) is not None:
        out.append(v)
    return out


# --------------------------------------------------------------------------
# model


class LocalModel:
    def __init__(self, capacity, inject_model):
        self.capacity = capacity
        self.items = deque()
        self.inject = inject_model

    def push(self, v):
        if len(self.items) < self.capacity:
            self.items.append(v)
        else:
            moved = [self.items.popleft() for _ in range(self.capacity // 2)]
            self.inject.extend(moved)
            self.inject.append(v)

    def pop(self):
        return self.items.popleft() if self.items else None

    def steal_into(self, dst):
        if len(dst.items) > dst.capacity // 2:
            return None
        n = len(self.items) - len(self.items) // 2
        n = min(n, dst.capacity - len(dst.items))
        if n == 0:
            return None
        taken = [self.items.popleft() for _ in range(n)]
        dst.items.extend(taken[:-1])
        return taken[-1]


class RunQueueMachine(RuleBasedStateMachine):
    """Two local queues sharing one inject queue, as two workers would."""

    @initialize(
        cap_a=st.sampled_from(CAPACITIES),
        cap_b=st.sampled_from(CAPACITIES),
        start_a=st.sampled_from(STARTS),
        start_b=st.sampled_from(STARTS),
    )
    def setup(self, cap_a, cap_b, start_a, start_b):
        self.inject = _native_testing.TestInjectQueue()
        self.queues = [
            _native_testing.TestLocalQueue(cap_a, self.inject, start=start_a),
            _native_testing.TestLocalQueue(cap_b, self.inject, start=start_b),
        ]
        self.minject = deque()
        self.models = [LocalModel(cap_a, self.minject), LocalModel(cap_b, self.minject)]
        self.next_value = 0

    def fresh(self):
        v = self.next_value
        self.next_value += 1
        return v

    # -- local queue ------------------------------------------------------
    @rule(i=st.integers(0, 1))
    def push(self, i):
        v = self.fresh()
        self.queues[i].push(v)
        self.models[i].push(v)

    @rule(i=st.integers(0, 1), n=st.integers(1, 300))
    def push_many(self, i, n):
        # Enough to reach overflow even at capacity 256.
        for _ in range(n):
            v = self.fresh()
            self.queues[i].push(v)
            self.models[i].push(v)

    @rule(i=st.integers(0, 1))
    def pop(self, i):
        assert self.queues[i].pop() == self.models[i].pop()

    @rule(i=st.integers(0, 1), n=st.integers(1, 300))
    def pop_many(self, i, n):
        for _ in range(n):
            assert self.queues[i].pop() == self.models[i].pop()

    @rule(src=st.integers(0, 1))
    def steal(self, src):
        dst = 1 - src
        got = self.queues[src].steal_into(self.queues[dst])
        assert got == self.models[src].steal_into(self.models[dst])

    @rule(i=st.integers(0, 1))
    def drain_and_compare(self, i):
        assert drain_local(self.queues[i]) == list(self.models[i].items)
        self.models[i].items.clear()

    # -- inject queue -------------------------------------------------------
    @rule()
    def inject_push(self):
        v = self.fresh()
        self.inject.push(v)
        self.minject.append(v)

    @rule(n=st.integers(0, 100))
    def inject_push_batch(self, n):
        vs = [self.fresh() for _ in range(n)]
        self.inject.push_batch(vs)
        self.minject.extend(vs)

    @rule()
    def inject_pop(self):
        expected = self.minject.popleft() if self.minject else None
        assert self.inject.pop() == expected

    @rule(m=st.integers(0, 120))
    def inject_pop_batch(self, m):
        expected = [self.minject.popleft() for _ in range(min(m, len(self.minject)))]
        assert self.inject.pop_batch(m) == expected

    # -- invariants -----------------------------------------------------------
    @invariant()
    def lengths_agree(self):
        for q, m in zip(self.queues, self.models):
            assert q.len() == len(m.items)
            assert q.remaining() == m.capacity - len(m.items)
        assert self.inject.len() == len(self.minject)

    def teardown(self):
        # Everything still queued comes out in model order.
        if not hasattr(self, "queues"):
            return
        for q, m in zip(self.queues, self.models):
            assert drain_local(q) == list(m.items)
        assert drain_inject(self.inject) == list(self.minject)


@pytest.mark.timeout(300)
def test_state_machine():
    run_state_machine_as_test(
        RunQueueMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --------------------------------------------------------------------------
# hand-written cases


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("start", [0, 2**32 - 3])
def test_fill_and_drain_fifo(capacity, start):
    inj = _native_testing.TestInjectQueue()
    q = make(capacity, inj, start)
    assert q.capacity == capacity
    assert q.remaining() == capacity
    for v in range(capacity):
        q.push(v)
    assert q.len() == capacity and q.remaining() == 0 and inj.len() == 0
    assert drain_local(q) == list(range(capacity))
    assert q.pop() is None and q.len() == 0 and q.remaining() == capacity


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", CAPACITIES)
def test_overflow_moves_half_plus_item(capacity):
    inj = _native_testing.TestInjectQueue()
    q = make(capacity, inj)
    for v in range(capacity + 1):
        q.push(v)
    half = capacity // 2
    # the oldest half, then the new item, in order
    assert inj.pop_batch(capacity) == list(range(half)) + [capacity]
    assert drain_local(q) == list(range(half, capacity))


@pytest.mark.timeout(60)
def test_overflow_fifo_over_many_rounds():
    inj = _native_testing.TestInjectQueue()
    q = make(4, inj)
    minj = deque()
    m = LocalModel(4, minj)
    for v in range(1000):
        q.push(v)
        m.push(v)
    # Each batch is oldest-half-then-new-item; the newer half stays local, so
    # global order is not FIFO (as in Tokio) but nothing is lost or reordered
    # within a batch.
    inj_items, local_items = drain_inject(inj), drain_local(q)
    assert inj_items == list(minj)
    assert local_items == list(m.items)
    assert inj_items[:6] == [0, 1, 4, 2, 3, 7]
    assert sorted(inj_items + local_items) == list(range(1000))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", range(0, 9))
def test_steal_half_rounded_up(n):
    inj = _native_testing.TestInjectQueue()
    src, dst = make(8, inj), make(8, inj)
    for v in range(n):
        src.push(v)
    got = src.steal_into(dst)
    k = n - n // 2
    if k == 0:
        assert got is None
    else:
        assert got == k - 1
    assert drain_local(dst) == list(range(max(k - 1, 0)))
    assert drain_local(src) == list(range(k, n))


@pytest.mark.timeout(60)
def test_steal_refused_when_dst_more_than_half_full():
    inj = _native_testing.TestInjectQueue()
    src, dst = make(8, inj), make(8, inj)
    for v in range(8):
        src.push(v)
    for v in range(100, 105):  # 5 > 8 // 2
        dst.push(v)
    assert src.steal_into(dst) is None
    assert src.len() == 8 and dst.len() == 5
    dst.pop()  # 4 == 8 // 2: allowed
    assert src.steal_into(dst) == 3
    assert drain_local(dst) == [101, 102, 103, 104, 0, 1, 2]
    assert drain_local(src) == [4, 5, 6, 7]


@pytest.mark.timeout(60)
def test_steal_capacity_two():
    inj = _native_testing.TestInjectQueue()
    src, dst = make(2, inj), make(2, inj)
    src.push(1)
    src.push(2)
    assert src.steal_into(dst) == 1  # ceil(2/2) = 1: returned, none moved
    assert dst.len() == 0 and src.len() == 1
    dst.push(7)
    dst.push(8)
    assert src.steal_into(dst) is None  # dst full
    assert dst.steal_into(src) == 7  # src holds 1 of 2: allowed
    assert drain_local(src) == [2]
    assert drain_local(dst) == [8]


@pytest.mark.timeout(60)
def test_steal_into_smaller_queue_is_clamped():
    inj = _native_testing.TestInjectQueue()
    src, dst = make(256, inj), make(4, inj)
    for v in range(256):
        src.push(v)
    dst.push(1000)
    dst.push(1001)
    # half of src is 128, but dst only has room for 2
    assert src.steal_into(dst) == 1
    assert drain_local(dst) == [1000, 1001, 0]
    assert src.len() == 254


@pytest.mark.timeout(60)
def test_steal_across_index_wrap():
    inj = _native_testing.TestInjectQueue()
    src = make(8, inj, start=2**32 - 2)
    dst = make(8, inj, start=2**32 - 5)
    for v in range(8):
        src.push(v)
    assert src.steal_into(dst) == 3
    assert dst.len() == 3 and src.len() == 4
    for v in range(8, 12):
        src.push(v)
    assert src.len() == 8
    assert drain_local(src) == list(range(4, 12))
    assert drain_local(dst) == [0, 1, 2]


@pytest.mark.timeout(60)
def test_inject_queue_basics_and_growth():
    inj = _native_testing.TestInjectQueue()
    assert inj.pop() is None and inj.pop_batch(5) == [] and inj.len() == 0
    inj.push(5)
    inj.push_batch([])
    inj.push_batch([6, 7])
    assert inj.len() == 3
    assert inj.pop_batch(0) == []
    assert inj.pop() == 5
    assert inj.pop_batch(10) == [6, 7]
    # growth with a wrapped ring
    for v in range(50):
        inj.push(v)
    assert inj.pop_batch(40) == list(range(40))
    inj.push_batch(list(range(50, 20000)))
    assert inj.len() == 20000 - 40
    assert inj.pop_batch(100000) == list(range(40, 20000))
    assert inj.len() == 0


@pytest.mark.timeout(60)
def test_big_values_roundtrip():
    inj = _native_testing.TestInjectQueue()
    q = make(4, inj)
    big = (1 << 62) - 1
    q.push(big)
    inj.push(big)
    assert q.pop() == big and inj.pop() == big


@pytest.mark.timeout(60)
def test_argument_validation():
    inj = _native_testing.TestInjectQueue()
    for bad in (0, 1, 3, 6, 512):
        with pytest.raises(ValueError):
            _native_testing.TestLocalQueue(bad, inj)
    with pytest.raises(TypeError):
        _native_testing.TestLocalQueue(4, object())
    q = make(4, inj)
    with pytest.raises(ValueError):
        q.push(-1)
    with pytest.raises(ValueError):
        inj.push(-1)
    with pytest.raises(ValueError):
        inj.pop_batch(-1)
    with pytest.raises(ValueError):
        inj.push_batch([1, -2])
    assert inj.len() == 0  # a failed batch pushes nothing
    with pytest.raises(TypeError):
        q.steal_into(inj)
    with pytest.raises(ValueError):
        q.steal_into(q)
    with pytest.raises(ValueError):
        _native_testing.TestLocalQueue.stress(2, 10, 3)


# --------------------------------------------------------------------------
# concurrent C stress (pthreads, GIL/thread state released)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("capacity", [2, 4, 8, 256])
@pytest.mark.parametrize("threads", [0, 1, 2, 3, 7])
def test_stress(threads, capacity):
    items = 100_000
    r = _native_testing.TestLocalQueue.stress(threads, items, capacity, seed=threads * 31 + capacity)
    assert r["items"] == items
    assert r["consumed"] == items
    assert r["missing"] == 0 and r["doubled"] == 0
    assert sum(r["consumed_per_thread"]) == items
    assert len(r["consumed_per_thread"]) == threads + 1
    assert r["from_local"] + r["from_steal"] + r["from_inject"] == items + r["repushed"]
    if capacity <= 8:
        assert r["from_inject"] > 0  # the owner overflowed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("capacity", [2, 4])
def test_stress_repeated(capacity):
    # Many short runs with different seeds: interleavings vary more across
    # runs than within one long run.
    for seed in range(60):
        r = _native_testing.TestLocalQueue.stress(3 + seed % 4, 20_000, capacity, seed=seed)
        assert r["consumed"] == 20_000


@pytest.mark.timeout(120)
def test_stress_from_python_threads():
    # Several stresses at once from Python threads: stress() must detach.
    import threading

    errors = []

    def run(seed):
        try:
            _native_testing.TestLocalQueue.stress(2, 30_000, 4, seed=seed)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
