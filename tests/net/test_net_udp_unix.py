"""zokio.net UDP (datagram boundaries, truncation, connect) and Unix-domain
streams (filesystem paths and Linux abstract names)."""
from __future__ import annotations

import errno
import os
import socket

import pytest

import zokio
from zokio import net

from _net_fixtures import no_fd_leak  # noqa: F401  (autouse: no fd left open)


@pytest.mark.timeout(30)
def test_udp_datagram_boundaries(rt):
    """Datagrams of 1, 100, 1000 and 60000 bytes arrive one per recv_from,
    whole, with the sender's address; an empty datagram is a datagram."""
    sizes = [1, 100, 1000, 0, 60000]

    async def main():
        a = net.UdpSocket.bind("127.0.0.1", 0)
        b = net.UdpSocket.bind("127.0.0.1", 0)
        for i, n in enumerate(sizes):
            assert await a.send_to(bytes([i]) * n, b.local_address) == n
        got = [await b.recv_from() for _ in sizes]
        a.close()
        b.close()
        return got, a

    got, a = rt.block_on(main())
    for i, (n, (data, addr)) in enumerate(zip(sizes, got)):
        assert data == bytes([i]) * n
        assert addr[0] == "127.0.0.1"


@pytest.mark.timeout(30)
def test_udp_truncation_discards_the_rest(rt):
    async def main():
        a = net.UdpSocket.bind("127.0.0.1", 0)
        b = net.UdpSocket.bind("127.0.0.1", 0)
        await a.send_to(b"A" * 2000, b.local_address)
        await a.send_to(b"second", b.local_address)
        first, _ = await b.recv_from(100)
        second, _ = await b.recv_from(100)
        a.close()
        b.close()
        return first, second

    first, second = rt.block_on(main())
    assert first == b"A" * 100
    assert second == b"second"


@pytest.mark.timeout(30)
def test_udp_connect_send_recv(rt):
    async def main():
        server = net.UdpSocket.bind("127.0.0.1", 0)
        client = net.UdpSocket.bind("127.0.0.1", 0)
        other = net.UdpSocket.bind("127.0.0.1", 0)
        host, port = server.local_address
        await client.connect(host, port)
        assert client.peer_address == (host, port)
        await client.send(b"ping")
        data, addr = await server.recv_from()
        assert (data, addr) == (b"ping", client.local_address)
        # a connected socket drops datagrams from other senders
        await other.send_to(b"stranger", client.local_address)
        await server.send_to(b"pong", addr)
        reply = await client.recv()
        for s in (server, client, other):
            s.close()
        return reply

    assert rt.block_on(main()) == b"pong"


@pytest.mark.timeout(30)
def test_udp_errors_busy_and_close(rt):
    async def main():
        s = net.UdpSocket.bind("127.0.0.1", 0)
        h = zokio.spawn(s.recv_from())
        await zokio.sleep(0.05)
        with pytest.raises(net.BusyResourceError):
            await s.recv_from()
        s.close()
        with pytest.raises(net.ClosedResourceError):
            await h
        # sending to a closed port on a connected socket: ECONNREFUSED
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        c = net.UdpSocket.bind("127.0.0.1", 0)
        await c.connect("127.0.0.1", port)
        await c.send(b"x")
        with pytest.raises(ConnectionRefusedError) as info:
            async with zokio.timeout(5):
                await c.recv()
        c.close()
        return info.value

    exc = rt.block_on(main())
    assert exc.errno == errno.ECONNREFUSED


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_unix_stream_round_trip(rt, tmp_path, kind):
    if kind == "path":
        address = str(tmp_path / "echo.sock")
    else:
        address = "\0zokio-test-%d-%s" % (os.getpid(), tmp_path.name)
    payload = os.urandom(300_000)

    async def main():
        listener = net.UnixListener.bind(address)
        if kind == "path":
            assert os.path.exists(address)

        async def server():
            s, _ = await listener.accept()
            async with s:
                while chunk := await s.read():
                    await s.write_all(chunk)

        h = zokio.spawn(server())
        async with await net.UnixStream.connect(address) as c:
            assert c.peer_address in (address, address.encode())

            async def send():
                await c.write_all(payload)
                await c.shutdown()
            w = zokio.spawn(send())
            got = bytearray()
            while chunk := await c.read():
                got += chunk
            await w
        await h
        listener.close()
        return bytes(got)

    assert rt.block_on(main()) == payload
    if kind == "path":
        assert not os.path.exists(address), "the listener removes its socket file"


@pytest.mark.timeout(30)
def test_unix_errors_and_pair(rt, tmp_path):
    missing = str(tmp_path / "nobody.sock")

    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await net.UnixStream.connect(missing)
        assert missing in str(info.value)
        a, b = net.UnixStream.pair()
        await a.write_all(b"paired")
        got = await b.read_exact(6)
        h = zokio.spawn(b.read())
        await zokio.sleep(0.02)
        b.close()
        with pytest.raises(net.ClosedResourceError):
            await h
        a.close()
        listener = net.UnixListener.bind(str(tmp_path / "l.sock"))
        acc = zokio.spawn(listener.accept())
        await zokio.sleep(0.05)
        listener.close()
        with pytest.raises(net.ClosedResourceError):
            await acc
        return got

    assert rt.block_on(main()) == b"paired"


@pytest.mark.timeout(60)
def test_an_abstract_unix_listener_is_unreachable_after_close(rt, tmp_path):
    """After serving an accept (on io_uring that arms a multishot ACCEPT,
    which holds the socket in the kernel), a closed abstract-name listener
    refuses new connects once every port has let go of it."""
    address = "\0zokio-closed-%d-%s" % (os.getpid(), tmp_path.name)

    async def main():
        listener = net.UnixListener.bind(address)
        c = await net.UnixStream.connect(address)
        s, _ = await listener.accept()
        s.close()
        c.close()
        listener.close()
        # A few probes, spaced out: far fewer than the port would queue
        # before ending the multishot ACCEPT by itself (MS_READY_MAX).
        for _ in range(40):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(address)
            except ConnectionRefusedError:
                return True
            finally:
                probe.close()
            await zokio.sleep(0.05)
        return False

    assert rt.block_on(main()), "the closed listener still accepts connections"
