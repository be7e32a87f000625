"""The ``timeout`` argument of every wait a plain thread makes reads the same
way (docs/api.md, Runtime): None, inf or more than a wait can represent is
no limit; 0 or less is a poll; NaN is ValueError; a non-number TypeError.

Before, the waits disagreed: NaN or 1e300 converted to a negative int64
made Event/Notify/Semaphore/Lock waits block forever on NaN; the Python
channels and ``JoinHandle.result`` raised OverflowError ("timestamp out of
range") for 1e300; ``result(nan)`` timed out at once."""
from __future__ import annotations

import math
import threading

import pytest

import zokio
from zokio import sync


def _event():
    e = sync.Event()
    return (lambda t: e.wait_blocking(timeout=t)), e.set


def _notify():
    n = sync.Notify()
    return (lambda t: n.wait_blocking(timeout=t)), n.notify_one


def _semaphore():
    s = sync.Semaphore(0)
    return (lambda t: s.acquire_blocking(timeout=t)), s.release


def _lock():
    lock = sync.Lock()
    assert lock.acquire_blocking()
    return (lambda t: lock.acquire_blocking(timeout=t)), lock.release


def _mpsc_recv():
    tx, rx = sync.channel(4)
    return (lambda t: rx.recv_blocking(timeout=t)), (lambda: tx.send_blocking(1))


def _mpsc_send():
    tx, rx = sync.channel(1)
    tx.send_blocking(0)                       # full: the next send waits
    return (lambda t: tx.send_blocking(1, timeout=t)), rx.recv_blocking


def _oneshot():
    tx, rx = sync.oneshot()
    return (lambda t: rx.recv_blocking(timeout=t)), (lambda: tx.send(1))


def _broadcast():
    tx, rx = sync.broadcast(4)
    return (lambda t: rx.recv_blocking(timeout=t)), (lambda: tx.send(1))


def _watch():
    tx, rx = sync.watch(0)
    return (lambda t: rx.recv_blocking(timeout=t)), (lambda: tx.send(1))


WAITS = {"Event.wait_blocking": _event, "Notify.wait_blocking": _notify,
         "Semaphore.acquire_blocking": _semaphore, "Lock.acquire_blocking": _lock,
         "mpsc recv_blocking": _mpsc_recv, "mpsc send_blocking": _mpsc_send,
         "oneshot recv_blocking": _oneshot, "broadcast recv_blocking": _broadcast,
         "watch recv_blocking": _watch}


def _timed_out(wait, timeout):
    """True if the wait ended unsatisfied (False result or TimeoutError)."""
    try:
        return wait(timeout) is False
    except TimeoutError:
        return True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(WAITS))
def test_every_plain_thread_wait_reads_its_timeout_the_same_way(kind):
    wait, satisfy = WAITS[kind]()
    with pytest.raises(ValueError, match="NaN"):
        wait(float("nan"))
    with pytest.raises(TypeError):
        wait("1")
    assert _timed_out(wait, 0)
    assert _timed_out(wait, -5)
    for no_limit in (math.inf, 1e300):
        wait, satisfy = WAITS[kind]()
        threading.Timer(0.05, satisfy).start()
        assert not _timed_out(wait, no_limit), (kind, no_limit)


@pytest.mark.timeout(30)
def test_join_handle_result_reads_its_timeout_the_same_way(make_runtime):
    rt = make_runtime(2)
    gate = threading.Event()

    async def slow():
        await zokio.spawn_blocking(gate.wait)
        return 5

    h = rt.spawn(slow())
    with pytest.raises(ValueError, match="NaN"):
        h.result(timeout=float("nan"))
    with pytest.raises(TypeError):
        h.result(timeout="1")
    with pytest.raises(TimeoutError):
        h.result(timeout=-1)
    threading.Timer(0.05, gate.set).start()
    assert h.result(timeout=1e300) == 5
    assert rt.spawn(slow()).result(timeout=math.inf) == 5


@pytest.mark.timeout(30)
def test_shutdown_reads_its_timeout_the_same_way(make_runtime):
    rt = make_runtime(2)
    with pytest.raises(ValueError, match="NaN"):
        rt.shutdown(timeout=float("nan"))
    with pytest.raises(TypeError):
        rt.shutdown(timeout="1")
    assert not rt.closed
    rt.shutdown(timeout=1e300)          # OverflowError from a join before
    assert rt.closed
