"""A hypothesis stateful model of Semaphore (the batch semaphore under every
lock of zokio.sync) against a few lines of Python: acquire n / try_acquire /
release / cancel of a parked acquirer / cancel of a grant that never reached
its task, in any order.  The awaitables are inspected directly (no task
needed): acquire() returns an already complete Ready or a parked Waiter."""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zokio import _native
from zokio.sync import Semaphore

# Takes a completed waiter's outcome as its task's await would (marks it
# consumed, so it is not given back when it dies).
_take = _native._WaitListProbe().outcome


class SemaphoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.initial = 3
        self.sem = Semaphore(self.initial)
        self.permits = self.initial
        self.queue = []       # [waiter, want, got], FIFO
        self.granted = []     # [waiter, want]: completed, held by "its task"
        self.held = []        # amounts held by fast-path acquirers
        self.total = self.initial  # permits that exist

    # -- the model's release: head first, in order ---------------------------
    def _assign(self, n):
        while n > 0 and self.queue:
            head = self.queue[0]
            need = head[1] - head[2]
            if need > n:
                head[2] += n
                return
            n -= need
            self.queue.pop(0)
            self.granted.append([head[0], head[1]])
        self.permits += n

    @rule(n=st.integers(0, 4))
    def acquire(self, n):
        r = self.sem.acquire(n)
        if self.permits >= n:
            assert type(r) is _native.Ready
            self.permits -= n
            self.held.append(n)
        else:
            assert type(r) is _native.Waiter and not r.done()
            self.queue.append([r, n, self.permits])
            self.permits = 0

    @rule(n=st.integers(1, 4))
    def try_acquire(self, n):
        ok = self.sem.try_acquire(n)
        assert ok == (self.permits >= n)
        if ok:
            self.permits -= n
            self.held.append(n)

    @rule(n=st.integers(1, 3))
    def release_new(self, n):
        self.sem.release(n)
        self.total += n
        self._assign(n)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 100))
    def release_held(self, i):
        n = self.held.pop(i % len(self.held))
        self.sem.release(n)
        self._assign(n)

    @precondition(lambda self: self.granted)
    @rule(i=st.integers(0, 100))
    def release_granted(self, i):
        w, n = self.granted.pop(i % len(self.granted))
        assert w.done()
        assert _take(w) is True  # the task's `await sem.acquire(n)` returns True
        self.sem.release(n)
        self._assign(n)

    @precondition(lambda self: self.queue)
    @rule(i=st.integers(0, 100))
    def cancel_parked(self, i):
        """A cancelled acquirer leaves the queue; a part it got goes on."""
        w, want, got = self.queue.pop(i % len(self.queue))
        w.close()
        assert w.state == "removed"
        self._assign(got)

    @precondition(lambda self: self.granted)
    @rule(i=st.integers(0, 100))
    def cancel_granted_unconsumed(self, i):
        """The grant landed but its task was closed before taking it."""
        w, n = self.granted.pop(i % len(self.granted))
        w.close()
        self._assign(n)

    @invariant()
    def matches(self):
        assert self.sem.available == self.permits
        assert self.sem.waiting == len(self.queue)
        assert self.permits == 0 or not self.queue  # no one waits while permits are free
        for w, want, got in self.queue:
            assert not w.done() and w.state == "linked" and w.got == got
        for w, _ in self.granted:
            assert w.done() and w.state == "granted"

    def teardown(self):
        for w, _, _ in self.queue:
            w.close()
        for w, n in self.granted:
            _take(w)
            self.sem.release(n)
        for n in self.held:
            self.sem.release(n)
        assert self.sem.waiting == 0
        assert self.sem.available == self.total  # no permit leaked or doubled


TestSemaphoreModel = SemaphoreModel.TestCase
TestSemaphoreModel.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
