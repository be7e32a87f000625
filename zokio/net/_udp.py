"""UDP: UdpSocket."""
from __future__ import annotations

import socket
from typing import Any, Optional

from . import _ops
from .._native import BusyToken, op_recv, op_recvmsg, op_send, op_sendmsg
from ._ops import closed_error, with_address
from ._resolve import _numeric, lookup_host
from ._stream import _FdOwner
from ._tcp import _resolve_now

_MAX_DATAGRAM = 65536


class UdpSocket(_FdOwner):
    """A UDP socket.  ``UdpSocket.bind(host, port)``; then ``send_to`` /
    ``recv_from``, or ``await connect(host, port)`` and ``send`` / ``recv``.

    Each call moves one whole datagram.  A datagram longer than the buffer
    asked for is truncated (the rest is discarded, as the kernel does);
    ``recv_from`` / ``recv`` return what fitted.  One receiving and one
    sending task at a time (``BusyResourceError`` otherwise), as for
    streams.
    """

    __slots__ = ("_rtok", "_wtok", "_peer")
    _kind = "UDP socket"
    _type = socket.SOCK_DGRAM

    def __init__(self, fd: int, family: int) -> None:
        _FdOwner.__init__(self, fd, family)
        self._rtok = BusyToken()
        self._wtok = BusyToken()
        self._peer: Any = None

    def _idle(self) -> bool:
        return bool(self._rtok) and bool(self._wtok)

    def _wake_pending(self, fd: int) -> None:
        """Complete a pending receive before the fd closes.  shutdown()
        does not do it for UDP (a non-blocking recv on a shut-down UDP
        socket says EAGAIN while poll says readable), so an empty datagram
        is sent to this socket from a throw-away one; a connected socket is
        first re-connected to that sender, or it would drop the datagram.
        The receive returns it, sees the socket closed and raises
        ClosedResourceError."""
        if self._rtok:
            return  # no receive in flight
        me = socket.socket(self._family, socket.SOCK_DGRAM, 0, fd)
        try:
            local = me.getsockname()
            host = local[0]
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            target = (host,) + tuple(local[1:])
            with socket.socket(self._family, socket.SOCK_DGRAM) as waker:
                waker.connect(target)
                if self._peer is not None:
                    me.connect(waker.getsockname())
                waker.send(b"")
        except OSError:
            pass
        finally:
            me.detach()

    def __repr__(self) -> str:
        return f"<UdpSocket {'closed' if self._closed else f'fd={self._fd}'}>"

    @classmethod
    def bind(cls, host: Optional[str], port: int, *, reuse_port: bool = False) -> "UdpSocket":
        """A UDP socket bound to ``host``:``port`` (``port=0``: any free
        port).  ``host`` "" or None binds every interface."""
        errors: list[OSError] = []
        for family, addr in _resolve_now(host, port, passive=True):
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            try:
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(addr)
            except OSError as e:
                sock.close()
                errors.append(with_address(e, "binding", addr))
                continue
            return cls(sock.detach(), family)
        if errors:
            raise errors[0]
        raise OSError(f"no address to bind for {host!r}")

    @classmethod
    def from_socket(cls, sock: socket.socket) -> "UdpSocket":
        """Take over a UDP ``socket.socket`` (detached; made non-blocking)."""
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"from_socket needs a UDP socket, got {sock!r}")
        family = sock.family
        sock.setblocking(False)
        return cls(sock.detach(), family)

    async def _address(self, address: Any) -> Any:
        """A numeric address of this socket's family for ``address``."""
        host, port = address[0], address[1]
        if self._family == socket.AF_INET6 and len(address) == 4:
            return address
        quick = _numeric(host, port, self._family)
        if quick is not None:
            return quick[0][1]
        found = await lookup_host(host, port, family=self._family, type=socket.SOCK_DGRAM)
        if not found:
            raise OSError(f"no {self._family!r} address for {host!r}")
        return found[0][1]

    async def connect(self, host: str, port: int) -> None:
        """Fix the peer: ``send``/``recv`` use it, and datagrams from
        other addresses are no longer received."""
        addr = await self._address((host, port))
        try:
            self.socket().connect(addr)
        except OSError as e:
            raise with_address(e, "connecting to", addr) from None
        self._peer = addr

    def _busy(self, what: str) -> _ops.BusyResourceError:
        return _ops.BusyResourceError(f"another task is already {what} this UDP socket")

    def _error(self, e: OSError, action: str, address: Any) -> OSError:
        if self._closed:
            return closed_error(self._kind)
        if isinstance(e, _ops.ClosedResourceError):
            return e
        return with_address(e, action, address)

    async def send_to(self, data: Any, address: Any) -> int:
        """Send one datagram to ``address`` (``(host, port)``); returns its size."""
        addr = await self._address(address)
        t = self._wtok
        if not t.take():
            raise self._busy("sending on")
        try:
            if self._closed:
                raise closed_error(self._kind)
            return await op_sendmsg(self._fd, data, addr)
        except OSError as e:
            raise self._error(e, "sending to", addr) from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    async def recv_from(self, n: int = _MAX_DATAGRAM) -> tuple[bytes, Any]:
        """Receive one datagram: ``(data, sender_address)``; a datagram over
        ``n`` bytes is truncated to ``n``.  Cancel-safe."""
        t = self._rtok
        if not t.take():
            raise self._busy("receiving on")
        try:
            if self._closed:
                raise closed_error(self._kind)
            data, addr, _flags = await op_recvmsg(self._fd, n)
        except OSError as e:
            raise self._error(e, "receiving on", self._local_or_none()) from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        if self._closed:
            raise closed_error(self._kind)
        return data, addr

    async def send(self, data: Any) -> int:
        """Send one datagram to the connected peer."""
        t = self._wtok
        if not t.take():
            raise self._busy("sending on")
        try:
            if self._closed:
                raise closed_error(self._kind)
            return await op_send(self._fd, data)
        except OSError as e:
            raise self._error(e, "sending to", self._peer) from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    async def recv(self, n: int = _MAX_DATAGRAM) -> bytes:
        """Receive one datagram from the connected peer (truncated to ``n``).
        Cancel-safe."""
        t = self._rtok
        if not t.take():
            raise self._busy("receiving on")
        try:
            if self._closed:
                raise closed_error(self._kind)
            data = await op_recv(self._fd, n)
        except OSError as e:
            raise self._error(e, "receiving from", self._peer) from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        if not data and self._closed:
            raise closed_error(self._kind)
        return data

    def _local_or_none(self) -> Any:
        try:
            return self._sockname()
        except OSError:
            return None

    @property
    def local_address(self) -> Any:
        return self._sockname()

    @property
    def peer_address(self) -> Any:
        """The connected peer, or None."""
        return self._peer
