"""The socket ops zokio.net is built on, and the errors it raises.

Every op returns an awaitable that completes through the worker's
completion port (``zokio._native.op_*``, one row each in native/io/op.c):
on io_uring the kernel does the I/O, on epoll the port tries the
non-blocking syscall and waits for readiness on EAGAIN.  Addresses are in
the ``socket`` module's form.  An op that fails raises ``OSError`` built from
its errno (so the matching subclass: ``ConnectionResetError``...); the
classes add the address to the message (``with_address``).
"""
from __future__ import annotations

import errno
import os
from typing import Any

from .. import _native

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


# ---- the ops ---------------------------------------------------------------
# Bound once here; the classes call them as ``_ops.op_recv(...)``.
op_accept = _native.op_accept
op_connect = _native.op_connect
op_recv = _native.op_recv
op_recv_into = _native.op_recv_into
op_send = _native.op_send
op_recvmsg = _native.op_recvmsg
op_sendmsg = _native.op_sendmsg
op_shutdown = _native.op_shutdown
