"""TCP: TcpListener and TcpStream."""
from __future__ import annotations

import errno
import os
import socket
from typing import Any, Optional

from .._api import timeout as _timeout
from . import _ops
from .._native import op_connect
from ._resolve import _numeric, lookup_host
from ._stream import SocketListener, SocketStream


def _resolve_now(host: Optional[str], port: int, passive: bool) -> list[tuple[int, Any]]:
    """Synchronous resolution for bind (setup code): numeric hosts at once."""
    if host is not None and host != "":
        quick = _numeric(host, port, 0)
        if quick is not None:
            return quick
    flags = socket.AI_PASSIVE if passive else 0
    infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, flags)
    out: list[tuple[int, Any]] = []
    for fam, _t, _p, _c, addr in infos:
        if (fam, addr) not in out:
            out.append((int(fam), addr))
    return out


class TcpStream(SocketStream):
    """A TCP connection.

    ``await TcpStream.connect(host, port)``, ``listener.accept()`` or
    ``TcpStream.from_socket(sock)``.  TCP_NODELAY is on.  One task may read
    while another writes (on any workers); a second concurrent reader or
    writer gets ``BusyResourceError``.  See docs/api.md for the methods and
    their cancel-safety.
    """

    __slots__ = ()

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: Optional[float] = None) -> "TcpStream":
        """Resolve ``host`` (``lookup_host``) and connect to each address in
        order until one accepts.  ``timeout`` (seconds) bounds the whole call
        and raises ``TimeoutError`` naming the address."""
        if timeout is None:
            return await cls._connect(host, port)
        try:
            async with _timeout(timeout):
                return await cls._connect(host, port)
        except TimeoutError as e:
            if e.errno is not None:
                raise
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"connect to {_ops.fmt_address((host, port))} timed out after {timeout} s") from None

    @classmethod
    async def _connect(cls, host: str, port: int) -> "TcpStream":
        addrs = await lookup_host(host, port)
        failures: list[tuple[Any, OSError]] = []
        for family, addr in addrs:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            fd = sock.detach()
            try:
                await op_connect(fd, addr)
            except OSError as e:
                os.close(fd)
                failures.append((addr, e))
                continue
            except BaseException:
                os.close(fd)
                raise
            return cls(fd, family, addr)
        if not failures:
            raise OSError(errno.EADDRNOTAVAIL, f"no address found for {host!r}")
        first = failures[0][1]
        if len({e.errno for _a, e in failures}) == 1 and first.errno is not None:
            where = ", ".join(_ops.fmt_address(a) for a, _e in failures)
            raise type(first)(first.errno, f"{first.strerror} (connecting to {where})")
        raise OSError("could not connect to any address: " + "; ".join(
            f"{_ops.fmt_address(a)}: {e}" for a, e in failures))

    @classmethod
    def from_socket(cls, sock: socket.socket) -> "TcpStream":
        """Take over a connected TCP ``socket.socket`` (it is detached: the
        stream owns the fd from now on and makes it non-blocking)."""
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"from_socket needs a TCP socket, got {sock!r}")
        family = sock.family
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        sock.setblocking(False)
        fd = sock.detach()
        return cls(fd, family, peer)

    def set_nodelay(self, nodelay: bool = True) -> None:
        """Set TCP_NODELAY (on by default: small writes go at once)."""
        self.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)

    def nodelay(self) -> bool:
        return bool(self.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class TcpListener(SocketListener):
    """A listening TCP socket.

    ``TcpListener.bind(host, port)``; ``await listener.accept()`` returns
    ``(TcpStream, address)``; ``async for stream, address in listener``;
    ``async with``.  Accepted streams have TCP_NODELAY on.
    """

    __slots__ = ()

    @classmethod
    def bind(cls, host: Optional[str], port: int, *, backlog: int = 1024,
             reuse_port: bool = False) -> "TcpListener":
        """Bind and listen.  ``port=0`` picks a free port (see
        ``local_address``).  ``host`` None or ``""`` means every interface;
        a name is resolved here, synchronously (this is setup code), and
        the first address that binds wins.  SO_REUSEADDR is on;
        ``reuse_port`` sets SO_REUSEPORT (several listeners share a port)."""
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        errors: list[OSError] = []
        for family, addr in _resolve_now(host, port, passive=True):
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # Accepted sockets inherit it from the listener (Linux).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.bind(addr)
                sock.listen(backlog)
            except OSError as e:
                sock.close()
                errors.append(_ops.with_address(e, "binding", addr))
                continue
            return cls(sock.detach(), family, TcpStream)
        if errors:
            raise errors[0]
        raise OSError(errno.EADDRNOTAVAIL, f"no address to bind for {host!r}")
