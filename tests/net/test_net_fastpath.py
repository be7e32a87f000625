"""The native fast path of SocketStream (native/io/stream.c): read, readinto,
write and write_all return the op itself with the busy token taken.  These
tests check what the Python coroutines used to guarantee by construction:
the token always comes back (awaited, failed, cancelled, dropped unawaited),
a close meanwhile finishes, a partial write_all goes on, arguments are
checked, and an op cannot deliver twice."""
from __future__ import annotations

import gc
import socket
import warnings

import pytest

import zokio
from zokio import net
from zokio._native import BusyToken

from _net_fixtures import no_fd_leak  # noqa: F401  (autouse: no fd left open)


async def pair():
    """A connected (client, server) pair of TcpStreams and their listener (closed)."""
    async with net.TcpListener.bind("127.0.0.1", 0) as listener:
        c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
        s, _ = await listener.accept()
    return c, s


def test_busy_token():
    t = BusyToken()
    assert t and "free" in repr(t)
    assert t.take() is True
    assert not t and "taken" in repr(t)
    assert t.take() is False
    t.give()
    assert t
    with pytest.raises(RuntimeError, match="not taken"):
        t.give()
    with pytest.raises(TypeError):
        BusyToken(1)


@pytest.mark.timeout(30)
def test_methods_are_native_and_return_ops(rt):
    async def main():
        c, s = await pair()
        try:
            op = s.read(10)
            assert not isinstance(op, type((lambda: None).__code__)) and type(op).__name__ == "Op"
            await c.write_all(b"abc")
            assert await op == b"abc"
            assert type(net.TcpStream.read).__name__ == "method_descriptor"
            assert "n=65536" in str(net.TcpStream.read.__text_signature__)
        finally:
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_keyword_arguments_and_argument_errors_release_the_token(rt):
    async def main():
        c, s = await pair()
        try:
            await c.write_all(data=b"hello")
            assert await s.read(n=2) == b"he"
            buf = bytearray(8)
            assert await s.readinto(buffer=buf) == 3 and buf[:3] == b"llo"
            assert await c.write(data=b"xy") == 2
            assert await s.read() == b"xy"
            for bad in (lambda: s.read(-1), lambda: s.readinto(b"immutable"),
                        lambda: s.readinto(), lambda: c.write_all(42),
                        lambda: c.write(), lambda: s.read(1, 2), lambda: s.read(m=3)):
                with pytest.raises((TypeError, ValueError)):
                    await bad()
            # every failed call gave its token back
            assert s._rtok and c._wtok
            await c.write_all(b"ok")
            assert await s.read() == b"ok"
        finally:
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_an_op_delivers_once(rt):
    async def main():
        c, s = await pair()
        try:
            op = s.read()
            await c.write_all(b"1")
            assert await op == b"1"
            with pytest.raises(RuntimeError, match="already awaited"):
                await op
            assert s._rtok  # and the token is free
        finally:
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_unawaited_ops_give_the_token_back_when_dropped(rt):
    async def main():
        c, s = await pair()
        try:
            op = s.read()
            assert not s._rtok
            with pytest.raises(net.BusyResourceError):
                await s.read()
            del op
            gc.collect()
            assert s._rtok
            w = c.write_all(b"x" * 10)
            assert not c._wtok
            del w
            assert c._wtok
            await c.write_all(b"y")
            assert await s.read() == b"y"  # the dropped write never ran
            # a close that waited for an unawaited op finishes when it is dropped
            op = s.read()
            s.close()
            assert s.fileno() != -1
            del op
            assert s.fileno() == -1
        finally:
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_spawn_accepts_a_read_and_other_awaitables(rt):
    async def main():
        c, s = await pair()
        try:
            h = zokio.spawn(s.read())
            cell = zokio.Oneshot()
            h2 = zokio.spawn(cell)
            await zokio.sleep(0.02)
            await c.write_all(b"spawned")
            cell.set(7)
            assert await h == b"spawned"
            assert await h2 == 7
        finally:
            c.close()
            s.close()

    rt.block_on(main())
    with pytest.raises(TypeError, match="coroutine"):
        rt.spawn(iter([]))


@pytest.mark.timeout(60)
def test_partial_write_all_sends_everything_in_order(make_runtime):
    rt = make_runtime(2)
    size = 24 * 1024 * 1024

    async def main():
        c, s = await pair()
        s.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * (size // 256)

        async def reader():
            got = bytearray()
            while len(got) < size:
                chunk = await c.read(1 << 20)
                assert chunk
                got += chunk
            return bytes(got)

        h = zokio.spawn(reader())
        await s.write_all(memoryview(data))
        assert s._wtok
        assert await h == data
        await s.write_all(b"tail")
        assert await c.read() == b"tail"
        c.close()
        s.close()

    rt.block_on(main())


@pytest.mark.timeout(60)
def test_cancel_in_a_partial_write_all_gives_the_token_back(rt):
    async def main():
        c, s = await pair()
        try:
            s.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            h = zokio.spawn(s.write_all(b"z" * (16 * 1024 * 1024)))  # the peer never reads
            await zokio.sleep(0.1)
            assert not s._wtok
            h.cancel()
            with pytest.raises(zokio.Cancelled):
                await h
            assert s._wtok
            with zokio.move_on_after(0.1):
                await s.write_all(b"q" * (16 * 1024 * 1024))
            assert s._wtok
        finally:
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(60)
def test_close_during_a_partial_write_all_fails_it_and_closes_the_fd(rt):
    async def main():
        c, s = await pair()
        s.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        h = zokio.spawn(s.write_all(b"z" * (16 * 1024 * 1024)))
        await zokio.sleep(0.1)
        s.close()
        with pytest.raises(net.ClosedResourceError):
            await h
        assert s.fileno() == -1
        c.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_read_after_close_from_another_task_and_read_exact_leftovers(rt):
    async def main():
        c, s = await pair()
        try:
            await c.write_all(b"abcdef")
            # read_exact cancelled part-way leaves its bytes buffered: the
            # next (fast-path) read must see them first, in order.
            with zokio.move_on_after(0.1):
                await s.read_exact(10)
            assert await s.read() == b"abcdef"
            pending = zokio.spawn(s.read())
            await zokio.sleep(0.05)
            s.close()
            with pytest.raises(net.ClosedResourceError):
                await pending
            with pytest.raises(net.ClosedResourceError):
                await s.read()
            with pytest.raises(net.ClosedResourceError):
                await s.write_all(b"x")
        finally:
            c.close()

    rt.block_on(main())


@pytest.mark.timeout(60)
def test_dropped_stream_with_a_pending_unawaited_op_closes_its_fd(rt):
    async def main():
        c, s = await pair()
        op = s.read()  # never awaited: holds the token
        c.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del s
            del op
            gc.collect()

    rt.block_on(main())


@pytest.mark.timeout(60)
def test_many_readers_racing_on_two_workers_get_busy_or_data(make_runtime):
    rt = make_runtime(4)

    async def main():
        c, s = await pair()
        refused = []  # list.append is atomic on both interpreters; += on an int is not

        async def reader():
            try:
                return await s.read(1)
            except net.BusyResourceError:
                refused.append(1)
                return None

        got = bytearray()
        for round_ in range(50):
            hs = [zokio.spawn(reader()) for _ in range(8)]
            while len(refused) < 7 * (round_ + 1):  # one holds the token, seven were refused
                await zokio.sleep(0.001)
            await c.write_all(b"%c" % (65 + round_ % 26))
            results = [await h for h in hs]
            assert results.count(None) == 7
            got += next(r for r in results if r is not None)
            assert s._rtok
        assert bytes(got) == bytes(65 + r % 26 for r in range(50))
        c.close()
        s.close()

    rt.block_on(main())


@pytest.mark.timeout(60)
def test_waiting_connections_are_accepted_without_a_port_round_trip_each(make_runtime):
    """A burst of connections already in the backlog (or already taken by
    io_uring's multishot ACCEPT) is accepted at once: through the port each
    accept would wait for the next reap, a whole run-queue pass apart, and a
    busy server took seconds to accept 1,000 new connections."""
    rt = make_runtime(1)
    n = 100

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            # arm the listener (io_uring: its multishot SQE) with one connection
            first = socket.create_connection(("127.0.0.1", port))
            s0, _ = await listener.accept()
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
            await zokio.sleep(0.05)  # all of them are waiting now
            before = zokio._native.port_stats()
            streams = [(await listener.accept())[0] for _ in range(n)]
            after = zokio._native.port_stats()
            peers = {s.peer_address for s in streams}
            assert peers == {c.getsockname() for c in clients}
            for s in streams + [s0]:
                s.close()
            for c in clients + [first]:
                c.close()
            return after["submitted"] - before["submitted"]

    submitted = rt.block_on(main())
    assert submitted <= 5, f"{submitted} accept ops went through the port for {n} waiting connections"
