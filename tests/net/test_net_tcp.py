"""zokio.net TCP: round trips, half-close, resets, refused and timed-out
connects, many connections, errors that name the address, close while an op
is pending, dropped streams.  Servers listen on 127.0.0.1 (or ::1)."""
from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings

import pytest

import zokio
from zokio import net

from _net_fixtures import no_fd_leak  # noqa: F401  (autouse: no fd left open)


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ with position and seed (catches reordering)."""
    block = bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(4096))
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


async def echo_server(listener, count=1):
    """Accept `count` connections; echo each until EOF, then close it."""
    handles = []
    for _ in range(count):
        s, _addr = await listener.accept()
        handles.append(zokio.spawn(echo_one(s)))
    for h in handles:
        await h


async def echo_one(s):
    async with s:
        while True:
            data = await s.read(65536)
            if not data:
                return
            await s.write_all(data)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [0, 1, 1000, 65536, 1 << 20, 16 << 20])
def test_round_trip_sizes(rt, size):
    """Echo `size` bytes through a loopback connection; every byte checked.
    Writing and reading run in two tasks, so large payloads cannot deadlock
    on full socket buffers."""
    payload = pattern(size, seed=size & 0xFF)

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            server = zokio.spawn(echo_server(listener))
            async with await net.TcpStream.connect("127.0.0.1", port) as c:
                async def writer():
                    await c.write_all(payload)
                    await c.shutdown()
                w = zokio.spawn(writer())
                got = bytearray()
                while True:
                    chunk = await c.read(1 << 20)
                    if not chunk:
                        break
                    got += chunk
                await w
            await server
        return bytes(got)

    got = rt.block_on(main())
    assert len(got) == size
    assert got == payload


@pytest.mark.timeout(30)
def test_ipv6_loopback_round_trip(rt):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python build")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as e:
        pytest.skip(f"::1 cannot be bound here: {e}")

    async def main():
        async with net.TcpListener.bind("::1", 0) as listener:
            addr = listener.local_address
            assert addr[0] == "::1"
            server = zokio.spawn(echo_server(listener))
            async with await net.TcpStream.connect("::1", addr[1]) as c:
                await c.write_all(b"over six")
                assert await c.read_exact(8) == b"over six"
                assert c.peer_address[:2] == ("::1", addr[1])
            await server

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_half_close(rt):
    """After the client shuts down its write half the server reads EOF and can
    still answer; the client reads the answer, then EOF."""
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            async def server():
                s, _ = await listener.accept()
                async with s:
                    got = bytearray()
                    while chunk := await s.read():
                        got += chunk
                    await s.write_all(b"got %d bytes" % len(got))
            h = zokio.spawn(server())
            async with await net.TcpStream.connect("127.0.0.1", listener.local_address[1]) as c:
                await c.write_all(b"x" * 100_000)
                await c.shutdown()
                with pytest.raises(BrokenPipeError):
                    await c.write(b"after shutdown")
                answer = bytearray()
                while chunk := await c.read():
                    answer += chunk
            await h
        return bytes(answer)

    assert rt.block_on(main()) == b"got 100000 bytes"


@pytest.mark.timeout(30)
def test_peer_reset_mid_read(rt):
    """A read pending when the peer resets fails with ConnectionResetError
    (errno ECONNRESET) naming the peer."""
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, addr = await listener.accept()
            started = zokio.Oneshot()

            async def reader():
                started.set(None)
                return await s.read()
            h = zokio.spawn(reader())
            await started
            await zokio.sleep(0.05)  # the read is pending now
            c.socket().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # linger 0: RST
            with pytest.raises(ConnectionResetError) as info:
                await h
            s.close()
            return info.value, addr

    exc, addr = rt.block_on(main())
    assert exc.errno == errno.ECONNRESET
    assert f"{addr[0]}:{addr[1]}" in str(exc)


@pytest.mark.timeout(30)
def test_write_after_peer_closed_is_broken_pipe_or_reset(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            s.close()
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as info:
                for _ in range(1000):
                    await c.write_all(b"x" * 65536)
                    await zokio.sleep(0.001)
            c.close()
            return info.value

    exc = rt.block_on(main())
    assert exc.errno in (errno.EPIPE, errno.ECONNRESET)
    assert "127.0.0.1:" in str(exc)


@pytest.mark.timeout(30)
def test_refused_connect_names_the_address(rt):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens on `port` now

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await net.TcpStream.connect("127.0.0.1", port)
        return info.value

    exc = rt.block_on(main())
    assert exc.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(exc)


def _full_backlog_listener():
    """A listening socket whose accept queue is full: the kernel drops new
    SYNs (LISTENOVERFLOWS), so a further connect hangs in SYN_SENT.  Returns
    (listener, fillers, port); fillers are the connections that filled it."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(8):
        f = socket.socket()
        f.setblocking(False)
        fillers.append(f)
        err = f.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            break
        deadline = time.monotonic() + 0.3
        done = False
        while time.monotonic() < deadline:
            if f.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    f.getpeername()
                    done = True
                    break
                except OSError:
                    pass
            time.sleep(0.005)
        if not done:
            return lst, fillers, port  # this one hangs: the queue is full
    for f in fillers:
        f.close()
    lst.close()
    return None, [], port


@pytest.mark.timeout(30)
def test_connect_timeout(rt):
    """connect(timeout=) against a listener with a full accept queue (its SYNs
    are dropped): TimeoutError with errno ETIMEDOUT naming the address, after
    about the timeout; the half-open socket is closed (no fd leak)."""
    lst, fillers, port = _full_backlog_listener()
    if lst is None:
        pytest.skip("this kernel completed every connect to a listen(0) socket; "
                    "cannot make a connect hang on loopback")
    try:
        async def main():
            t0 = zokio.monotonic()
            with pytest.raises(TimeoutError) as info:
                await net.TcpStream.connect("127.0.0.1", port, timeout=0.3)
            return info.value, zokio.monotonic() - t0

        exc, took = rt.block_on(main())
        assert exc.errno == errno.ETIMEDOUT
        assert f"127.0.0.1:{port}" in str(exc)
        assert took >= 0.29
    finally:
        for f in fillers:
            f.close()
        lst.close()


@pytest.mark.timeout(120)
def test_thousand_concurrent_connections(make_runtime):
    """1,000 client tasks connect at once; each sends its own 4 KiB pattern in
    two writes and reads it back through its server task."""
    rt = make_runtime(2)
    n = 1000

    async def client(port, i):
        payload = pattern(4096, seed=i)
        async with await net.TcpStream.connect("127.0.0.1", port) as c:
            await c.write_all(payload[:1000])
            first = await c.read_exact(1000)
            await c.write_all(payload[1000:])
            rest = await c.read_exact(len(payload) - 1000)
        return first + rest == payload

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0, backlog=2048) as listener:
            port = listener.local_address[1]
            server = zokio.spawn(echo_server(listener, n))
            clients = [zokio.spawn(client(port, i)) for i in range(n)]
            ok = [await h for h in clients]
            await server
        return ok

    ok = rt.block_on(main())
    assert len(ok) == n and all(ok)


@pytest.mark.timeout(30)
def test_read_and_write_at_once_from_two_tasks(make_runtime):
    """One task reads while another writes the same stream (full duplex),
    on two workers; 4 MiB each way, every byte checked."""
    rt = make_runtime(2)
    size = 4 << 20
    up, down = pattern(size, 1), pattern(size, 2)

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()

            async def send(stream, data):
                await stream.write_all(data)
                await stream.shutdown()

            async def recv(stream):
                got = bytearray()
                while chunk := await stream.read():
                    got += chunk
                return bytes(got)

            hs = [zokio.spawn(send(c, up)), zokio.spawn(send(s, down)),
                  zokio.spawn(recv(c)), zokio.spawn(recv(s))]
            r = [await h for h in hs]
            c.close()
            s.close()
            return r[2], r[3]

    got_down, got_up = rt.block_on(main())
    assert got_up == up
    assert got_down == down


@pytest.mark.timeout(30)
def test_two_concurrent_readers_get_busy_error(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            first = zokio.spawn(s.read())
            await zokio.sleep(0.05)  # `first` is pending in read
            errors = []
            for call in (s.read(), s.readinto(bytearray(10)), s.read_exact(1),
                         s.readuntil(b"\n"), s.readline()):
                try:
                    await call
                except net.BusyResourceError as e:
                    errors.append(e)
            # a writer is fine meanwhile
            await s.write_all(b"ping")
            assert await c.read_exact(4) == b"ping"
            await c.write_all(b"data\n")
            assert await first == b"data\n"
            # after the first reader is done, reading works again
            await c.write_all(b"more")
            assert await s.read_exact(4) == b"more"
            c.close()
            s.close()
            return errors

    errors = rt.block_on(main())
    assert len(errors) == 5
    assert all(isinstance(e, RuntimeError) for e in errors)
    assert "already reading" in str(errors[0])


@pytest.mark.timeout(30)
def test_two_concurrent_writers_get_busy_error(rt):
    """A write_all blocked on a full socket buffer holds the stream's write
    side: a second writer is refused, and the bytes of the first arrive
    whole and in order."""
    big = pattern(8 << 20, 3)

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            w = zokio.spawn(c.write_all(big))
            await zokio.sleep(0.05)  # nobody reads: the write is blocked
            errors = []
            for call in (c.write(b"intruder"), c.write_all(b"intruder"), c.shutdown()):
                try:
                    await call
                except net.BusyResourceError as e:
                    errors.append(e)
            got = await s.read_exact(len(big))
            await w
            c.close()
            s.close()
            return errors, got

    errors, got = rt.block_on(main())
    assert len(errors) == 3
    assert got == big


@pytest.mark.timeout(60)
def test_racing_readers_on_two_workers_never_split_bytes(make_runtime):
    """Rounds of two tasks spawned together calling read_exact(64) on two
    workers, with two 64-byte chunks sent per round: whether they overlap
    (one gets BusyResourceError) or run one after the other, each read
    returns one whole chunk, and the chunks of a round are all accounted
    for."""
    rt = make_runtime(2)
    rounds = 200

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            busy = 0
            for r in range(rounds):
                chunks = [pattern(64, 2 * r), pattern(64, 2 * r + 1)]
                await c.write_all(chunks[0] + chunks[1])

                async def reader():
                    try:
                        return await s.read_exact(64)
                    except net.BusyResourceError:
                        return None
                a, b = zokio.spawn(reader()), zokio.spawn(reader())
                got = [x for x in (await a, await b) if x is not None]
                busy += 2 - len(got)
                while len(got) < 2:
                    got.append(await s.read_exact(64))
                assert sorted(got) == sorted(chunks), f"round {r}: split or lost bytes"
            c.close()
            s.close()
            return busy

    busy = rt.block_on(main())
    assert 0 <= busy <= rounds


@pytest.mark.timeout(30)
def test_close_while_read_pending_fails_the_read(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            h = zokio.spawn(s.read())
            await zokio.sleep(0.05)
            s.close()
            with pytest.raises(net.ClosedResourceError) as info:
                await h
            assert s.closed and s.fileno() == -1
            with pytest.raises(net.ClosedResourceError):
                await s.read()
            with pytest.raises(net.ClosedResourceError):
                await s.write(b"x")
            s.close()  # idempotent
            c.close()
            return info.value

    exc = rt.block_on(main())
    assert exc.errno == errno.EBADF


@pytest.mark.timeout(30)
def test_close_while_write_pending_fails_the_write(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
            s, _ = await listener.accept()
            h = zokio.spawn(c.write_all(b"y" * (16 << 20)))
            await zokio.sleep(0.05)  # blocked: nobody reads
            c.close()
            with pytest.raises(net.ClosedResourceError):
                await h
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_close_while_accept_pending_fails_the_accept(rt):
    async def main():
        listener = net.TcpListener.bind("127.0.0.1", 0)
        h = zokio.spawn(listener.accept())
        await zokio.sleep(0.05)
        listener.close()
        with pytest.raises(net.ClosedResourceError):
            await h
        # async for ends quietly on a closed listener
        async for _pair in listener:
            raise AssertionError("a closed listener yielded a connection")

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_dropped_stream_closes_its_fd_with_resource_warning(rt):
    async def main():
        listener = net.TcpListener.bind("127.0.0.1", 0)
        c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
        s, _ = await listener.accept()
        fd = c.fileno()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del c
            gc.collect()
        # the peer sees the close
        assert await s.read() == b""
        s.close()
        listener.close()
        return fd, [w for w in caught if issubclass(w.category, ResourceWarning)]

    fd, caught = rt.block_on(main())
    assert caught and "unclosed <TcpStream" in str(caught[0].message)


@pytest.mark.timeout(30)
def test_addresses_nodelay_and_socket(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            assert listener.local_address == ("127.0.0.1", port)
            c = await net.TcpStream.connect("localhost", port)
            s, addr = await listener.accept()
            assert s.peer_address == addr == c.local_address
            assert c.peer_address == ("127.0.0.1", port) == s.local_address
            assert c.nodelay() and s.nodelay()
            s.set_nodelay(False)
            assert not s.nodelay()
            assert s.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert s.socket() is s.socket()
            assert "TcpStream" in repr(c)
            c.close()
            s.close()
            assert c.closed
            with pytest.raises(net.ClosedResourceError):
                c.socket()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_from_socket(rt):
    a, b = socket.socket(), None
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    a.connect(lst.getsockname())
    b, _ = lst.accept()
    lst.close()

    async def main():
        sa = net.TcpStream.from_socket(a)
        sb = net.TcpStream.from_socket(b)
        assert a.fileno() == -1  # detached: the stream owns the fd
        await sa.write_all(b"adopted")
        assert await sb.read_exact(7) == b"adopted"
        sa.close()
        sb.close()

    rt.block_on(main())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError):
            net.TcpStream.from_socket(udp)


@pytest.mark.timeout(30)
def test_bind_errors_and_reuse_port(rt):
    l1 = net.TcpListener.bind("127.0.0.1", 0)
    port = l1.local_address[1]
    try:
        with pytest.raises(OSError) as info:
            net.TcpListener.bind("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in str(info.value)
        a = net.TcpListener.bind("127.0.0.1", 0, reuse_port=True)
        b = net.TcpListener.bind("127.0.0.1", a.local_address[1], reuse_port=True)
        a.close()
        b.close()
    finally:
        l1.close()


@pytest.mark.timeout(30)
def test_async_for_serves_connections(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]

            async def serve():
                n = 0
                async for stream, _addr in listener:
                    async with stream:
                        await stream.write_all(b"hi %d" % n)
                    n += 1
                    if n == 3:
                        return n
            h = zokio.spawn(serve())
            got = []
            for _ in range(3):
                async with await net.TcpStream.connect("127.0.0.1", port) as c:
                    got.append(await c.read_exact(4))
            assert await h == 3
            return got

    assert rt.block_on(main()) == [b"hi 0", b"hi 1", b"hi 2"]


@pytest.mark.timeout(30)
def test_lookup_host(rt):
    async def main():
        numeric = await net.lookup_host("127.0.0.1", 80)
        named = await net.lookup_host("localhost", 80)
        v6 = await net.lookup_host("::1", 80)
        with pytest.raises(socket.gaierror) as info:
            await net.lookup_host("no-such-host.invalid", 80)
        return numeric, named, v6, info.value

    numeric, named, v6, err = rt.block_on(main())
    assert numeric == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert (socket.AF_INET, ("127.0.0.1", 80)) in named
    assert v6 == [(socket.AF_INET6, ("::1", 80, 0, 0))]
    assert "no-such-host.invalid" in str(err)


@pytest.mark.timeout(30)
def test_connect_tries_every_address_in_order(rt, monkeypatch):
    """connect() goes through lookup_host's addresses in order: a refused
    first address is skipped; when all fail, the error names every one."""
    from zokio.net import _tcp

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    answers = {}

    async def fake_lookup(host, port):
        return answers[host]

    monkeypatch.setattr(_tcp, "lookup_host", fake_lookup)

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            answers["two"] = [(socket.AF_INET, ("127.0.0.1", dead_port)),
                              (socket.AF_INET, ("127.0.0.1", port))]
            answers["none"] = [(socket.AF_INET, ("127.0.0.1", dead_port)),
                               (socket.AF_INET, ("127.0.0.2", dead_port))]
            async with await net.TcpStream.connect("two", 0) as c:
                s, _ = await listener.accept()
                assert c.peer_address == ("127.0.0.1", port)
                s.close()
            with pytest.raises(ConnectionRefusedError) as info:
                await net.TcpStream.connect("none", 0)
            return info.value

    exc = rt.block_on(main())
    assert f"127.0.0.1:{dead_port}" in str(exc) and f"127.0.0.2:{dead_port}" in str(exc)


@pytest.mark.timeout(60)
def test_close_and_socket_racing_from_threads(rt):
    """Threads released together call close() and socket() on the same
    streams, while a task has a read pending on each: every fd is closed
    exactly once (a second os.close would raise EBADF out of close()), no
    call fails with anything but ClosedResourceError, and every pending
    read ends with ClosedResourceError."""
    rounds, nthreads = 100, 4

    async def setup():
        a, b = net.UnixStream.pair()
        return a, b, zokio.spawn(b.read())

    errors = []
    for _ in range(rounds):
        a, b, pending = rt.block_on(setup())
        barrier = threading.Barrier(nthreads)

        def hammer(i):
            try:
                barrier.wait(timeout=10)
                if i % 2:
                    try:
                        b.socket()
                    except net.ClosedResourceError:
                        pass
                b.close()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(net.ClosedResourceError):
            pending.result(timeout=10)
        a.close()
        assert b.closed and b.fileno() == -1
    assert not errors, errors[:3]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("accepts", [1, 3])
def test_closed_idle_listener_refuses_new_connections(rt, accepts):
    """After some accepts, close the listener while no accept is pending: a
    new connect is refused.  On io_uring the multishot ACCEPT armed by the
    earlier accepts held the socket open in the kernel after close(2), so the
    connect succeeded (and the connection sat in the port's queue) until the
    runtime shut down."""
    async def main():
        listener = net.TcpListener.bind("127.0.0.1", 0)
        port = listener.local_address[1]
        for _ in range(accepts):
            c = await net.TcpStream.connect("127.0.0.1", port)
            s, _ = await listener.accept()
            s.close()
            c.close()
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            c = await net.TcpStream.connect("127.0.0.1", port, timeout=5)
            c.close()
        return True

    assert rt.block_on(main())


@pytest.mark.timeout(60)
def test_sockets_left_open_at_interpreter_exit_close_quietly(tmp_path):
    # A listener (with an accept pending, then abandoned) and a connected
    # pair kept in module globals until the interpreter exits: their
    # finalizers run while module globals are being torn down, and must
    # neither print "Exception ignored" nor leave the process hanging.
    script = (
        "import zokio, zokio.net as net\n"
        "async def main():\n"
        "    global lst, c, s\n"
        "    lst = net.TcpListener.bind('127.0.0.1', 0)\n"
        "    c = await net.TcpStream.connect('127.0.0.1', lst.local_address[1])\n"
        "    s, _ = await lst.accept()\n"
        "    zokio.spawn(lst.accept())\n"
        "    await zokio.sleep(0.05)\n"
        "rt = zokio.Runtime(threads=2)\n"
        "rt.block_on(main())\n"
        "rt.shutdown()\n"
        "print('done', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=50,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_connections_queued_before_close_are_closed_not_left_waiting(make_runtime):
    """On io_uring, connections that arrived after an accept armed the
    multishot ACCEPT, with no accept pending, wait in the port's queue of
    whichever worker armed it.  Closing the listener (here from a plain
    thread, the worker being another) must close them: the client sees the
    end of the connection, not a silence lasting until runtime shutdown."""
    rt = make_runtime(2)
    listener = net.TcpListener.bind("127.0.0.1", 0)
    port = listener.local_address[1]

    async def first():
        c = await net.TcpStream.connect("127.0.0.1", port)
        s, _ = await listener.accept()
        return c, s

    c, s = rt.block_on(first())
    clients = []
    for _ in range(3):
        k = socket.create_connection(("127.0.0.1", port), timeout=5)
        clients.append(k)
    time.sleep(0.2)   # the port reaps their accepts into its queue
    threading.Thread(target=listener.close).start()
    try:
        for k in clients:
            k.settimeout(5)
            try:
                assert k.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for k in clients:
            k.close()
        c.close()
        s.close()
