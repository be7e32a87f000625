"""TcpStream.sendfile: a file to a client through the kernel's zero-copy
path, on both backends; no fd left open."""
from __future__ import annotations

import hashlib
import os

import pytest

import zokio
import zokio.fs as fs
from zokio.net import TcpListener, TcpStream, UnixListener, UnixStream

from test_fs import no_fd_leak  # noqa: F401  (autouse: every test here)

pytestmark = pytest.mark.timeout(60)


async def _read_all(stream, slow=False):
    h = hashlib.sha256()
    n = 0
    while True:
        b = await stream.read(65536)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)
        if slow and n % (1 << 20) < 65536:
            await zokio.sleep(0.005)  # let the sender's socket buffer fill up


def test_sendfile_16_mib_to_a_client(make_runtime, tmp_path):
    data = os.urandom(16 << 20)
    p = tmp_path / "big"
    p.write_bytes(data)

    async def main():
        lst = TcpListener.bind("127.0.0.1", 0)
        port = lst.local_address[1]

        async def client():
            s = await TcpStream.connect("127.0.0.1", port)
            try:
                return await _read_all(s, slow=True)
            finally:
                s.close()  # unread data: the sender's connection is reset

        c = zokio.spawn(client())
        conn, _ = await lst.accept()
        lst.close()
        async with await fs.open(p, "rb") as f:
            sent = await conn.sendfile(f)
        conn.close()
        return sent, await c

    sent, (n, digest) = make_runtime(2).block_on(main())
    assert sent == n == len(data)
    assert digest == hashlib.sha256(data).hexdigest()


def test_sendfile_offset_count_and_plain_files(make_runtime, tmp_path):
    data = os.urandom(3 << 20)
    p = tmp_path / "f"
    p.write_bytes(data)

    async def main():
        path = str(tmp_path / "sock")
        lst = UnixListener.bind(path)

        async def client():
            s = await UnixStream.connect(path)
            try:
                return await _read_all(s)
            finally:
                s.close()

        c = zokio.spawn(client())
        conn, _ = await lst.accept()
        lst.close()
        out = []
        with open(p, "rb") as pyfile:                          # a Python file object
            out.append(await conn.sendfile(pyfile, 100, 1000))
            out.append(pyfile.tell())                            # position untouched
        fd = os.open(p, os.O_RDONLY)                           # an fd
        try:
            out.append(await conn.sendfile(fd, len(data) - 10))  # count None: the rest
            out.append(await conn.sendfile(fd, len(data) + 5))   # past the end: nothing
            out.append(await conn.sendfile(fd, len(data) - 3, 100))  # short: the file ends
        finally:
            os.close(fd)
        async with await fs.open(tmp_path / "g", "wb+") as f:  # a zokio File with a buffer
            await f.write(b"buffered bytes")
            out.append(await conn.sendfile(f))
        conn.close()
        n, digest = await c
        return out, n, digest

    out, n, digest = make_runtime(2).block_on(main())
    assert out == [1000, 0, 10, 0, 3, 14]
    want = data[100:1100] + data[-10:] + data[-3:] + b"buffered bytes"
    assert n == len(want)
    assert digest == hashlib.sha256(want).hexdigest()


def test_sendfile_to_a_peer_that_goes_away(make_runtime, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(os.urandom(32 << 20))

    async def main():
        lst = TcpListener.bind("127.0.0.1", 0)
        port = lst.local_address[1]

        async def client():
            s = await TcpStream.connect("127.0.0.1", port)
            await s.read(65536)
            s.close()  # unread data: the sender's connection is reset

        c = zokio.spawn(client())
        conn, _ = await lst.accept()
        lst.close()
        async with await fs.open(p, "rb") as f:
            try:
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    await conn.sendfile(f)
            finally:
                conn.close()
        await c

    make_runtime(2).block_on(main())
