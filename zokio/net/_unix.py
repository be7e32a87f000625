"""Unix-domain stream sockets: UnixListener and UnixStream.

Addresses are filesystem paths (``str``/``bytes``/``os.PathLike``) or Linux
abstract names, written with a leading NUL (``"\\0name"`` or ``b"\\0name"``),
exactly as the ``socket`` module takes them.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Optional

from . import _ops
from .._native import op_connect
from ._stream import SocketListener, SocketStream


def _is_abstract(path: Any) -> bool:
    return isinstance(path, (str, bytes)) and len(path) > 0 and path[0] in ("\0", 0)


class UnixStream(SocketStream):
    """A connected Unix-domain stream; the same methods as ``TcpStream``."""

    __slots__ = ()

    @classmethod
    async def connect(cls, path: Any) -> "UnixStream":
        if not _is_abstract(path):
            path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        fd = sock.detach()
        try:
            await op_connect(fd, path)
        except OSError as e:
            os.close(fd)
            raise _ops.with_address(e, "connecting to", path) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, socket.AF_UNIX, path)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> "UnixStream":
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"from_socket needs a Unix stream socket, got {sock!r}")
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        sock.setblocking(False)
        return cls(sock.detach(), socket.AF_UNIX, peer)

    @classmethod
    def pair(cls) -> tuple["UnixStream", "UnixStream"]:
        """Two connected streams (``socket.socketpair``)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls.from_socket(a), cls.from_socket(b)


class UnixListener(SocketListener):
    """A listening Unix-domain socket; ``accept`` returns
    ``(UnixStream, address)``.  A filesystem socket it created is removed
    when it closes (if the path still names that socket)."""

    __slots__ = ("_path", "_ino")

    @classmethod
    def bind(cls, path: Any, *, backlog: int = 1024) -> "UnixListener":
        abstract = _is_abstract(path)
        if not abstract:
            path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError as e:
            sock.close()
            raise _ops.with_address(e, "binding", path) from None
        self = cls(sock.detach(), socket.AF_UNIX, UnixStream)
        self._path: Optional[Any] = None
        self._ino = None
        if not abstract:
            try:
                st = os.stat(path)
                self._path, self._ino = path, (st.st_dev, st.st_ino)
            except OSError:
                pass
        return self

    def _stop_listening(self, fd: int) -> None:
        # shutdown() does not stop a Unix listener, and would make the
        # self-connect below fail.  The path is unlinked on close; on
        # io_uring the multishot ACCEPT that holds the socket is ended by
        # forget_fd_everywhere (SocketListener.close).
        pass

    def _wake_pending(self, fd: int) -> None:
        """Complete a pending accept before the fd closes.  shutdown() does
        not do it for Unix listeners (poll says readable, accept says
        EAGAIN), so connect to ourselves: the accept returns that
        connection, sees the listener closed, closes it and raises
        ClosedResourceError."""
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            try:
                address = s.getsockname()
            finally:
                s.detach()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as w:
                w.connect(address)
        except OSError:
            pass

    def _on_closed(self) -> None:
        path = getattr(self, "_path", None)
        if path is None:
            return
        try:
            st = os.stat(path)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._ino:
                os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                pass
