"""The socket ops zokio.net is built on, and the errors it raises.

Every op here returns an awaitable that completes through the worker's
completion port (``zokio._native.op_*``): on io_uring the kernel does the
I/O, on epoll the port tries the non-blocking syscall and waits for
readiness on EAGAIN.  Addresses are in the ``socket`` module's form.

Where the running ``zokio._native`` predates an op (older builds have only
``op_read``/``op_write``), a slower stand-in written here takes its place:
it tries the non-blocking syscall and, on EAGAIN, waits for readiness with
``poll()`` on the blocking pool.  The stand-ins keep the ops' contracts
(results, errors, cancellation), so the classes above them do not know
which one they run on.  ``NATIVE_OPS`` names the ops the native module has.
"""
from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from .. import _native
from .._api import spawn_blocking

__all__ = [
    "BusyResourceError", "ClosedResourceError", "IncompleteReadError",
    "LimitOverrunError",
]


class BusyResourceError(RuntimeError):
    """Two tasks tried to read (or to write, or to accept) on the same
    stream, socket or listener at once.  One reader and one writer at a time
    is fine; two of either would interleave bytes, so the second is refused
    and nothing is read or written by it."""


class ClosedResourceError(OSError):
    """The stream, socket or listener was closed: by ``close()`` before the
    call, or while the call was waiting (the pending op is completed with
    this error).  ``errno`` is ``EBADF``."""


class IncompleteReadError(EOFError):
    """End of stream before ``read_exact`` / ``readuntil`` had what it
    needed.  ``partial`` holds the bytes that were read (they are no longer
    in the stream); ``expected`` is the number of bytes wanted (None for
    ``readuntil``)."""

    def __init__(self, partial: bytes, expected: int | None) -> None:
        want = "undefined" if expected is None else str(expected)
        super().__init__(f"{len(partial)} bytes read on a total of {want} expected bytes")
        self.partial = partial
        self.expected = expected


class LimitOverrunError(ValueError):
    """``readuntil`` found no separator within ``limit`` bytes.  The bytes
    stay buffered in the stream; ``consumed`` is how many were scanned."""

    def __init__(self, message: str, consumed: int) -> None:
        super().__init__(message)
        self.consumed = consumed


def closed_error(what: str) -> ClosedResourceError:
    return ClosedResourceError(errno.EBADF, f"{what} is closed")


def with_address(exc: OSError, action: str, address: Any) -> OSError:
    """A copy of ``exc`` (same OSError subclass and errno) whose message
    names the action and the address it was about."""
    if exc.errno is None:
        return exc
    new = type(exc)(exc.errno, f"{exc.strerror or os.strerror(exc.errno)} ({action} {fmt_address(address)})")
    new.__cause__ = None
    new.__suppress_context__ = True
    return new


def fmt_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):
        return repr(address)
    if isinstance(address, str):
        return repr(address) if address.startswith("\0") or not address else address
    return repr(address)


# ---- stand-ins for ops the native module does not have (yet) -------------

_POLL_SLICE_MS = 50  # a stand-in's poll() wakes this often to see if it was abandoned


def _poll_fd(fd: int, events: int, abandoned: list) -> int:
    """Blocking-pool job: wait until ``fd`` reports one of ``events``."""
    p = select.poll()
    p.register(fd, events)
    while not abandoned:
        try:
            got = p.poll(_POLL_SLICE_MS)
        except InterruptedError:
            continue
        if got:
            return got[0][1]
    return 0


async def _wait_fd(fd: int, events: int) -> int:
    abandoned: list = []
    try:
        return await spawn_blocking(_poll_fd, fd, events, abandoned)
    finally:
        abandoned.append(True)  # a cancelled wait lets its pool thread go


def _sock(fd: int, family: int = -1, type: int = -1) -> socket.socket:
    """A socket object over ``fd`` for one call; the caller detaches it."""
    if family < 0:
        return socket.socket(fileno=fd)
    return socket.socket(family, type, 0, fd)


async def _accept_standin(fd: int) -> tuple[int, Any]:
    s = _sock(fd)
    try:
        while True:
            try:
                new_fd, addr = s._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                await _wait_fd(fd, select.POLLIN)
                continue
            os.set_blocking(new_fd, False)
            return new_fd, addr
    finally:
        s.detach()


async def _connect_standin(fd: int, address: Any) -> None:
    s = _sock(fd)
    try:
        err = s.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            await _wait_fd(fd, select.POLLOUT)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err not in (0, errno.EISCONN):
            raise OSError(err, os.strerror(err))
    finally:
        s.detach()


def _recv_standin(fd: int, n: int, flags: int = 0) -> Any:
    if flags:
        return _recvmsg_bytes(fd, n, flags)
    return _native.op_read(fd, n)


async def _recvmsg_bytes(fd: int, n: int, flags: int) -> bytes:
    data, _addr, _fl = await _recvmsg_standin(fd, n, flags)
    return data


async def _recv_into_standin(fd: int, buffer: Any, flags: int = 0, offset: int = 0) -> int:
    with memoryview(buffer) as mv, mv.cast("B") as b:
        want = len(b) - offset
        if want <= 0:
            return 0
        data = await _recv_standin(fd, want, flags)
        b[offset:offset + len(data)] = data
        return len(data)


def _send_standin(fd: int, data: Any, flags: int = 0, offset: int = 0) -> Any:
    if offset:
        data = bytes(memoryview(data).cast("B")[offset:])
    if flags:
        return _sendmsg_standin(fd, data, None, flags)
    return _native.op_write(fd, data)


async def _recvmsg_standin(fd: int, n: int, flags: int = 0) -> tuple[bytes, Any, int]:
    s = _sock(fd)
    try:
        while True:
            try:
                data, _anc, msg_flags, addr = s.recvmsg(n, 0, flags)
                return data, addr, msg_flags
            except BlockingIOError:
                await _wait_fd(fd, select.POLLIN)
    finally:
        s.detach()


async def _sendmsg_standin(fd: int, data: Any, address: Any = None, flags: int = 0) -> int:
    s = _sock(fd)
    try:
        while True:
            try:
                if address is None:
                    return s.sendmsg([data], [], flags | socket.MSG_NOSIGNAL)
                return s.sendmsg([data], [], flags | socket.MSG_NOSIGNAL, address)
            except BlockingIOError:
                await _wait_fd(fd, select.POLLOUT)
    finally:
        s.detach()


async def _shutdown_standin(fd: int, how: int) -> None:
    s = _sock(fd)
    try:
        s.shutdown(how)
    finally:
        s.detach()


async def _close_standin(fd: int) -> None:
    os.close(fd)


def _poll_standin(fd: int, events: int) -> Any:
    return _wait_fd(fd, events)


def _pick(name: str, standin: Any) -> Any:
    op = getattr(_native, name, None)
    if op is not None:
        NATIVE_OPS.append(name)
        return op
    return standin


NATIVE_OPS: list[str] = []
op_accept = _pick("op_accept", _accept_standin)
op_connect = _pick("op_connect", _connect_standin)
op_recv = _pick("op_recv", _recv_standin)
op_recv_into = _pick("op_recv_into", _recv_into_standin)
op_send = _pick("op_send", _send_standin)
op_recvmsg = _pick("op_recvmsg", _recvmsg_standin)
op_sendmsg = _pick("op_sendmsg", _sendmsg_standin)
op_shutdown = _pick("op_shutdown", _shutdown_standin)
op_close = _pick("op_close", _close_standin)
op_poll = _pick("op_poll", _poll_standin)
