"""Completion port (native/io/port.h): one conformance suite, run on both backends.

Every test drives a ``_native_testing.TestPort`` (native/testing/port_testing.c)
from the test's thread: submit ops, ``wait()`` (detached), ``process()`` to collect
``(op_id, result, data)`` records.  The contract checked here is port.h's:
each submitted op completes exactly once, only from process()/close(), with
bytes >= 0 or -errno; a cancelled op completes with -ECANCELED (or its real
result if it won the race); wake() from any thread ends a wait.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time

import pytest

# Not named Test*: pytest would try to collect the class.
from zokio._native_testing import TestPort as Port

BACKENDS = ["io_uring", "epoll"]


def _uring_or_skip(backend):
    if backend == "io_uring" and not Port.uring_available():
        pytest.skip("io_uring is not usable here")


@pytest.fixture(params=BACKENDS)
def backend(request):
    _uring_or_skip(request.param)
    return request.param


@pytest.fixture
def port(backend):
    p = Port(backend)
    yield p
    if not p.closed:
        p.close()


@pytest.fixture
def fds(port):
    """fds/sockets to close at teardown, after the port is closed (a port
    should not see its fds closed under pending ops)."""
    things = []
    yield things
    if not port.closed:
        port.close()
    for t in things:
        if isinstance(t, int):
            try:
                os.close(t)
            except OSError:
                pass
        else:
            t.close()


def socketpair(fds):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    fds += [a, b]
    return a, b


def pipe(fds):
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fds += [r, w]
    return r, w


def collect(port, ids, timeout=10.0):
    """wait/process until every op in `ids` completed; each exactly once."""
    want = set(ids)
    got = {}
    deadline = time.monotonic() + timeout
    while not want <= got.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"ops {want - got.keys()} never completed; got {got}")
        port.wait(min(left, 0.5))
        for op_id, res, data in port.process():
            assert op_id not in got, f"op {op_id} completed twice"
            got[op_id] = (res, data)
    assert got.keys() == want, f"unexpected completions {got.keys() - want}"
    return got


def assert_pending(port, duration=0.05):
    """Nothing completes within `duration`."""
    deadline = time.monotonic() + duration
    while (left := deadline - time.monotonic()) > 0:
        port.wait(left)
        assert port.process() == []


def fill(sock):
    """Write into a non-blocking socket until its buffers are full."""
    total = 0
    chunk = b"f" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def recv_exactly(sock, n, timeout=10.0):
    """Receive n bytes from a non-blocking socket (polling)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            data = sock.recv(min(n - len(out), 1 << 20))
        except BlockingIOError:
            assert time.monotonic() < deadline, f"only {len(out)} of {n} bytes"
            time.sleep(0.001)
            continue
        assert data, "unexpected EOF"
        out += data
    return bytes(out)


# --------------------------------------------------------------------------
# Basics


@pytest.mark.timeout(30)
def test_backend_name(port, backend):
    assert port.backend == backend
    assert port.inflight() == 0
    assert port.process() == []


@pytest.mark.timeout(30)
def test_socketpair_write_then_read(port, fds):
    a, b = socketpair(fds)
    w = port.submit_write(b.fileno(), b"hello world")
    assert collect(port, [w]) == {w: (11, None)}
    r = port.submit_read(a.fileno(), 100)
    assert collect(port, [r]) == {r: (11, b"hello world")}
    assert port.inflight() == 0


@pytest.mark.timeout(30)
def test_pipe_write_then_read(port, fds):
    r_fd, w_fd = pipe(fds)
    w = port.submit_write(w_fd, bytearray(b"through the pipe"))
    assert collect(port, [w])[w] == (16, None)
    r = port.submit_read(r_fd, 4)  # short buffer: a short read
    assert collect(port, [r])[r] == (4, b"thro")
    r = port.submit_read(r_fd, 100)
    assert collect(port, [r])[r] == (12, b"ugh the pipe")


@pytest.mark.timeout(30)
def test_complete_never_runs_inside_submit(port, fds):
    # The data is there already, so both backends finish at once in the
    # kernel / syscall; the record still only appears through process().
    a, b = socketpair(fds)
    b.send(b"ready")
    r = port.submit_read(a.fileno(), 10)
    assert port.inflight() == 1
    assert collect(port, [r])[r] == (5, b"ready")
    assert port.inflight() == 0


@pytest.mark.timeout(30)
def test_read_waits_for_data(port, fds):
    a, b = socketpair(fds)
    r = port.submit_read(a.fileno(), 100)
    assert_pending(port)
    assert port.inflight() == 1
    b.send(b"late")
    assert collect(port, [r])[r] == (4, b"late")


@pytest.mark.timeout(30)
def test_read_woken_by_writer_thread(port, fds):
    r_fd, w_fd = pipe(fds)
    r = port.submit_read(r_fd, 100)
    t = threading.Timer(0.1, os.write, (w_fd, b"from a thread"))
    t.start()
    try:
        start = time.monotonic()
        got = collect(port, [r])
        assert got[r] == (13, b"from a thread")
        assert time.monotonic() - start >= 0.05
    finally:
        t.join()


@pytest.mark.timeout(30)
def test_eof_reads_zero(port, fds):
    r_fd, w_fd = pipe(fds)
    r = port.submit_read(r_fd, 10)
    assert_pending(port)
    os.close(w_fd)
    fds.remove(w_fd)
    assert collect(port, [r])[r] == (0, b"")


@pytest.mark.timeout(30)
def test_large_write_waits_for_reader(port, fds):
    a, b = socketpair(fds)
    filled = fill(b)
    payload = random.Random(1).randbytes(256 * 1024)
    w = port.submit_write(b.fileno(), payload)
    assert_pending(port, 0.1)  # the socket is full: the write must wait
    assert port.inflight() == 1
    # Drain the filler; the write can then make progress.
    assert recv_exactly(a, filled) == b"f" * filled
    res, data = collect(port, [w])[w]
    assert data is None
    assert 0 < res <= len(payload)
    # A stream write may be short: resubmit the rest, like the scheduler.
    sent = res
    received = bytearray()
    while sent < len(payload):
        w = port.submit_write(b.fileno(), payload[sent:])
        while True:
            try:
                received += a.recv(1 << 20)
            except BlockingIOError:
                pass
            port.wait(0.01)
            recs = port.process()
            if recs:
                ((op_id, res, _),) = recs
                assert op_id == w and res > 0
                sent += res
                break
    received += recv_exactly(a, len(payload) - len(received))
    assert bytes(received) == payload


@pytest.mark.timeout(30)
def test_write_after_peer_closed_is_epipe(port, fds):
    r_fd, w_fd = pipe(fds)
    os.close(r_fd)
    fds.remove(r_fd)
    w = port.submit_write(w_fd, b"nobody listens")
    assert collect(port, [w])[w] == (-errno.EPIPE, None)


# --------------------------------------------------------------------------
# Cancellation


@pytest.mark.timeout(30)
def test_cancel_pending_read(port, fds):
    a, b = socketpair(fds)
    r = port.submit_read(a.fileno(), 100)
    assert_pending(port)
    port.cancel(r)
    assert port.inflight() == 1  # still ours until its completion arrives
    assert collect(port, [r])[r] == (-errno.ECANCELED, None)
    assert port.inflight() == 0
    # Cancelling again: the op is gone (completion delivered).
    with pytest.raises(KeyError):
        port.cancel(r)
    # The fd is intact and the cancelled read consumed nothing.
    b.send(b"after")
    r2 = port.submit_read(a.fileno(), 100)
    assert collect(port, [r2])[r2] == (5, b"after")


@pytest.mark.timeout(30)
def test_cancel_before_wait(port, fds):
    # Cancel right after submit, before the op ever reached a wait (for
    # io_uring the read and its cancel go to the kernel in one batch).
    a, _ = socketpair(fds)
    r = port.submit_read(a.fileno(), 100)
    port.cancel(r)
    port.cancel(r)  # a second cancel is harmless
    assert collect(port, [r])[r] == (-errno.ECANCELED, None)


@pytest.mark.timeout(30)
def test_cancel_races_completion(port, fds):
    # The data is there: the read may finish before the cancel lands.
    # Either outcome is allowed, but exactly one completion.
    a, b = socketpair(fds)
    b.send(b"x")
    r = port.submit_read(a.fileno(), 10)
    port.wait(0)
    port.cancel(r)
    res = collect(port, [r])[r]
    assert res in ((1, b"x"), (-errno.ECANCELED, None))


@pytest.mark.timeout(30)
def test_cancel_pending_write(port, fds):
    a, b = socketpair(fds)
    filled = fill(b)
    w = port.submit_write(b.fileno(), b"w" * 100000)
    assert_pending(port)
    port.cancel(w)
    assert collect(port, [w])[w] == (-errno.ECANCELED, None)
    # Nothing of the cancelled write reached the stream.
    assert recv_exactly(a, filled) == b"f" * filled
    b.send(b"end")
    assert recv_exactly(a, 3) == b"end"


@pytest.mark.timeout(30)
def test_cancel_one_of_two_readers(port, fds):
    a, b = socketpair(fds)
    r1 = port.submit_read(a.fileno(), 100)
    r2 = port.submit_read(a.fileno(), 100)
    assert_pending(port)
    port.cancel(r1)
    assert collect(port, [r1])[r1] == (-errno.ECANCELED, None)
    b.send(b"for r2")
    assert collect(port, [r2])[r2] == (6, b"for r2")


# --------------------------------------------------------------------------
# wait() and wake()


def quiet_wait(port, duration):
    """Wait out `duration` with nothing happening; return how many times
    wait() came back.  A wait may return early (port.h: EINTR is absorbed as
    a return; a wake can be spurious), so a few returns are allowed.  On this
    thread, closing an io_uring ring makes the kernel queue task work that
    interrupts the thread's next blocking syscall (epoll_wait -> EINTR), which
    the tests hit because they alternate backends on one thread."""
    start = time.monotonic()
    returns = 0
    while (left := duration - (time.monotonic() - start)) > 0:
        port.wait(left)
        returns += 1
        assert port.process() == []
    return returns


@pytest.mark.timeout(30)
def test_wait_times_out(port):
    start = time.monotonic()
    returns = quiet_wait(port, 0.3)
    elapsed = time.monotonic() - start
    assert returns <= 3, returns
    assert elapsed < 2.0, elapsed
    # And once more, now that any stray interruption has been absorbed.
    start = time.monotonic()
    port.wait(0.1)
    assert time.monotonic() - start >= 0.05
    assert port.process() == []


@pytest.mark.timeout(30)
def test_wait_zero_does_not_block(port, fds):
    a, _ = socketpair(fds)
    port.submit_read(a.fileno(), 1)
    start = time.monotonic()
    for _ in range(100):
        port.wait(0)
        assert port.process() == []
    assert time.monotonic() - start < 1.0


@pytest.mark.timeout(30)
def test_polling_with_zero_timeouts_sees_completions(port, fds):
    # A scheduler that never blocks (busy) still gets its completions from
    # wait(0) + process(): io_uring must enter with GETEVENTS when the kernel
    # holds deferred task work (DEFER_TASKRUN), epoll must poll.
    a, b = socketpair(fds)
    r = port.submit_read(a.fileno(), 10)
    port.wait(0)
    assert port.process() == []
    b.send(b"polled")
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline
        port.wait(0)
        recs = port.process()
        if recs:
            assert recs == [(r, 6, b"polled")]
            break
        time.sleep(0.001)


@pytest.mark.timeout(30)
def test_wait_with_pending_completion_does_not_block(port, fds):
    a, b = socketpair(fds)
    b.send(b"x")
    r = port.submit_read(a.fileno(), 1)
    start = time.monotonic()
    got = {}
    while r not in got:
        port.wait(None)  # would hang if the finished read did not count
        got.update((i, (res, d)) for i, res, d in port.process())
    assert got[r] == (1, b"x")
    assert time.monotonic() - start < 5.0


@pytest.mark.timeout(30)
def test_wake_from_another_thread_ends_infinite_wait(port):
    t = threading.Timer(0.2, port.wake)
    t.start()
    try:
        start = time.monotonic()
        port.wait(None)
        elapsed = time.monotonic() - start
    finally:
        t.join()
    assert elapsed < 5.0
    port.process()


@pytest.mark.timeout(30)
def test_wake_before_wait_is_not_lost(port):
    port.wake()
    start = time.monotonic()
    port.wait(None)
    assert time.monotonic() - start < 5.0
    port.process()


@pytest.mark.timeout(30)
def test_wakes_coalesce_and_then_wait_blocks_again(port):
    for _ in range(100):
        port.wake()
    port.wait(None)
    # Let the wake channel settle (a spurious return or two is allowed).
    for _ in range(3):
        port.wait(0)
        port.process()
    assert quiet_wait(port, 0.3) <= 3


@pytest.mark.timeout(30)
def test_wake_storm(port):
    """Many threads wake while the owner loops wait(None)/process: every
    wake after the last check must end a wait, so the loop always exits."""
    done = threading.Event()
    barrier = threading.Barrier(5)

    def waker():
        barrier.wait()
        for i in range(2000):
            port.wake()
            if i % 256 == 0:
                time.sleep(0)

    threads = [threading.Thread(target=waker) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait()

    def finisher():
        for t in threads:
            t.join()
        done.set()
        port.wake()

    fin = threading.Thread(target=finisher)
    fin.start()
    # The wakers may all be done before the first check; then no wait runs.
    while not done.is_set():
        port.wait(None)
        port.process()
    fin.join()


# --------------------------------------------------------------------------
# Several ops on one fd


@pytest.mark.timeout(30)
def test_reader_and_writer_on_same_fd(port, fds):
    a, b = socketpair(fds)
    r = port.submit_read(a.fileno(), 100)
    w = port.submit_write(a.fileno(), b"a->b")
    assert collect(port, [w])[w] == (4, None)  # the writer is not stuck
    assert recv_exactly(b, 4) == b"a->b"
    assert_pending(port)
    b.send(b"b->a")
    assert collect(port, [r])[r] == (4, b"b->a")


@pytest.mark.timeout(30)
def test_two_readers_on_same_fd(port, fds):
    a, b = socketpair(fds)
    r1 = port.submit_read(a.fileno(), 100)
    r2 = port.submit_read(a.fileno(), 100)
    assert_pending(port)
    assert port.inflight() == 2
    b.send(b"one")
    first = {}
    deadline = time.monotonic() + 10
    while not first:
        assert time.monotonic() < deadline
        port.wait(0.5)
        first = {i: (res, d) for i, res, d in port.process()}
    assert list(first.values()) == [(3, b"one")]
    (done_id,) = first
    other = r2 if done_id == r1 else r1
    assert_pending(port)
    b.send(b"two")
    assert collect(port, [other])[other] == (3, b"two")


@pytest.mark.timeout(30)
def test_two_writers_on_full_socket(port, fds):
    a, b = socketpair(fds)
    filled = fill(b)
    w1 = port.submit_write(b.fileno(), b"1" * 1000)
    w2 = port.submit_write(b.fileno(), b"2" * 1000)
    assert_pending(port)
    drained = bytearray()
    got = {}
    deadline = time.monotonic() + 10
    while len(got) < 2:
        assert time.monotonic() < deadline, got
        try:
            drained += a.recv(1 << 20)
        except BlockingIOError:
            pass
        port.wait(0.01)
        got.update((i, res) for i, res, _ in port.process())
    assert got[w1] > 0 and got[w2] > 0
    total = filled + got[w1] + got[w2]
    drained += recv_exactly(a, total - len(drained))
    assert drained[:filled] == b"f" * filled
    assert sorted(drained[filled:]) == sorted(b"1" * got[w1] + b"2" * got[w2])


@pytest.mark.timeout(30)
def test_many_fds_many_ops(port, fds):
    pairs = [socketpair(fds) for _ in range(40)]
    ids = {}
    for i, (a, _) in enumerate(pairs):
        ids[port.submit_read(a.fileno(), 64)] = i
    assert_pending(port)
    assert port.inflight() == 40
    for i, (_, b) in enumerate(pairs):
        b.send(b"msg%d" % i)
    got = collect(port, ids)
    for op_id, i in ids.items():
        assert got[op_id] == (len(b"msg%d" % i), b"msg%d" % i)
    assert port.inflight() == 0


# --------------------------------------------------------------------------
# Regular files


@pytest.mark.timeout(30)
def test_regular_file_pwrite_pread(port, fds, tmp_path):
    path = tmp_path / "data.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fds.append(fd)
    w = port.submit_write(fd, b"hello", offset=10)
    assert collect(port, [w])[w] == (5, None)
    assert path.read_bytes() == b"\0" * 10 + b"hello"
    r = port.submit_read(fd, 5, offset=10)
    assert collect(port, [r])[r] == (5, b"hello")
    r = port.submit_read(fd, 100, offset=3)
    assert collect(port, [r])[r] == (12, b"\0" * 7 + b"hello")
    r = port.submit_read(fd, 100, offset=1000)  # past the end
    assert collect(port, [r])[r] == (0, b"")
    # Concurrent positioned ops on one file.
    ws = [port.submit_write(fd, bytes([65 + i]) * 4, offset=100 + 4 * i) for i in range(8)]
    assert all(v == (4, None) for v in collect(port, ws).values())
    r = port.submit_read(fd, 32, offset=100)
    assert collect(port, [r])[r] == (32, b"".join(bytes([65 + i]) * 4 for i in range(8)))


@pytest.mark.timeout(30)
def test_regular_file_current_position(port, fds, tmp_path):
    path = tmp_path / "pos.bin"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fds.append(fd)
    r = port.submit_read(fd, 4)  # offset -1: the file position
    assert collect(port, [r])[r] == (4, b"0123")
    r = port.submit_read(fd, 100)
    assert collect(port, [r])[r] == (6, b"456789")


# --------------------------------------------------------------------------
# Errors


@pytest.mark.timeout(30)
def test_bad_fd_is_a_negative_result(port, fds):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # now a closed descriptor number
    r = port.submit_read(fd, 10)
    w = port.submit_write(fd, b"x")
    got = collect(port, [r, w])
    assert got == {r: (-errno.EBADF, None), w: (-errno.EBADF, None)}
    r = port.submit_read(-1, 10)
    assert collect(port, [r])[r] == (-errno.EBADF, None)


@pytest.mark.timeout(30)
def test_wrong_direction_is_ebadf(port, fds):
    r_fd, w_fd = pipe(fds)
    w = port.submit_write(r_fd, b"x")  # the read end
    r = port.submit_read(w_fd, 10)  # the write end
    got = collect(port, [r, w])
    assert got == {w: (-errno.EBADF, None), r: (-errno.EBADF, None)}


@pytest.mark.timeout(30)
def test_api_misuse(port, fds):
    with pytest.raises(KeyError):
        port.cancel(12345)
    with pytest.raises(ValueError):
        port.submit_read(0, -1)
    with pytest.raises(ValueError):
        Port("kqueue")
    port.close()
    with pytest.raises(ValueError):
        port.submit_read(0, 1)
    with pytest.raises(ValueError):
        port.wait(0)
    port.wake()  # harmless after close
    assert port.close() == []


# --------------------------------------------------------------------------
# close()


@pytest.mark.timeout(30)
def test_close_completes_pending_ops(port, fds):
    a, b = socketpair(fds)
    c, d = socketpair(fds)
    r_fd, w_fd = pipe(fds)
    pending = [port.submit_read(a.fileno(), 10) for _ in range(3)]
    pending.append(port.submit_read(r_fd, 10))
    filled = fill(d)
    pending.append(port.submit_write(d.fileno(), b"z" * 1000))
    assert_pending(port)
    # One op that finishes at once but is never processed before close.
    done_unprocessed = port.submit_write(a.fileno(), b"ok")
    assert port.inflight() == 6
    recs = port.close()
    assert port.closed
    got = {i: (res, data) for i, res, data in recs}
    assert len(recs) == len(got) == 6
    for op_id in pending:
        assert got[op_id] == (-errno.ECANCELED, None)
    assert got[done_unprocessed] == (2, None)
    # The fds are intact and the cancelled ops moved no data.
    assert recv_exactly(c, filled) == b"f" * filled
    assert recv_exactly(b, 2) == b"ok"
    os.write(w_fd, b"p")
    assert os.read(r_fd, 10) == b"p"


@pytest.mark.timeout(30)
def test_close_on_idle_port_and_reopen(backend):
    for _ in range(20):
        p = Port(backend)
        assert p.close() == []
        assert p.closed


@pytest.mark.timeout(30)
def test_dealloc_with_pending_ops(backend):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        p = Port(backend)
        for _ in range(5):
            p.submit_read(a.fileno(), 100)
        p.wait(0)
        del p  # dealloc closes: cancels and drains before the buffers go
        b.send(b"still usable")
        assert recv_exactly(a, 12) == b"still usable"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------
# A randomized mix: every op completes exactly once, inflight returns to 0.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_random_mix(port, fds, seed):
    rng = random.Random(seed)
    pairs = [socketpair(fds) for _ in range(6)]
    live = {}  # op id -> description
    done = {}
    expected_cancelled = set()
    for step in range(400):
        action = rng.random()
        a, b = rng.choice(pairs)
        if action < 0.35:
            live[port.submit_read(a.fileno(), rng.choice([1, 7, 100]))] = "read"
        elif action < 0.55:
            live[port.submit_write(a.fileno(), b"x" * rng.choice([1, 50]))] = "write"
        elif action < 0.7:
            try:
                b.send(b"y" * rng.randrange(1, 40))
            except BlockingIOError:
                try:
                    b.recv(1 << 16)
                except BlockingIOError:
                    pass
        elif action < 0.8 and live:
            victim = rng.choice(sorted(live))
            try:
                port.cancel(victim)
                expected_cancelled.add(victim)
            except KeyError:
                pass
        else:
            port.wait(rng.choice([0, 0, 0.001]))
            for op_id, res, data in port.process():
                assert op_id in live and op_id not in done
                done[op_id] = (res, data)
                del live[op_id]
        # drain the peers now and then so writes keep flowing
        if step % 50 == 0:
            for _, peer in pairs:
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    pass
        assert port.inflight() == len(live)
    for op_id in list(live):
        port.cancel(op_id)
    while live:
        port.wait(1.0)
        for op_id, res, data in port.process():
            assert op_id in live and op_id not in done
            done[op_id] = (res, data)
            del live[op_id]
    assert port.inflight() == 0
    for op_id, (res, data) in done.items():
        assert res >= 0 or res == -errno.ECANCELED, (op_id, res)
        if res == -errno.ECANCELED:
            assert data is None


# --------------------------------------------------------------------------
# Backend selection


@pytest.mark.timeout(30)
def test_auto_backend_prefers_io_uring(monkeypatch):
    monkeypatch.delenv("ZOKIO_BACKEND", raising=False)
    if os.environ.get("ZOKIO_EXPECT_NO_URING"):
        pytest.skip("io_uring not expected on this machine")
    # This machine (kernel 6.x, no seccomp filter on io_uring) has it.
    assert Port.uring_available() is True
    p = Port()
    try:
        assert p.backend == "io_uring"
    finally:
        p.close()


@pytest.mark.timeout(30)
def test_auto_backend_falls_back_consistently(monkeypatch):
    monkeypatch.delenv("ZOKIO_BACKEND", raising=False)
    p = Port("auto")
    try:
        assert p.backend == ("io_uring" if Port.uring_available() else "epoll")
    finally:
        p.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "env, requested, expected",
    [
        ("epoll", "auto", "epoll"),
        ("EPOLL", "auto", "epoll"),
        ("io_uring", "auto", "io_uring"),
        ("auto", "auto", None),
        ("epoll", "io_uring", "io_uring"),  # the env only steers AUTO
        ("io_uring", "epoll", "epoll"),
    ],
)
def test_env_selects_backend(monkeypatch, env, requested, expected):
    if expected == "io_uring" or (expected is None):
        _uring_or_skip("io_uring")
    monkeypatch.setenv("ZOKIO_BACKEND", env)
    p = Port(requested)
    try:
        assert p.backend == (expected or "io_uring")
    finally:
        p.close()


@pytest.mark.timeout(30)
def test_forced_io_uring_fails_clearly_when_unavailable(monkeypatch):
    if Port.uring_available():
        pytest.skip("io_uring is available here; nothing to refuse")
    monkeypatch.setenv("ZOKIO_BACKEND", "io_uring")
    with pytest.raises(OSError) as ei:
        Port()
    assert ei.value.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP)
    with pytest.raises(OSError):
        Port("io_uring")


@pytest.mark.timeout(60)
def test_flood_overflows_sq_and_cq(port, fds, tmp_path):
    # 10,000 ops before the first wait: more than the SQ holds (io_uring:
    # submit flushes) and more completions than the CQ holds (the kernel
    # parks the rest in its overflow list; process() flushes them back).
    path = tmp_path / "small.bin"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fds.append(fd)
    ids = [port.submit_read(fd, 3, offset=0) for _ in range(10000)]
    assert port.inflight() == 10000
    got = collect(port, ids, timeout=50)
    assert all(v == (3, b"abc") for v in got.values())
    assert port.inflight() == 0
