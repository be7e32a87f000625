"""Cancel-safety of zokio.net: a cancelled read loses no byte, a cancelled
accept leaks no connection, cancelled read_exact / readuntil leave what they
read in the stream, and accept under fd exhaustion backs off."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import zokio
from zokio import net

from _net_fixtures import no_fd_leak  # noqa: F401  (autouse: no fd left open)


async def _pair(listener):
    c = await net.TcpStream.connect("127.0.0.1", listener.local_address[1])
    s, _ = await listener.accept()
    return c, s


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_during_read_with_data_arriving_just_after_loses_nothing(make_runtime, how):
    """Each round: a task blocks in read(); it is cancelled (or its timeout
    fires) while the peer's bytes are on their way, sometimes before they
    arrive, sometimes racing them.  Bytes a cancelled read returned are kept
    by the task; the rest are read by the next read.  Concatenated, they
    are exactly what was sent."""
    rt = make_runtime(2)
    rounds = 150

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c, s = await _pair(listener)
            received = bytearray()
            sent = bytearray()
            for r in range(rounds):
                msg = b"<%d:%s>" % (r, b"x" * (r % 50))
                sent += msg
                got = []

                async def reader():
                    if how == "timeout":
                        try:
                            async with zokio.timeout(0.002 + (r % 3) * 0.001):
                                got.append(await s.read(1 << 16))
                        except TimeoutError:
                            pass
                    else:
                        got.append(await s.read(1 << 16))

                h = zokio.spawn(reader())
                if r % 3 == 0:
                    await zokio.sleep(0.002)  # the read is pending before the cancel
                if how == "cancel":
                    h.cancel()
                await c.write_all(msg)  # arrives just after (or racing) the cancel
                try:
                    await h
                except zokio.Cancelled:
                    pass
                for g in got:
                    received += g
                # drain what the cancelled read left in the socket
                while len(received) < len(sent):
                    async with zokio.timeout(5):
                        received += await s.read(1 << 16)
                assert received == sent, f"round {r}: bytes lost or reordered"
            c.close()
            s.close()
            return bytes(received), bytes(sent)

    received, sent = rt.block_on(main())
    assert received == sent


@pytest.mark.timeout(60)
def test_cancel_during_accept_with_connection_arriving_just_after_leaks_nothing(make_runtime):
    """Each round an accept() is cancelled while a client connects: the
    connection is either returned by that accept (the task keeps it) or
    waits in the backlog for the next accept.  Every client is served
    exactly once; no fd is left open (the autouse fixture checks)."""
    rt = make_runtime(2)
    rounds = 100

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            served = 0
            for r in range(rounds):
                kept = []

                async def acceptor():
                    kept.append(await listener.accept())

                h = zokio.spawn(acceptor())
                if r % 2 == 0:
                    await zokio.sleep(0.002)
                h.cancel()
                c = await net.TcpStream.connect("127.0.0.1", port)
                try:
                    await h
                except zokio.Cancelled:
                    pass
                if kept:
                    s, _ = kept[0]
                else:
                    async with zokio.timeout(5):
                        s, _ = await listener.accept()
                await c.write_all(b"%d" % r)
                assert await s.read() == b"%d" % r
                s.close()
                c.close()
                served += 1
            return served

    assert rt.block_on(main()) == rounds


@pytest.mark.timeout(30)
def test_cancelled_read_exact_puts_its_bytes_back(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c, s = await _pair(listener)
            await c.write_all(b"abcdef")
            with pytest.raises(TimeoutError):
                async with zokio.timeout(0.1):
                    await s.read_exact(10)  # only 6 bytes come
            await c.write_all(b"ghij")
            out = await s.read_exact(10)
            c.close()
            s.close()
            return out

    assert rt.block_on(main()) == b"abcdefghij"


@pytest.mark.timeout(30)
def test_cancelled_readuntil_keeps_its_buffer(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c, s = await _pair(listener)
            await c.write_all(b"no newline yet")
            with pytest.raises(TimeoutError):
                async with zokio.timeout(0.1):
                    await s.readuntil(b"\r\n")
            await c.write_all(b", now\r\nnext\r\ntail")
            line1 = await s.readuntil(b"\r\n")
            line2 = await s.readuntil(b"\r\n")
            tail = await s.read()  # buffered bytes come first
            c.close()
            s.close()
            return line1, line2, tail

    assert rt.block_on(main()) == (b"no newline yet, now\r\n", b"next\r\n", b"tail")


@pytest.mark.timeout(30)
def test_readuntil_readline_limits_and_eof(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c, s = await _pair(listener)
            await c.write_all(b"one\ntwo\n" + b"z" * 100 + b"\nthree")
            assert await s.readline() == b"one\n"
            assert await s.readuntil(b"\n") == b"two\n"
            with pytest.raises(net.LimitOverrunError):
                await s.readuntil(b"\n", limit=50)
            # the data stayed buffered
            assert await s.read_exact(101) == b"z" * 100 + b"\n"
            await c.shutdown()
            assert await s.readline() == b"three"
            assert await s.readline() == b""
            with pytest.raises(net.IncompleteReadError) as info:
                await s.read_exact(1)
            assert info.value.partial == b"" and info.value.expected == 1
            with pytest.raises(ValueError):
                await s.readuntil(b"")
            # readinto takes buffered bytes first, then reads the socket
            await s.write_all(b"back")
            c2 = c
            assert await c2.read_exact(4) == b"back"
            c.close()
            s.close()

    rt.block_on(main())


@pytest.mark.timeout(30)
def test_readinto_zero_copy_and_buffered(rt):
    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            c, s = await _pair(listener)
            await c.write_all(b"line\nrest-of-it")
            assert await s.readline() == b"line\n"
            buf = bytearray(4)
            n = await s.readinto(buf)  # from the stream's buffer
            assert (n, bytes(buf)) == (4, b"rest")
            big = bytearray(100)
            mv = memoryview(big)[10:]
            n = await s.readinto(mv)
            assert bytes(mv[:n]) == b"-of-it"
            await c.write_all(b"0123456789")
            n = await s.readinto(mv)
            c.close()
            s.close()
            return bytes(big[10:10 + n])

    assert rt.block_on(main()) == b"0123456789"


_EMFILE_SERVER = textwrap.dedent("""
    import json, os, resource, socket, sys, time
    import zokio
    from zokio import net

    TOTAL = int(sys.argv[1])

    async def main():
        listener = net.TcpListener.bind("127.0.0.1", 0)
        used = len(os.listdir("/proc/self/fd"))
        # room for about 10 accepted connections, then EMFILE
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 10, used + 10))
        print(listener.local_address[1], flush=True)
        held, accepted = [], 0
        async def freer():
            while listener._backoffs < 3:
                await zokio.sleep(0.005)
            before = listener._backoffs
            cpu0 = time.process_time()
            await zokio.sleep(0.5)        # out of fds all along
            stats["backoffs_in_half_second"] = listener._backoffs - before
            stats["cpu_in_half_second"] = time.process_time() - cpu0
            stats["held_when_exhausted"] = len(held)
            for s in held:                # free the fds: accept resumes
                s.close()
            held.clear()
        stats = {}
        h = zokio.spawn(freer())
        while accepted < TOTAL:
            s, _ = await listener.accept()
            accepted += 1
            held.append(s)
            if len(held) >= 5 and "held_when_exhausted" in stats:
                for x in held:
                    x.close()
                held.clear()
        await h
        for s in held:
            s.close()
        listener.close()
        stats["accepted"] = accepted
        stats["backoffs"] = listener._backoffs
        return stats

    print(json.dumps(zokio.Runtime(2).block_on(main())), flush=True)
""")


@pytest.mark.timeout(60)
def test_accept_backs_off_under_emfile_and_recovers(tmp_path, util):
    """A server whose RLIMIT_NOFILE leaves room for ~10 connections gets 40:
    accept hits EMFILE, waits with a growing delay (a handful of attempts in
    half a second, not a spin), and serves every connection once the held
    ones are closed."""
    total = 40
    script = tmp_path / "emfile_server.py"
    script.write_text(_EMFILE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(total)], cwd=tmp_path,
                            env=util.subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(total):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        out, err = proc.communicate(timeout=45)
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["accepted"] == total
    assert 1 <= stats["held_when_exhausted"] <= 12
    # 10 ms doubling to 1 s: about 6 attempts in half a second; a spinning
    # accept would make thousands
    assert 1 <= stats["backoffs_in_half_second"] <= 15, stats
    assert stats["cpu_in_half_second"] < 0.25, stats
