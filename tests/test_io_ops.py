"""Internal I/O ops through the completion port: zokio._native.op_read(fd, n)
and op_write(fd, data) awaited inside tasks, on socketpairs and pipes (fds
non-blocking), on whichever backend ZOKIO_BACKEND selects."""
from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

import zokio
from zokio._native import op_read, op_write
from _helpers import settled


@pytest.fixture
def closer():
    things = []
    yield things
    for t in things:
        try:
            if isinstance(t, int):
                os.close(t)
            else:
                t.close()
        except OSError:
            pass


@pytest.fixture
def pipe(closer):
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    closer += [r, w]
    return r, w


@pytest.fixture
def sockpair(closer):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    closer += [a, b]
    return a.fileno(), b.fileno()


@pytest.fixture(params=["pipe", "socketpair"])
def channel(request, closer):
    """(read_fd, write_fd) of a one-way channel."""
    if request.param == "pipe":
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        closer += [r, w]
        return r, w
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    closer += [a, b]
    return b.fileno(), a.fileno()


async def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = await op_write(fd, view)
        assert 0 < n <= len(view)
        view = view[n:]


async def read_exactly(fd, n):
    out = bytearray()
    while len(out) < n:
        chunk = await op_read(fd, n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


# ---- basics -------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_write_then_read(rt, channel):
    r, w = channel

    async def main():
        n = await op_write(w, b"hello")
        data = await op_read(r, 100)
        return n, data

    assert rt.block_on(main()) == (5, b"hello")


@pytest.mark.timeout(20)
def test_echo_round_trip_socketpair(rt, sockpair):
    a, b = sockpair

    async def echo_server(rounds):
        for _ in range(rounds):
            msg = await op_read(b, 4096)
            await write_all(b, msg.upper())

    async def main():
        srv = zokio.spawn(echo_server(50))
        got = []
        for i in range(50):
            msg = f"message {i}".encode()
            await write_all(a, msg)
            got.append(await read_exactly(a, len(msg)))
        await srv
        return got

    assert rt.block_on(main()) == [f"MESSAGE {i}".encode() for i in range(50)]


@pytest.mark.timeout(20)
def test_echo_round_trip_pipes(rt, closer):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    for fd in (r1, w1, r2, w2):
        os.set_blocking(fd, False)
    closer += [r1, w1, r2, w2]

    async def echo(rounds):
        for _ in range(rounds):
            await write_all(w2, await op_read(r1, 4096))

    async def main():
        e = zokio.spawn(echo(30))
        out = []
        for i in range(30):
            msg = bytes([i]) * (i + 1)
            await write_all(w1, msg)
            out.append(await read_exactly(r2, len(msg)) == msg)
        await e
        return out

    assert all(rt.block_on(main()))


@pytest.mark.timeout(20)
def test_read_waits_for_later_write(rt, channel):
    r, w = channel

    async def reader():
        t0 = time.monotonic()
        data = await op_read(r, 64)
        return data, time.monotonic() - t0

    async def writer():
        await zokio.sleep(0.05)
        return await op_write(w, b"late")

    async def main():
        rd = zokio.spawn(reader())
        wr = zokio.spawn(writer())
        return await rd, await wr

    (data, dt), n = rt.block_on(main())
    assert data == b"late" and n == 4
    assert dt >= 0.04


@pytest.mark.timeout(20)
def test_read_woken_by_plain_thread_write(rt, channel):
    r, w = channel

    async def reader():
        return await op_read(r, 64)

    h = rt.spawn(reader())
    time.sleep(0.03)
    assert not h.done()
    os.write(w, b"from a thread")
    assert h.result(timeout=5) == b"from a thread"


@pytest.mark.timeout(20)
def test_eof_reads_empty(rt, closer):
    r, w = os.pipe()
    os.set_blocking(r, False)
    closer.append(r)

    async def main():
        h = zokio.spawn(_read(r, 10))
        await zokio.sleep(0.02)
        os.close(w)
        return await h

    assert rt.block_on(main()) == b""


async def _read(fd, n):
    return await op_read(fd, n)


@pytest.mark.timeout(20)
def test_write_accepts_buffers(rt, sockpair):
    a, b = sockpair

    async def main():
        n1 = await op_write(a, bytearray(b"ab"))
        n2 = await op_write(a, memoryview(b"xxcdxx")[2:4])
        return n1, n2, await read_exactly(b, 4)

    assert rt.block_on(main()) == (2, 2, b"abcd")


@pytest.mark.timeout(30)
def test_large_transfer_with_partial_writes(rt, sockpair):
    a, b = sockpair
    payload = os.urandom(1 << 20) * 2      # 2 MiB: more than the socket buffer

    async def main():
        wr = zokio.spawn(write_all(a, payload))
        data = await read_exactly(b, len(payload))
        await wr
        return data

    assert rt.block_on(main()) == payload


@pytest.mark.timeout(30)
def test_many_concurrent_ops(make_runtime, closer):
    rt = make_runtime(2)
    pairs = []
    for _ in range(64):
        x, y = socket.socketpair()
        x.setblocking(False)
        y.setblocking(False)
        closer += [x, y]
        pairs.append((x.fileno(), y.fileno()))

    async def conn(i, a, b):
        ok = 0
        for k in range(20):
            msg = f"{i}:{k}:".encode() * (1 + (i + k) % 7)
            rd = zokio.spawn(read_exactly(b, len(msg)))
            await write_all(a, msg)
            ok += (await rd) == msg
        return ok

    async def main():
        hs = [zokio.spawn(conn(i, a, b)) for i, (a, b) in enumerate(pairs)]
        return [await h for h in hs]

    assert rt.block_on(main()) == [20] * 64
    m = settled(rt)
    assert m["tasks_live"] == 0


@pytest.mark.timeout(20)
def test_op_awaited_outside_task_raises(pipe):
    r, _ = pipe

    async def f():
        return await op_read(r, 1)

    c = f()
    with pytest.raises(RuntimeError, match="inside a zokio task"):
        c.send(None)
    c.close()


# ---- cancellation ----------------------------------------------------------------

@pytest.mark.timeout(30)
def test_cancel_pending_read(rt, channel):
    r, w = channel
    seen = []

    async def reader():
        try:
            return await op_read(r, 64)
        except zokio.Cancelled:
            seen.append("cancelled")
            raise

    h = rt.spawn(reader())
    time.sleep(0.03)
    assert h.cancel() is True
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    assert seen == ["cancelled"]


@pytest.mark.timeout(60)
def test_cancelled_read_does_not_consume_later_data(make_runtime, closer):
    """After a pending read is cancelled, data written later belongs to the
    next reader.  Many rounds, reads cancelled from plain threads and from
    other tasks, so cancellation crosses workers."""
    rt = make_runtime(2)
    failures = []
    for rnd in range(60):
        if rnd % 2:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            closer += [r, w]
        else:
            x, y = socket.socketpair()
            x.setblocking(False)
            y.setblocking(False)
            closer += [x, y]
            r, w = y.fileno(), x.fileno()
        victims = [rt.spawn(_read(r, 64)) for _ in range(3)]
        time.sleep(0.005)
        if rnd % 3 == 0:
            async def canceller():
                for v in victims:
                    v.cancel()
            rt.spawn(canceller()).result(timeout=5)
        else:
            for v in victims:
                v.cancel()
        outcomes = []
        for v in victims:
            try:
                outcomes.append(v.result(timeout=5))
            except zokio.Cancelled:
                outcomes.append("cancelled")
        assert outcomes == ["cancelled"] * 3      # nothing was written yet
        msg = f"round {rnd}".encode()
        os.write(w, msg)
        try:
            got = rt.spawn(_read(r, 64)).result(timeout=2)
        except TimeoutError:
            got = "<lost: a cancelled read consumed it>"
        if got != msg:
            failures.append((rnd, got))
    assert failures == []


@pytest.mark.timeout(60)
def test_fd_number_reuse_after_cancelled_read(make_runtime):
    """Cancel pending reads, close the fds, open new ones (same numbers): the
    new fds must work -- no stale registration or op of the old file may
    linger on any worker's port."""
    rt = make_runtime(2)
    failures = []
    for rnd in range(40):
        x, y = socket.socketpair()
        x.setblocking(False)
        y.setblocking(False)
        r, w = y.fileno(), x.fileno()
        victims = [rt.spawn(_read(r, 64)) for _ in range(2)]
        time.sleep(0.003)
        for v in victims:
            v.cancel()
        for v in victims:
            with pytest.raises(zokio.Cancelled):
                v.result(timeout=5)
        os.write(w, b"m")
        try:
            got = rt.spawn(_read(r, 64)).result(timeout=2)
        except TimeoutError:
            got = None
        if got != b"m":
            failures.append((rnd, got))
        x.close()
        y.close()
    assert failures == []


@pytest.mark.timeout(20)
def test_cancel_pending_write(rt, sockpair):
    a, b = sockpair
    # fill the socket buffer so the next write must wait
    filled = 0
    while True:
        try:
            filled += os.write(a, b"x" * 65536)
        except BlockingIOError:
            break

    async def writer():
        return await op_write(a, b"y" * 65536)

    h = rt.spawn(writer())
    time.sleep(0.03)
    assert not h.done()
    h.cancel()
    with pytest.raises(zokio.Cancelled):
        h.result(timeout=5)
    # drain: only the bytes written before are there (a cancelled write may
    # have gone through only if it completed before the cancel -- it did not,
    # since the task saw Cancelled at a pending op)
    got = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            chunk = os.read(b, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
            try:
                chunk = os.read(b, 1 << 20)
            except BlockingIOError:
                break
        got += len(chunk)
        assert b"y" not in chunk
    assert got == filled


@pytest.mark.timeout(20)
def test_shutdown_with_pending_ops(make_runtime, util, fd_snapshot):
    before = fd_snapshot()
    r, w = os.pipe()
    os.set_blocking(r, False)
    rt = make_runtime(2)
    hs = [rt.spawn(_read(r, 10)) for _ in range(5)]
    time.sleep(0.03)
    rt.shutdown(timeout=5)
    assert all(h.cancelled() for h in hs)
    # the pipe is intact and no op is left on it: data written now stays
    os.write(w, b"kept")
    assert os.read(r, 10) == b"kept"
    os.close(r)
    os.close(w)
    assert not util.zokio_threads()
    assert fd_snapshot() == before


# ---- errors ------------------------------------------------------------------------

def _closed_fd():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    # a number far above anything in use, so no thread can reuse it meanwhile
    probe = 4000
    try:
        os.fstat(probe)
    except OSError:
        return probe
    return fd


@pytest.mark.timeout(20)
def test_read_bad_fd_raises_ebadf(rt):
    bad = _closed_fd()

    async def main():
        try:
            await op_read(bad, 10)
        except OSError as e:
            return e.errno

    assert rt.block_on(main()) == errno.EBADF


@pytest.mark.timeout(20)
def test_write_bad_fd_raises_ebadf(rt):
    bad = _closed_fd()

    async def main():
        try:
            await op_write(bad, b"x")
        except OSError as e:
            return e.errno

    assert rt.block_on(main()) == errno.EBADF


@pytest.mark.timeout(20)
def test_wrong_direction_on_pipe_raises_ebadf(rt, pipe):
    r, w = pipe

    async def main():
        errs = []
        for coro in (op_read(w, 10), op_write(r, b"x")):
            try:
                await coro
            except OSError as e:
                errs.append(e.errno)
        return errs

    assert rt.block_on(main()) == [errno.EBADF, errno.EBADF]


@pytest.mark.timeout(20)
def test_write_to_closed_pipe_raises_epipe(rt, closer):
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.close(r)
    closer.append(w)

    async def main():
        try:
            await op_write(w, b"x")
        except OSError as e:
            return e.errno

    assert rt.block_on(main()) == errno.EPIPE


@pytest.mark.timeout(10)
def test_invalid_op_arguments():
    with pytest.raises(ValueError):
        op_read(-1, 10)
    with pytest.raises(ValueError):
        op_read(0, -5)
    with pytest.raises(TypeError):
        op_write(0, "text is not bytes")


@pytest.mark.timeout(20)
def test_errors_do_not_break_the_runtime(rt, sockpair):
    a, b = sockpair
    bad = _closed_fd()

    async def main():
        for _ in range(20):
            try:
                await op_read(bad, 1)
            except OSError:
                pass
        await op_write(a, b"still fine")
        return await op_read(b, 64)

    assert rt.block_on(main()) == b"still fine"


@pytest.mark.timeout(20)
def test_read_interrupted_by_timeout_then_data_kept(rt, channel):
    r, w = channel

    async def main():
        try:
            async with zokio.timeout(0.02):
                await op_read(r, 64)
        except TimeoutError:
            pass
        else:
            return "no timeout"
        await zokio.sleep(0.01)
        os.write(w, b"after timeout")
        return await op_read(r, 64)

    assert rt.block_on(main()) == b"after timeout"


@pytest.mark.timeout(20)
def test_read_from_thread_reader_many_threads_writing(rt, sockpair):
    a, b = sockpair
    n_threads, per = 8, 50
    total = n_threads * per * 8

    async def reader():
        got = bytearray()
        while len(got) < total:
            got += await op_read(b, 4096)
        return bytes(got)

    h = rt.spawn(reader())
    lock = threading.Lock()

    def writer(k):
        for i in range(per):
            with lock:           # whole 8-byte records
                data = f"{k:02d}:{i:04d}.".encode()
                while True:
                    try:
                        os.write(a, data)
                        break
                    except BlockingIOError:
                        time.sleep(0.001)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    data = h.result(timeout=10)
    records = sorted(data[i:i + 8] for i in range(0, len(data), 8))
    assert records == sorted(f"{k:02d}:{i:04d}.".encode() for k in range(n_threads) for i in range(per))

