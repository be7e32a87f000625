"""Echo churn: many short connections opened, used, reset and closed from
several workers at once, every byte checked, bounded in time.

Each client task loops until the deadline: connect, send a pattern of a
random size (seeded by the connection's number) in random pieces, and then
one of four endings, chosen per connection:

  close     read the whole echo back, compare, close;
  half      shut the write half down, read the echo up to EOF, compare;
  reset     send part of the pattern, read what has come back so far,
            then reset the connection (SO_LINGER 0) without reading more;
  server    ask the server (first byte) to reset the connection after
            echoing half; the client must read a correct prefix of the
            echo and then ConnectionResetError or EOF.

The server accepts with ``async for`` and serves each connection in its own
task.  At the end: every connection the clients opened was accepted, every
echoed byte matched, the server saw only the errors the endings cause, and
no fd is left open.
"""
from __future__ import annotations

import gc
import os
import random
import socket
import struct

import pytest

import zokio
from zokio import net

DURATION = 4.0      # seconds of churn per run
CLIENTS = 48        # concurrent client tasks
WORKERS = 4         # on 2 cores: tasks migrate and steal between workers


def pattern(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(n) if hasattr(rnd, "randbytes") else bytes(rnd.getrandbits(8) for _ in range(n))


def _linger0(stream) -> None:
    stream.socket().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def serve_one(stream):
    """Echo until EOF.  First byte b"R": reset after echoing half the rest
    (the client sends its length in the next 4 bytes).  Returns how it
    ended (counters are per task: ``+=`` on a shared dict loses updates
    when tasks on several workers run it at once)."""
    try:
        async with stream:
            head = await stream.read_exact(5)
            mode, n = head[:1], int.from_bytes(head[1:], "big")
            echoed = 0
            while True:
                limit = n // 2 - echoed if mode == b"R" else 65536
                if mode == b"R" and limit <= 0:
                    _linger0(stream)
                    return "server_resets"
                data = await stream.read(min(65536, max(1, limit)))
                if not data:
                    return "server_eof"
                await stream.write_all(data)
                echoed += len(data)
    except (ConnectionResetError, BrokenPipeError, net.IncompleteReadError):
        return "server_peer_reset"
    except BaseException as e:  # anything else is a failure of the run
        return "unexpected: " + repr(e)


async def client(address, connect, ident, deadline):
    stats = {key: 0 for key in ("opened", "bytes_checked", "close", "half", "server",
                                "client_resets")}
    rnd = random.Random(ident)
    k = 0
    while zokio.monotonic() < deadline:
        k += 1
        seed = ident * 1_000_000 + k
        size = rnd.choice([1, 100, 1000, 5000, 40_000, 200_000])
        payload = pattern(size, seed)
        ending = rnd.choice(["close", "half", "reset", "server"])
        stream = await connect(address)
        stats["opened"] += 1
        try:
            mode = b"R" if ending == "server" else b"E"
            await stream.write_all(mode + size.to_bytes(4, "big"))
            if ending == "reset":
                cut = rnd.randrange(0, size + 1)
                await stream.write_all(payload[:cut])
                got = bytearray()
                while len(got) < cut // 2:
                    chunk = await stream.read()
                    if not chunk:
                        break
                    got += chunk
                assert payload.startswith(bytes(got)), "echo is not a prefix of what was sent"
                stats["bytes_checked"] += len(got)
                _linger0(stream)
                stats["client_resets"] += 1
                continue

            async def send():
                pos = 0
                while pos < size:
                    step = rnd.randrange(1, 70_000)
                    await stream.write_all(payload[pos:pos + step])
                    pos += step
                if ending == "half":
                    await stream.shutdown()
            sender = zokio.spawn(send())
            got = bytearray()
            try:
                if ending == "close":
                    got += await stream.read_exact(size)
                else:
                    while chunk := await stream.read():
                        got += chunk
            except ConnectionResetError:
                assert ending == "server", "reset that nobody asked for"
            try:
                await sender
            except (ConnectionResetError, BrokenPipeError):
                assert ending == "server", "send failed on a connection nobody reset"
            if ending == "server":
                assert payload.startswith(bytes(got)), "echo is not a prefix of what was sent"
                assert len(got) <= size // 2 + 65536
            else:
                assert bytes(got) == payload, f"echo differs ({ending}, {size} bytes)"
            stats["bytes_checked"] += len(got)
            stats[ending] += 1
        finally:
            stream.close()
    return stats


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_echo_churn(family, tmp_path):
    gc.collect()
    fds_before = set(os.listdir("/proc/self/fd"))
    stats = {key: 0 for key in ("opened", "accepted", "bytes_checked", "close", "half",
                                "server", "client_resets", "server_resets", "server_eof",
                                "server_peer_reset")}
    stats["server_unexpected"] = []

    async def main():
        if family == "tcp":
            listener = net.TcpListener.bind("127.0.0.1", 0)
            address = listener.local_address

            async def connect(addr):
                return await net.TcpStream.connect(addr[0], addr[1])
        else:
            address = str(tmp_path / "churn.sock")
            listener = net.UnixListener.bind(address)
            connect = net.UnixStream.connect

        async def server():  # one task: its counter needs no lock
            handlers = []
            async for stream, _addr in listener:
                stats["accepted"] += 1
                handlers.append(zokio.spawn(serve_one(stream)))
            for h in handlers:
                outcome = await h
                if outcome.startswith("unexpected"):
                    stats["server_unexpected"].append(outcome)
                else:
                    stats[outcome] += 1

        srv = zokio.spawn(server())
        deadline = zokio.monotonic() + DURATION
        clients = [zokio.spawn(client(address, connect, i, deadline)) for i in range(CLIENTS)]
        for c in clients:
            for key, value in (await c).items():
                stats[key] += value
        # every connection opened is accepted; then stop the server
        while stats["accepted"] < stats["opened"] and zokio.monotonic() < deadline + 20:
            await zokio.sleep(0.01)
        listener.close()
        await srv

    with zokio.Runtime(threads=WORKERS) as rt:
        rt.block_on(main())
    gc.collect()
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    assert not stats["server_unexpected"], stats["server_unexpected"][:5]
    assert stats["accepted"] == stats["opened"], stats
    assert stats["opened"] >= CLIENTS, stats
    assert stats["close"] and stats["half"] and stats["server"] and stats["client_resets"], stats
    assert stats["bytes_checked"] > 0
    handled = stats["server_resets"] + stats["server_eof"] + stats["server_peer_reset"]
    assert handled == stats["accepted"], stats
    assert not leaked, f"fds left open: {sorted(leaked)}"
