"""What TCP and Unix streams and listeners share: an fd, the busy tokens,
closing, and the byte-stream methods.

Ownership rules (they are what makes the classes safe on several workers):

* The hot path uses ``self._fd`` (an int) and one native op per call; socket
  objects are made only for setup and for ``socket()``.
* Busy tokens.  Each direction has a ``BusyToken`` (``_rtok`` for reading,
  ``_wtok`` for writing, ``_atok`` for accepting): a call takes it
  (``take()``, one atomic compare-and-swap) and gives it back in
  ``finally``, so of two tasks that call ``read`` at the same instant on two
  workers exactly one gets the token and the other gets
  ``BusyResourceError`` before anything is read: bytes are never split
  between two readers or interleaved between two writers.  A token is
  truthy while free.
* The fast path.  ``read``, ``readinto``, ``write`` and ``write_all`` are
  native methods (``native/io/stream.c``, put on ``SocketStream`` by
  ``stream_install`` below): they take the token and return the op itself,
  which gives the token back when its task takes the outcome.  They run no
  Python code of ours unless something needs it: bytes buffered by
  ``readuntil`` or a cancelled ``read_exact``, a closed stream or a busy
  token (the ``_*_slow`` coroutines below), a close or an ``OSError`` when
  the op ends (``_op_end``), a partial ``write_all`` (``_write_rest``).
* Closing.  ``close()`` sets ``_closed``, then looks at the tokens: with no
  op in flight it closes the fd at once; with one in flight it shuts the
  socket down (which completes the pending recv/send/accept in the kernel,
  on both backends) and the op's own ``finally`` closes the fd once the last
  token is back.  The fd is therefore never closed while the port may still
  retry a syscall on its number (the epoll backend would then act on
  whatever file reuses the number).  ``_fdbox`` holds the fd once; taking
  it out (``pop()``, under ``_fd_lock``) makes the close happen exactly once
  whichever thread gets there; the wake and ``socket()`` use the fd only
  under the same lock while it is still in the box, so neither can reach a
  number already closed and reused by another file.  Each side stores its own flag before reading the other's
  (close: ``_closed`` then the tokens; an op: its token then ``_closed``), so
  at least one of them sees the other.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import warnings
from typing import Any, Optional

from .._api import sleep
from . import _ops
from .._native import (
    BusyToken,
    op_accept,
    op_poll,
    op_recv,
    op_recv_into,
    op_send,
    op_shutdown,
    stream_install,
)
from .._runtime import forget_fd_everywhere as _forget_fd_everywhere
from ._ops import (
    BusyResourceError,
    IncompleteReadError,
    LimitOverrunError,
    closed_error,
    with_address,
)

_READ_CHUNK = 65536
_POLLOUT = 0x004  # poll.h POLLOUT (select.POLLOUT)

# Guards the cold paths that touch an fd another thread may be closing:
# taking the fd out of its box to close it, waking a pending op, making the
# socket object of socket().  Never held on the read/write path.  Reentrant:
# a garbage collection inside it may finalize another stream, whose
# __del__ closes its fd through here on the same thread.
_fd_lock = threading.RLock()
_logger = logging.getLogger("zokio")

# accept() errors after which the listener waits and tries again: fd
# exhaustion and transient kernel memory shortage.
_ACCEPT_BACKOFF_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors that concern one aborted connection, not the listener.
_ACCEPT_RETRY_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})
ACCEPT_BACKOFF_FIRST = 0.01   # seconds; doubles per failure
ACCEPT_BACKOFF_MAX = 1.0


def _shutdown_fd(fd: int, family: int, type: int, how: int) -> None:
    s = socket.socket(family, type, 0, fd)
    try:
        s.shutdown(how)
    except OSError:
        pass  # not connected: nothing pending to wake
    finally:
        s.detach()


class _FdOwner:
    """An fd with exactly-once close and the deferred close of the header."""

    __slots__ = ("_fd", "_fdbox", "_family", "_closed", "_sock", "__weakref__")
    _kind = "socket"
    _type = socket.SOCK_STREAM

    def __init__(self, fd: int, family: int) -> None:
        self._fd = fd
        self._fdbox = [fd]
        self._family = family
        self._closed = False
        self._sock: Optional[socket.socket] = None

    # -- closing ----------------------------------------------------------
    def _idle(self) -> bool:  # no op holds a token
        raise NotImplementedError

    def _wake_pending(self, fd: int) -> None:
        _shutdown_fd(fd, self._family, self._type, socket.SHUT_RDWR)

    def close(self) -> None:
        """Close it.  An op pending on it (in another task) completes with
        ``ClosedResourceError``; the fd is closed once that op has ended.
        Idempotent; callable from any thread."""
        if self._closed:
            return
        self._closed = True
        if not self._idle():
            # Wake the op in flight.  Under _fd_lock the fd cannot be closed
            # (that takes it out of the box under the same lock), so the
            # wake never reaches a number reused by another file.
            with _fd_lock:
                box = self._fdbox
                if box:
                    self._wake_pending(box[0])
        self._finish_close()

    def _finish_close(self) -> None:
        if not self._idle():
            return  # the op in flight closes it when it ends
        with _fd_lock:
            try:
                fd = self._fdbox.pop()
            except IndexError:
                return  # someone else closed it
            self._fd = -1
            sock = self._sock
            if sock is not None:
                sock.detach()
        self._on_closed()
        os.close(fd)

    def _on_closed(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The fd (-1 once closed).  zokio owns it: do not close it."""
        return self._fd

    def socket(self) -> socket.socket:
        """A ``socket.socket`` over this object's fd, for options zokio does
        not wrap (``setsockopt``, ``getsockopt``...).  It is non-blocking and
        belongs to this object: do not close it or do I/O with it; it is
        detached when this object closes."""
        if self._closed:
            raise closed_error(self._kind)
        sock = self._sock
        if sock is None:
            with _fd_lock:  # one socket object, and never over a closed fd
                sock = self._sock
                if sock is None:
                    if not self._fdbox:
                        raise closed_error(self._kind)
                    sock = self._sock = socket.socket(self._family, self._type, 0,
                                                      self._fdbox[0])
        return sock

    def _sockname(self, check: bool = True) -> Any:
        if check and self._closed:
            raise closed_error(self._kind)
        s = self._sock
        if s is not None:
            return s.getsockname()
        s = socket.socket(self._family, self._type, 0, self._fd)
        try:
            return s.getsockname()
        finally:
            s.detach()

    # The defaults bind what the finalizer needs: at interpreter exit this
    # module's globals may already be None when a forgotten socket dies.
    def __del__(self, _warn: Any = warnings.warn, _close: Any = os.close) -> None:
        box = getattr(self, "_fdbox", None)
        if not box:
            return
        self._closed = True
        try:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)
            self._finish_close()
        except Exception:
            # Interpreter teardown (globals gone): close the fd directly.
            try:
                _close(box.pop())
            except (IndexError, OSError):
                pass

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class SocketStream(_FdOwner):
    """A connected byte stream (TCP or Unix).  Made by ``connect``,
    ``accept`` or ``from_socket``; see ``TcpStream``."""

    __slots__ = ("_rtok", "_wtok", "_rbuf", "_peer")
    _kind = "stream"

    def __init__(self, fd: int, family: int, peer: Any = None) -> None:
        _FdOwner.__init__(self, fd, family)
        self._rtok = BusyToken()
        self._wtok = BusyToken()
        self._rbuf: Optional[bytearray] = None
        self._peer = peer

    def _idle(self) -> bool:
        return bool(self._rtok) and bool(self._wtok)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {state} peer={_ops.fmt_address(self._peer)}>"

    # -- errors -----------------------------------------------------------
    def _busy(self, what: str) -> BusyResourceError:
        return BusyResourceError(
            f"another task is already {what} this {self._kind}; one reader and one "
            f"writer at a time")

    def _error(self, e: OSError, action: str) -> OSError:
        if self._closed:
            return closed_error(self._kind)
        if isinstance(e, _ops.ClosedResourceError):
            return e
        return with_address(e, action, self._peer)

    # -- reading ----------------------------------------------------------
    async def _read_slow(self, n: int = _READ_CHUNK) -> bytes:
        """Up to ``n`` bytes (at least 1), as soon as any are available;
        ``b""`` at end of stream.  Cancel-safe."""
        t = self._rtok
        if not t.take():
            raise self._busy("reading from")
        try:
            if self._rbuf:
                return self._take(n)
            if self._closed:
                raise closed_error(self._kind)
            data = await op_recv(self._fd, n)
        except OSError as e:
            raise self._error(e, "reading from") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        if not data and self._closed:
            raise closed_error(self._kind)
        return data

    async def _readinto_slow(self, buffer: Any) -> int:
        """Read into a writable buffer (no copy); returns the byte count, 0 at
        end of stream.  Cancel-safe."""
        t = self._rtok
        if not t.take():
            raise self._busy("reading from")
        try:
            if self._rbuf:
                return self._take_into(buffer)
            if self._closed:
                raise closed_error(self._kind)
            k = await op_recv_into(self._fd, buffer)
        except OSError as e:
            raise self._error(e, "reading from") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        if not k and self._closed:
            raise closed_error(self._kind)
        return k

    def _take(self, n: int) -> bytes:
        buf = self._rbuf
        assert buf is not None
        if n >= len(buf):
            self._rbuf = None
            return bytes(buf)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _take_into(self, buffer: Any) -> int:
        buf = self._rbuf
        assert buf is not None
        with memoryview(buffer) as mv, mv.cast("B") as b:
            k = min(len(b), len(buf))
            b[:k] = buf[:k]
        if k == len(buf):
            self._rbuf = None
        else:
            del buf[:k]
        return k

    def _unread(self, data: Any) -> None:
        """Put bytes back at the front of the stream (reader token held)."""
        if not data:
            return
        if self._rbuf:
            self._rbuf[:0] = data
        else:
            self._rbuf = bytearray(data)

    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``IncompleteReadError`` if the stream ends
        first.  Cancelled (or failing) part-way, the bytes read so far are put
        back into the stream: the next read returns them."""
        if n < 0:
            raise ValueError("read_exact: n must be >= 0")
        t = self._rtok
        if not t.take():
            raise self._busy("reading from")
        buf = bytearray(n)
        got = 0
        try:
            if self._rbuf:
                got = self._take_into(buf)
            if got < n and self._closed:
                raise closed_error(self._kind)
            fd = self._fd
            recv_into = op_recv_into
            while got < n:
                k = await recv_into(fd, buf, 0, got)
                if not k:
                    if self._closed:
                        raise closed_error(self._kind)
                    partial = bytes(buf[:got])
                    got = 0
                    raise IncompleteReadError(partial, n)
                got += k
        except BaseException as e:
            self._unread(memoryview(buf)[:got])
            if isinstance(e, OSError):
                raise self._error(e, "reading from") from None
            raise
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        return bytes(buf)

    async def readuntil(self, separator: bytes = b"\n", *, limit: int = _READ_CHUNK) -> bytes:
        """Bytes up to and including ``separator``.  The bytes after it stay
        buffered in the stream for the next call.  ``LimitOverrunError`` if
        no separator ends within ``limit`` bytes (the data stays buffered);
        ``IncompleteReadError`` (with what was read) at end of stream.
        Cancel-safe: a cancelled call leaves every byte it read buffered."""
        if not separator:
            raise ValueError("readuntil: the separator must not be empty")
        t = self._rtok
        if not t.take():
            raise self._busy("reading from")
        try:
            seplen = len(separator)
            start = 0
            while True:
                buf = self._rbuf
                if buf:
                    i = buf.find(separator, start)
                    if i >= 0:
                        end = i + seplen
                        if end > limit:
                            raise LimitOverrunError(
                                f"separator found {end} bytes in, beyond the limit of {limit}", i)
                        return self._take(end)
                    if len(buf) >= limit:
                        raise LimitOverrunError(
                            f"no separator within the limit of {limit} bytes", len(buf))
                    start = max(0, len(buf) - seplen + 1)
                if self._closed:
                    raise closed_error(self._kind)
                chunk = await op_recv(self._fd, _READ_CHUNK)
                if not chunk:
                    if self._closed:
                        raise closed_error(self._kind)
                    partial = bytes(self._rbuf or b"")
                    self._rbuf = None
                    raise IncompleteReadError(partial, None)
                if self._rbuf:
                    self._rbuf += chunk
                else:
                    self._rbuf = bytearray(chunk)
        except OSError as e:
            raise self._error(e, "reading from") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    async def readline(self) -> bytes:
        """``readuntil(b"\\n")``, except that at end of stream it returns the
        partial line (``b""`` when nothing is left) instead of raising."""
        try:
            return await self.readuntil(b"\n")
        except IncompleteReadError as e:
            return e.partial

    # -- writing ----------------------------------------------------------
    async def _write_slow(self, data: Any) -> int:
        """Send some of ``data`` (any bytes-like object, not copied); return
        how many bytes went.  Waits until at least one byte can go."""
        t = self._wtok
        if not t.take():
            raise self._busy("writing to")
        try:
            if self._closed:
                raise closed_error(self._kind)
            return await op_send(self._fd, data)
        except OSError as e:
            raise self._error(e, "writing to") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    async def _write_all_slow(self, data: Any) -> None:
        """Send all of ``data``.  Not cancel-safe: a cancelled call has sent
        an unknown prefix of ``data`` (what the kernel took before the
        cancel), and nothing after it."""
        if not self._wtok.take():
            raise self._busy("writing to")
        await self._write_rest(data, 0)  # gives the token back

    async def _write_rest(self, data: Any, sent: int) -> None:
        """write_all from byte ``sent`` on, with the write token held on
        entry (taken by _write_all_slow, or handed over by the native op
        after a send that took only ``sent`` bytes); gives it back."""
        t = self._wtok
        try:
            if self._closed:
                raise closed_error(self._kind)
            fd = self._fd
            cls = type(data)
            total = len(data) if (cls is bytes or cls is bytearray) else memoryview(data).nbytes
            while sent < total:
                if self._closed:
                    raise closed_error(self._kind)
                k = await op_send(fd, data, 0, sent)
                if k <= 0:
                    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
                sent += k
        except OSError as e:
            raise self._error(e, "writing to") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    def _op_end(self, value: Any, exc: Optional[BaseException], mode: int) -> Any:
        """How a native read/write op ends when the stream was closed under
        it or the op failed with an OSError (its token is back): finish the
        close, put the address into the error.  ``mode``: 1 read, 2 write,
        3 write_all (stream.h)."""
        if self._closed:
            self._finish_close()
        if exc is not None:
            if isinstance(exc, OSError):
                raise self._error(exc, "reading from" if mode == 1 else "writing to") from None
            raise exc
        if mode == 1 and not value and self._closed:
            raise closed_error(self._kind)
        return value

    async def sendfile(self, file: Any, offset: int = 0, count: Optional[int] = None) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (all of the rest
        when ``count`` is None) through the kernel's zero-copy path
        (``sendfile(2)`` on the non-blocking socket, waiting with a POLL op
        whenever the socket buffer is full); returns the bytes sent (fewer
        than ``count`` only when the file ends first).  ``file`` is a
        ``zokio.fs.File`` (its write buffer is flushed first), a Python file
        object with ``fileno()``, or an fd; its position is not used nor
        moved.  Not cancel-safe: a cancelled call has sent an unknown part."""
        if offset < 0:
            raise ValueError("sendfile: offset must be >= 0")
        if count is not None and count < 0:
            raise ValueError("sendfile: count must be >= 0 or None")
        flush = getattr(file, "flush", None)
        if flush is not None and type(file).__module__.startswith("zokio.fs"):
            await flush()
        in_fd = file if isinstance(file, int) else file.fileno()
        if count is None:
            count = max(0, os.fstat(in_fd).st_size - offset)
        t = self._wtok
        if not t.take():
            raise self._busy("writing to")
        sent = 0
        try:
            fd = self._fd
            while sent < count:
                if self._closed:
                    raise closed_error(self._kind)
                try:
                    k = os.sendfile(fd, in_fd, offset + sent, min(count - sent, 1 << 30))
                except (BlockingIOError, InterruptedError):
                    await op_poll(fd, _POLLOUT)
                    continue
                if k == 0:
                    break  # the file ended
                sent += k
            return sent
        except OSError as e:
            raise self._error(e, "sending a file to") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    async def shutdown(self) -> None:
        """Close the write half: the peer reads end of stream; reading here
        goes on.  Waits for no write in progress (``BusyResourceError`` if
        one is)."""
        t = self._wtok
        if not t.take():
            raise self._busy("writing to")
        try:
            if self._closed:
                raise closed_error(self._kind)
            await op_shutdown(self._fd, socket.SHUT_WR)
        except OSError as e:
            raise self._error(e, "shutting down") from None
        finally:
            t.give()
            if self._closed:
                self._finish_close()

    # -- addresses ---------------------------------------------------------
    @property
    def peer_address(self) -> Any:
        """The peer's address (``socket`` module form)."""
        if self._peer is None:
            if self._closed:
                raise closed_error(self._kind)
            s = socket.socket(self._family, self._type, 0, self._fd)
            try:
                self._peer = s.getpeername()
            finally:
                s.detach()
        return self._peer

    @property
    def local_address(self) -> Any:
        """This end's address (``socket`` module form)."""
        return self._sockname()


# read, readinto, write and write_all: the native fast path (top of file).
stream_install(SocketStream)


class SocketListener(_FdOwner):
    """A listening socket: ``accept`` and ``async for``; see ``TcpListener``."""

    __slots__ = ("_atok", "_stream_cls", "_backoffs")
    _kind = "listener"

    def __init__(self, fd: int, family: int, stream_cls: type) -> None:
        _FdOwner.__init__(self, fd, family)
        self._atok = BusyToken()
        self._stream_cls = stream_cls
        self._backoffs = 0  # accept failures waited out (EMFILE...): for tests

    def _idle(self) -> bool:
        return bool(self._atok)

    def _wake_pending(self, fd: int) -> None:
        # SHUT_RD on a listening TCP socket fails a pending accept (EINVAL).
        _shutdown_fd(fd, self._family, self._type, socket.SHUT_RD)

    def close(self) -> None:
        """Stop listening and close it.  A pending accept (in another task)
        completes with ``ClosedResourceError``.  Idempotent; callable from
        any thread."""
        if self._closed:
            return
        self._closed = True  # before any wake: the woken accept must see it
        with _fd_lock:
            box = self._fdbox
            if box:
                # Stop listening now, also when no accept is pending: on
                # io_uring a multishot ACCEPT armed by an earlier accept holds
                # the file, so the socket would go on accepting (into the
                # port's queue) after close(2).  Every port that keeps such
                # a record (any worker's) cancels it and closes what it
                # queued.
                _forget_fd_everywhere(box[0])
                self._stop_listening(box[0])
                if not self._idle():
                    self._wake_pending(box[0])
        self._finish_close()

    def _stop_listening(self, fd: int) -> None:
        # SHUT_RD on a listening TCP socket stops it at once (connects are
        # refused) and ends the multishot SQE.
        _shutdown_fd(fd, self._family, self._type, socket.SHUT_RD)

    def __repr__(self) -> str:
        if self._closed:
            return f"<{type(self).__name__} closed>"
        try:
            where = _ops.fmt_address(self._sockname())
        except OSError:
            where = "?"
        return f"<{type(self).__name__} fd={self._fd} {where}>"

    async def accept(self) -> tuple[Any, Any]:
        """Wait for a connection; return ``(stream, peer_address)``.

        Cancel-safe: a connection is taken from the kernel only by a call
        that returns it.  Out of fds (EMFILE/ENFILE) or kernel memory, the
        listener waits (10 ms, doubling to 1 s) and tries again, without
        spinning; the connections wait in the backlog meanwhile."""
        t = self._atok
        if not t.take():
            raise BusyResourceError("another task is already accepting on this listener")
        delay = 0.0
        try:
            while True:
                if self._closed:
                    raise closed_error(self._kind)
                try:
                    fd, addr = await op_accept(self._fd)
                    break
                except OSError as e:
                    if self._closed:
                        raise closed_error(self._kind) from None
                    err = e.errno
                    if err in _ACCEPT_BACKOFF_ERRNOS:
                        self._backoffs += 1
                        if delay == 0.0:  # once per episode
                            _logger.warning("%r: accept failed (%s); backing off until it succeeds",
                                            self, e)
                        delay = min(max(delay * 2, ACCEPT_BACKOFF_FIRST), ACCEPT_BACKOFF_MAX)
                        await sleep(delay)
                        continue
                    if err in _ACCEPT_RETRY_ERRNOS:
                        continue
                    raise with_address(e, "accepting on", self._sockname()) from None
            if self._closed:  # the connection that woke us up, or one racing close()
                os.close(fd)
                raise closed_error(self._kind)
        finally:
            t.give()
            if self._closed:
                self._finish_close()
        return self._stream_cls(fd, self._family, addr), addr

    def __aiter__(self) -> "SocketListener":
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        try:
            return await self.accept()
        except _ops.ClosedResourceError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    @property
    def local_address(self) -> Any:
        """The bound address (``socket`` module form): the port chosen for
        ``port=0`` is here."""
        return self._sockname()
