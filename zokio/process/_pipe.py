"""The parent's ends of a child's stdin, stdout and stderr pipes.

A pipe end is a non-blocking fd driven by the worker's completion port
(READ and WRITE ops: io_uring reads the pipe itself, epoll waits for
readiness and retries).  Ownership follows ``zokio.net``'s streams: one
reader and one writer at a time (``BusyResourceError`` otherwise), the fd
closed exactly once, and never while an op may still act on its number: a
``close()`` with an op in flight cancels that op (pipes have no
``shutdown(2)``) and the op's own ``finally`` closes the fd.
"""
from __future__ import annotations

import errno
import os
from typing import Any, Optional

from .._native import cancel_fd_ops, op_read, op_write
from ..net._ops import BusyResourceError, IncompleteReadError, LimitOverrunError, closed_error
from ..net._stream import _FdOwner

_CHUNK = 65536


class _PipeEnd(_FdOwner):
    __slots__ = ("_tok", "_name")
    _kind = "pipe"

    def __init__(self, fd: int, name: str) -> None:
        _FdOwner.__init__(self, fd, 0)
        self._tok = [None]
        self._name = name

    def _idle(self) -> bool:
        return bool(self._tok)

    def _wake_pending(self, fd: int) -> None:
        cancel_fd_ops(fd)

    def _sockname(self, check: bool = True) -> Any:  # pragma: no cover - not a socket
        raise TypeError("a pipe has no address")

    def socket(self) -> Any:
        raise TypeError("a pipe is not a socket")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {self._name} {state}>"

    def _take(self, what: str) -> list:
        t = self._tok
        try:
            t.pop()
        except IndexError:
            raise BusyResourceError(
                f"another task is already {what} this pipe; one at a time") from None
        return t

    def _give(self, t: list) -> None:
        t.append(None)
        if self._closed:
            self._finish_close()

    def _error(self, e: OSError) -> OSError:
        if self._closed:
            return closed_error(self._kind)
        return e


class PipeReader(_PipeEnd):
    """The read end of a child's stdout or stderr."""

    __slots__ = ("_rbuf",)

    def __init__(self, fd: int, name: str) -> None:
        _PipeEnd.__init__(self, fd, name)
        self._rbuf: Optional[bytearray] = None

    async def _chunk(self, n: int) -> bytes:
        if self._closed:
            raise closed_error(self._kind)
        try:
            return await op_read(self._fd, n)
        except OSError as e:
            raise self._error(e) from None

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are available (``b""`` at end of
        file); ``n < 0`` reads to end of file.  Cancel-safe for ``n >= 0``; a
        cancelled ``read(-1)`` keeps what it read buffered for the next call."""
        t = self._take("reading from")
        try:
            if n >= 0:
                if self._rbuf:
                    buf = self._rbuf
                    if n >= len(buf):
                        self._rbuf = None
                        return bytes(buf)
                    out = bytes(buf[:n])
                    del buf[:n]
                    return out
                return await self._chunk(max(n, 1)) if n else b""
            while True:
                chunk = await self._chunk(_CHUNK)
                if not chunk:
                    out = bytes(self._rbuf or b"")
                    self._rbuf = None
                    return out
                if self._rbuf is None:
                    self._rbuf = bytearray(chunk)
                else:
                    self._rbuf += chunk
        finally:
            self._give(t)

    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``IncompleteReadError`` if the pipe ends
        first.  Cancelled part-way, what was read stays buffered."""
        if n < 0:
            raise ValueError("read_exact: n must be >= 0")
        t = self._take("reading from")
        try:
            while len(self._rbuf or b"") < n:
                chunk = await self._chunk(_CHUNK)
                if not chunk:
                    partial = bytes(self._rbuf or b"")
                    self._rbuf = None
                    raise IncompleteReadError(partial, n)
                if self._rbuf is None:
                    self._rbuf = bytearray(chunk)
                else:
                    self._rbuf += chunk
            buf = self._rbuf
            assert buf is not None
            out = bytes(buf[:n])
            del buf[:n]
            if not buf:
                self._rbuf = None
            return out
        finally:
            self._give(t)

    async def readuntil(self, separator: bytes = b"\n", *, limit: int = _CHUNK) -> bytes:
        """Bytes up to and including ``separator`` (see
        ``zokio.net.TcpStream.readuntil``).  Cancel-safe."""
        if not separator:
            raise ValueError("readuntil: the separator must not be empty")
        t = self._take("reading from")
        try:
            start = 0
            while True:
                buf = self._rbuf
                if buf:
                    i = buf.find(separator, start)
                    if i >= 0:
                        end = i + len(separator)
                        if end > limit:
                            raise LimitOverrunError(
                                f"separator found {end} bytes in, beyond the limit of {limit}", i)
                        out = bytes(buf[:end])
                        del buf[:end]
                        if not buf:
                            self._rbuf = None
                        return out
                    if len(buf) >= limit:
                        raise LimitOverrunError(
                            f"no separator within the limit of {limit} bytes", len(buf))
                    start = max(0, len(buf) - len(separator) + 1)
                chunk = await self._chunk(_CHUNK)
                if not chunk:
                    partial = bytes(self._rbuf or b"")
                    self._rbuf = None
                    raise IncompleteReadError(partial, None)
                if self._rbuf is None:
                    self._rbuf = bytearray(chunk)
                else:
                    self._rbuf += chunk
        finally:
            self._give(t)

    async def readline(self) -> bytes:
        """One line with its ``\\n``; the partial last line at end of file;
        ``b""`` once nothing is left."""
        try:
            return await self.readuntil(b"\n")
        except IncompleteReadError as e:
            return e.partial

    def __aiter__(self) -> "PipeReader":
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class PipeWriter(_PipeEnd):
    """The write end of a child's stdin.  ``close()`` (or ``async with``)
    gives the child end of file."""

    __slots__ = ()

    async def write(self, data: Any) -> int:
        """Write some of ``data``; returns how many bytes went."""
        t = self._take("writing to")
        try:
            if self._closed:
                raise closed_error(self._kind)
            return await op_write(self._fd, data)
        except OSError as e:
            raise self._error(e) from None
        finally:
            self._give(t)

    async def write_all(self, data: Any) -> None:
        """Write all of ``data``.  ``BrokenPipeError`` if the child closed
        its stdin.  Not cancel-safe: a cancelled call wrote an unknown
        prefix."""
        t = self._take("writing to")
        try:
            if self._closed:
                raise closed_error(self._kind)
            view = memoryview(data).cast("B")
            fd = self._fd
            sent = 0
            total = len(view)
            while sent < total:
                k = await op_write(fd, view[sent:])
                if k <= 0:
                    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
                sent += k
        except OSError as e:
            raise self._error(e) from None
        finally:
            self._give(t)
