"""``zokio.fs.open`` and the File it returns.

A File is an fd plus Python bookkeeping; every read and write is one native
op on the worker's port (io_uring) or one job on the blocking pool (epoll,
or an io_uring without the file opcodes): ``_ops.py`` says which, once per
File at open.

Rules that make a File safe on several workers:

* Position-based calls (``read``, ``readinto``, ``readline``, ``write``,
  ``seek``, ``tell``, ``flush``, ``truncate``, ``fsync``, line iteration)
  take the File's one busy token (``list.pop()``, atomic on both
  interpreters) and give it back when they end: a second task calling one
  of them meanwhile gets ``BusyResourceError`` before anything moves, so
  the read buffer, the write buffer and the file position are only ever
  touched by one task.  ``read_at`` / ``write_at`` / ``stat`` take no token
  (they name their offset and leave the position alone) and may run from
  many tasks at once.
* The fd is closed exactly once, and never while an op or a pool job may
  still use its number: each op holds an entry in ``_inflight`` (a list,
  appended and popped atomically) from before it is submitted until it has
  ended -- a native op ends before its awaiting task resumes, even when the
  task was cancelled (the port delivers the interrupt after the op's own
  completion), and a pool job pops its entry itself, on the pool thread,
  when the syscall returns.  ``close()`` sets ``_closed`` and closes the fd
  at once only when ``_inflight`` is empty; otherwise the last op to end
  closes it.  Each side stores its own mark before it reads the other's, so
  at least one of them sees the other; ``_fdbox.pop()`` picks one closer.
* The position is kept here (``_fpos``: where the next read or write of
  the file goes), and every read and write names its offset (``pread`` /
  ``pwrite``), also on the blocking pool.  A cancelled call's pool job may
  still run after the task has moved on (the pool cannot stop a syscall);
  with the kernel's file position it would move the position under the
  next call, with an explicit offset it cannot.  Append-mode writes go to
  the end (offset -1, ``O_APPEND``) and read the position back with
  ``lseek``; a file that cannot seek (a FIFO, a character device) uses the
  kernel's position (offset -1) throughout.  ``seek`` also sets the
  kernel's position, for users of ``fileno()``.
"""
from __future__ import annotations

import codecs
import errno
import io
import os
import stat as _stat
import threading
import warnings
from typing import Any, Optional

from .._api import spawn_blocking
from ..net._ops import BusyResourceError
from . import _ops
from ._ops import fs_native, path_error, stat_result

__all__ = ["File", "TextFile", "open"]

DEFAULT_BUFFER_SIZE = 65536
_MAX_CHUNK = 8 << 20

op_read = _ops.op_read
op_read_into = _ops.op_read_into
op_write = _ops.op_write


def _closed_error() -> ValueError:
    return ValueError("I/O operation on closed file")


def _pread(fd: int, n: int, off: int) -> bytes:
    return os.read(fd, n) if off < 0 else os.pread(fd, n, off)


def _preadinto(fd: int, buf: Any, off: int) -> int:
    return os.readv(fd, [buf]) if off < 0 else os.preadv(fd, [buf], off)


def _pwrite(fd: int, data: Any, off: int) -> int:
    return os.write(fd, data) if off < 0 else os.pwrite(fd, data, off)


def _parse_mode(mode: str) -> tuple[int, bool, bool, bool, bool]:
    """(open flags, readable, writable, append, binary) of an open() mode."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    modes = set(mode)
    if modes - set("rwxabt+") or len(mode) > len(modes):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = sum(c in modes for c in "rwxa")
    if kinds != 1 or ("b" in modes and "t" in modes):
        raise ValueError("must have exactly one of create/read/write/append mode"
                         if kinds != 1 else "can't have text and binary mode at once")
    plus = "+" in modes
    if "r" in modes:
        flags, rd, wr = (os.O_RDWR if plus else os.O_RDONLY), True, plus
    elif "w" in modes:
        flags, rd, wr = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_TRUNC, plus, True
    elif "x" in modes:
        flags, rd, wr = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_EXCL, plus, True
    else:
        flags, rd, wr = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_APPEND, plus, True
    return flags, rd, wr, "a" in modes, "b" in modes


def _open_sync(path: Any, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
    try:
        if not flags & (os.O_WRONLY | os.O_RDWR) and _stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _PoolOpen:
    """The pool job of an open.  The pool cannot stop it, so when the
    awaiting task is cancelled the fd it opens (or has opened) is closed
    here instead of leaking: whichever of the job and the canceller comes
    second, under the lock, closes it."""

    __slots__ = ("path", "flags", "lock", "fd", "abandoned")

    def __init__(self, path: Any, flags: int) -> None:
        self.path = path
        self.flags = flags
        self.lock = threading.Lock()
        self.fd = -1
        self.abandoned = False

    def __call__(self) -> int:
        fd = _open_sync(self.path, self.flags)
        with self.lock:
            if self.abandoned:
                os.close(fd)
                return -1
            self.fd = fd
        return fd

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


async def _open_fd(path: Any, flags: int, native: bool) -> int:
    if not native:
        job = _PoolOpen(path, flags)
        try:
            return await spawn_blocking(job)
        except BaseException as e:
            if not isinstance(e, OSError):
                job.abandon()
            raise
    fd = await _ops.op_openat(path, flags, 0o666)
    if not flags & (os.O_WRONLY | os.O_RDWR):
        # open() refuses a directory (the kernel lets O_RDONLY open one).
        try:
            st = await _ops.op_statx("", fd=fd)
        except BaseException:
            os.close(fd)
            raise
        if _stat.S_ISDIR(st[0]):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), _ops.fspath(path))
    return fd


async def open(file: Any, mode: str = "r", buffering: int = -1, encoding: Optional[str] = None,
               errors: Optional[str] = None, newline: Optional[str] = None) -> "File":
    """Open a file like the builtin ``open()``: ``"rb"``, ``"w"``, ``"a+"``...
    Binary modes give a ``File`` (bytes), text modes a ``TextFile`` (str,
    with ``encoding``, ``errors`` and ``newline`` as for ``open()``).
    ``file`` is a path (str, bytes, os.PathLike) or an int fd, which the
    File then owns.  ``buffering``: 0 unbuffered (binary only), 1 line
    buffered (text only), > 1 the buffer size, -1 the default (64 KiB)."""
    flags, readable, writable, append, binary = _parse_mode(mode)
    if not isinstance(buffering, int):
        raise TypeError(f"buffering must be an int, not {type(buffering).__name__}")
    if binary:
        if encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        if errors is not None:
            raise ValueError("binary mode doesn't take an errors argument")
        if newline is not None:
            raise ValueError("binary mode doesn't take a newline argument")
        if buffering == 1:
            warnings.warn("line buffering (buffering=1) isn't supported in binary mode, the "
                          "default buffer size will be used", RuntimeWarning, stacklevel=2)
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    if newline not in (None, "", "\n", "\r", "\r\n"):
        raise ValueError(f"illegal newline value: {newline!r}")
    line_buffering = not binary and buffering == 1
    bufsize = DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
    if bufsize < 0:
        raise ValueError("invalid buffering size")
    if not binary:
        encoding = _text_encoding(encoding)
        codecs.lookup(encoding)  # LookupError before anything is opened
        if errors is not None and not isinstance(errors, str):
            raise TypeError("errors must be a str")
    native = fs_native()
    if isinstance(file, int) and not isinstance(file, bool):
        fd, name = file, file
    else:
        _ops.check_path(file)
        name = file
        try:
            fd = await _open_fd(file, flags, native)
        except OSError as e:
            raise path_error(e, file) from None
    if binary:
        return File(fd, name, mode, readable, writable, append, bufsize, native)
    return TextFile(fd, name, mode, readable, writable, append, bufsize, native,
                    encoding, errors or "strict", newline, line_buffering)


def _text_encoding(encoding: Optional[str]) -> str:
    if encoding is None or encoding == "locale":
        import locale
        return locale.getpreferredencoding(False)
    if not isinstance(encoding, str):
        raise TypeError("encoding must be a str")
    return encoding


class File:
    """An open file (binary).  Made by ``await zokio.fs.open(path, "rb")``.

    Methods that move the position take the File for their duration: one
    task at a time (``BusyResourceError`` otherwise); ``read_at`` and
    ``write_at`` may run from many tasks at once.  ``async with`` closes it.
    """

    __slots__ = ("_fd", "_fdbox", "name", "mode", "_readable", "_writable", "_append",
                 "_bufsize", "_native", "_tok", "_inflight", "_closed", "_rbuf", "_rpos",
                 "_wbuf", "_fpos", "_seekable", "__weakref__")

    def __init__(self, fd: int, name: Any, mode: str, readable: bool, writable: bool,
                 append: bool, bufsize: int, native: bool) -> None:
        self._fd = fd
        self._fdbox = [fd]
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._append = append
        self._bufsize = bufsize
        self._native = native
        self._tok = [None]
        self._inflight: list = []
        self._closed = False
        self._rbuf = b""   # read ahead: bytes past the position, from _rpos on
        self._rpos = 0
        self._wbuf: Optional[bytearray] = None  # written, not yet handed to the kernel
        try:
            self._fpos = os.lseek(fd, 0, os.SEEK_CUR)
            self._seekable = True
        except OSError:
            self._fpos = -1
            self._seekable = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<zokio.fs.{type(self).__name__} name={self.name!r} mode={self.mode!r} {state}>"

    # -- state ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The fd.  The File owns it: do not close it."""
        if self._closed:
            raise _closed_error()
        return self._fd

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    @property
    def native(self) -> bool:
        """True when this File's ops run on io_uring, False when they run on
        the blocking pool."""
        return self._native

    # -- the busy token and the in-flight count --------------------------------
    def _take(self) -> list:
        t = self._tok
        try:
            t.pop()
        except IndexError:
            raise BusyResourceError(
                "another task is using this file (read/write/seek take it one task at a "
                "time; read_at/write_at may run concurrently)") from None
        if self._closed:
            t.append(None)
            raise _closed_error()
        return t

    def _enter(self) -> int:
        self._inflight.append(None)
        if self._closed:
            self._leave()
            raise _closed_error()
        return self._fd

    def _leave(self) -> None:
        self._inflight.pop()
        if self._closed and not self._inflight:
            self._finish_close()

    def _finish_close(self) -> None:
        try:
            fd = self._fdbox.pop()
        except IndexError:
            return
        os.close(fd)

    def _pool_job(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            self._leave()

    async def _io(self, native_op: Any, pool_fn: Any, arg: Any, off: int) -> Any:
        """One read or write of the fd (native op or pool job), counted in
        _inflight for its whole life."""
        fd = self._enter()
        if self._native:
            try:
                return await native_op(fd, arg, off)
            finally:
                self._leave()
        try:
            aw = spawn_blocking(self._pool_job, pool_fn, fd, arg, off)
        except BaseException:
            self._leave()
            raise
        return await aw

    def _error(self, e: OSError) -> OSError:
        return path_error(e, self.name) if isinstance(self.name, (str, bytes, os.PathLike)) else e

    # -- raw reads and writes -------------------------------------------------
    # off None: at the position (the caller holds the token), which the call
    # moves; else at that offset, position untouched.
    async def _raw_read(self, n: int, off: Optional[int] = None) -> bytes:
        at = self._fpos if off is None else off
        try:
            data = await self._io(op_read, _pread, n, at)
        except OSError as e:
            raise self._error(e) from None
        if off is None and at >= 0:
            self._fpos = at + len(data)
        return data

    async def _raw_readinto(self, buf: Any, off: Optional[int] = None) -> int:
        at = self._fpos if off is None else off
        try:
            k = await self._io(op_read_into, _preadinto, buf, at)
        except OSError as e:
            raise self._error(e) from None
        if off is None and at >= 0:
            self._fpos = at + k
        return k

    async def _raw_write_all(self, data: Any, off: Optional[int] = None) -> None:
        at = (-1 if self._append else self._fpos) if off is None else off
        # Not released with a `with`: a pool job of a cancelled call may still
        # hold the view (its syscall runs on); it is freed when that ends.
        b = memoryview(data).cast("B")
        n = len(b)
        done = 0
        try:
            while done < n:
                k = await self._io(op_write, _pwrite, b[done:] if done else b,
                                   at + done if at >= 0 else -1)
                if k <= 0:
                    raise OSError(errno.EIO, "write made no progress")
                done += k
                if off is None and at >= 0:
                    self._fpos = at + done
        except OSError as e:
            raise self._error(e) from None
        finally:
            if off is None and at < 0 and self._seekable:
                self._fpos = os.lseek(self._fd, 0, os.SEEK_END)

    def _check_readable(self) -> None:
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")

    def _check_writable(self) -> None:
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")

    async def _flush_locked(self) -> None:
        w = self._wbuf
        if w:
            self._wbuf = None
            try:
                await self._raw_write_all(w)
            except OSError:
                # Keep what did not go, for the next flush (a failed write
                # of a regular file moved nothing).  Not after a cancel: on
                # io_uring the op had ended (its bytes are counted), on the
                # pool the job still writes them.
                if self._wbuf is None:
                    self._wbuf = bytearray(w)
                raise

    def _drop_readahead(self) -> int:
        """Forget the read-ahead; returns how many unread bytes it held (the
        kernel position is that far past the logical one)."""
        unread = len(self._rbuf) - self._rpos
        self._rbuf = b""
        self._rpos = 0
        return unread

    async def _sync_position(self) -> None:
        """Before a write or seek: give the kernel back the read-ahead (the
        position moves back over the unread bytes) and write out the
        buffer."""
        unread = self._drop_readahead()
        if unread and self._seekable:
            self._fpos -= unread
        await self._flush_locked()

    # -- reading ---------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the position (fewer only at end of file),
        all of the rest for ``n < 0``; ``b""`` at end of file."""
        t = self._take()
        try:
            self._check_readable()
            if self._wbuf:
                await self._flush_locked()
            if n is None or n < 0:
                return await self._read_rest()
            return await self._read_n(n)
        finally:
            t.append(None)

    async def _read_n(self, n: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        have = len(buf) - pos
        if have >= n:
            self._rpos = pos + n
            return buf[pos:pos + n]
        parts = []
        if have:
            parts.append(buf[pos:])
            self._drop_readahead()
        want = n - have
        while want > 0:
            chunk = await self._raw_read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_rest(self) -> bytes:
        parts = []
        if len(self._rbuf) > self._rpos:
            parts.append(self._rbuf[self._rpos:])
        self._drop_readahead()
        size = max(self._bufsize, DEFAULT_BUFFER_SIZE)
        while True:
            chunk = await self._raw_read(size)
            if not chunk:
                break
            parts.append(chunk)
            size = min(size * 2, _MAX_CHUNK)
        return b"".join(parts)

    async def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (writable bytes-like) from the position, without a
        copy when nothing is read ahead; returns the byte count (short only
        at end of file)."""
        t = self._take()
        try:
            self._check_readable()
            if self._wbuf:
                await self._flush_locked()
            # Not released with a `with`: a pool job of a cancelled call may still
            # hold the view (its syscall runs on); it is freed when that ends.
            b = memoryview(buffer).cast("B")
            n = len(b)
            got = 0
            have = len(self._rbuf) - self._rpos
            if have:
                k = min(have, n)
                b[:k] = self._rbuf[self._rpos:self._rpos + k]
                self._rpos += k
                got = k
            while got < n:
                k = await self._raw_readinto(b[got:] if got else b)
                if not k:
                    break
                got += k
            return got
        finally:
            t.append(None)

    async def _fill(self) -> bool:
        """Read one buffer's worth ahead; False at end of file."""
        chunk = await self._raw_read(self._bufsize or DEFAULT_BUFFER_SIZE)
        if not chunk:
            return False
        rest = len(self._rbuf) - self._rpos
        self._rbuf = (self._rbuf[self._rpos:] + chunk) if rest else chunk
        self._rpos = 0
        return True

    async def readline(self, size: int = -1) -> bytes:
        """One line, with its ``b"\\n"``; the last one may lack it; ``b""``
        at end of file.  ``size >= 0`` bounds the bytes returned."""
        t = self._take()
        try:
            self._check_readable()
            if self._wbuf:
                await self._flush_locked()
            start = 0
            while True:
                buf, pos = self._rbuf, self._rpos
                i = buf.find(b"\n", pos + start)
                if i >= 0 or (0 <= size <= len(buf) - pos):
                    end = i + 1 if i >= 0 else len(buf)
                    if 0 <= size < end - pos:
                        end = pos + size
                    self._rpos = end
                    return buf[pos:end]
                start = len(buf) - pos
                if not await self._fill():
                    out = buf[pos:]
                    self._drop_readahead()
                    return out
        finally:
            t.append(None)

    async def readlines(self) -> list:
        out = []
        async for line in self:
            out.append(line)
        return out

    def __aiter__(self) -> "File":
        return self

    async def __anext__(self) -> Any:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def read_at(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (``pread``): fewer only at end of
        file.  The position is not used nor moved; several tasks may call
        this at once.  Bytes still in this File's write buffer are not seen
        (``flush`` first)."""
        if n < 0 or offset < 0:
            raise ValueError("read_at: n and offset must be >= 0")
        self._check_readable()
        data = await self._raw_read(n, offset)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            chunk = await self._raw_read(n - got, offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def readinto_at(self, buffer: Any, offset: int) -> int:
        """Fill ``buffer`` from ``offset`` (``pread`` into it, no copy);
        returns the byte count, short only at end of file."""
        if offset < 0:
            raise ValueError("readinto_at: offset must be >= 0")
        self._check_readable()
        # Not released with a `with`: a pool job of a cancelled call may still
        # hold the view (its syscall runs on); it is freed when that ends.
        b = memoryview(buffer).cast("B")
        n = len(b)
        got = 0
        while got < n:
            k = await self._raw_readinto(b[got:] if got else b, offset + got)
            if not k:
                break
            got += k
        return got

    # -- writing ---------------------------------------------------------------
    async def write(self, data: Any) -> int:
        """Write ``data`` (bytes-like) at the position (at the end in append
        mode); returns its length.  Small writes gather in the buffer and
        reach the file when it fills, on ``flush``, ``seek``, a read, or
        ``close``."""
        t = self._take()
        try:
            self._check_writable()
            return await self._write_locked(data)
        finally:
            t.append(None)

    async def _write_locked(self, data: Any) -> int:
        if isinstance(data, str):
            raise TypeError("a bytes-like object is required, not 'str'")
        if self._rbuf:
            await self._sync_position()
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        w = self._wbuf
        if n >= self._bufsize:
            if w:
                await self._flush_locked()
            await self._raw_write_all(data)
            return n
        if w is None:
            self._wbuf = w = bytearray(data)
        else:
            w += data
        if len(w) >= self._bufsize:
            await self._flush_locked()
        return n

    async def write_at(self, data: Any, offset: int) -> int:
        """Write all of ``data`` at ``offset`` (``pwrite``), past the end too
        (the gap reads as zeros).  The position is not used nor moved;
        several tasks may call this at once.  (On Linux a file opened in
        append mode appends whatever the offset.)"""
        if offset < 0:
            raise ValueError("write_at: offset must be >= 0")
        self._check_writable()
        n = memoryview(data).nbytes
        await self._raw_write_all(data, offset)
        return n

    async def writelines(self, lines: Any) -> None:
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        """Hand the write buffer to the kernel (the page cache: ``fsync``
        makes it durable)."""
        t = self._take()
        try:
            await self._flush_locked()
        finally:
            t.append(None)

    async def _sync(self, datasync: bool) -> None:
        t = self._take()
        try:
            await self._flush_locked()
            try:
                fd = self._enter()
                if self._native:
                    try:
                        await _ops.op_fsync(fd, datasync)
                    finally:
                        self._leave()
                else:
                    try:
                        aw = spawn_blocking(self._pool_job,
                                            os.fdatasync if datasync else os.fsync, fd)
                    except BaseException:
                        self._leave()
                        raise
                    await aw
            except OSError as e:
                raise self._error(e) from None
        finally:
            t.append(None)

    async def fsync(self) -> None:
        """Flush, then ``fsync``: data and metadata reach the device."""
        await self._sync(False)

    async def datasync(self) -> None:
        """Flush, then ``fdatasync``: the data (and the size) reach the
        device."""
        await self._sync(True)

    async def truncate(self, size: Optional[int] = None) -> int:
        """Cut (or extend with zeros) the file to ``size`` bytes (default:
        the position); the position does not move.  Returns the size.  On
        the blocking pool (``ftruncate``)."""
        t = self._take()
        try:
            self._check_writable()
            await self._sync_position()
            if size is None:
                size = self._tell_locked()
            fd = self._enter()
            try:
                aw = spawn_blocking(self._pool_job, os.ftruncate, fd, size)
            except BaseException:
                self._leave()
                raise
            try:
                await aw
            except OSError as e:
                raise self._error(e) from None
            return size
        finally:
            t.append(None)

    # -- position --------------------------------------------------------------
    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (``os.SEEK_SET``, ``SEEK_CUR``, ``SEEK_END``);
        returns the new one.  Writes out the buffer first."""
        t = self._take()
        try:
            if whence == os.SEEK_CUR:
                offset += self._tell_locked()
                whence = os.SEEK_SET
            self._drop_readahead()
            await self._flush_locked()
            return self._lseek(offset, whence)
        finally:
            t.append(None)

    async def tell(self) -> int:
        """The position: where the next read or write goes."""
        t = self._take()
        try:
            return self._tell_locked()
        finally:
            t.append(None)

    def _lseek(self, offset: int, whence: int) -> int:
        """Set the kernel's position and ours (buffers already empty)."""
        try:
            pos = os.lseek(self._fd, offset, whence)
        except OSError as e:
            raise self._error(e) from None
        self._fpos = pos
        return pos

    def _tell_locked(self) -> int:
        if not self._seekable:
            raise self._error(OSError(errno.ESPIPE, os.strerror(errno.ESPIPE)))
        return self._fpos - (len(self._rbuf) - self._rpos) + (len(self._wbuf) if self._wbuf else 0)

    def seekable(self) -> bool:
        if self._closed:
            raise _closed_error()
        return self._seekable

    # -- metadata --------------------------------------------------------------
    async def stat(self) -> os.stat_result:
        """``os.fstat`` of the file (bytes in the write buffer are not
        counted in ``st_size`` until ``flush``)."""
        fd = self._enter()
        try:
            if self._native:
                try:
                    return stat_result(await _ops.op_statx("", fd=fd))
                finally:
                    self._leave()
            try:
                aw = spawn_blocking(self._pool_job, os.fstat, fd)
            except BaseException:
                self._leave()
                raise
            return await aw
        except OSError as e:
            raise self._error(e) from None

    # -- closing ---------------------------------------------------------------
    async def close(self) -> None:
        """Write out the buffer and close the file.  Idempotent.  A
        ``read_at``/``write_at`` still in flight in another task finishes
        first; the fd is closed when the last one ends."""
        if self._closed:
            return
        t = self._tok
        try:
            t.pop()
        except IndexError:
            raise BusyResourceError("another task is using this file; close it when that "
                                    "call has ended") from None
        try:
            await self._flush_locked()
        finally:
            self._closed = True
            self._wbuf = None
            self._drop_readahead()
            t.append(None)
            if not self._inflight:
                self._finish_close()

    async def __aenter__(self) -> "File":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __del__(self, _warn: Any = warnings.warn, _close: Any = os.close,
                _write: Any = os.write, _pwrite: Any = os.pwrite) -> None:
        box = getattr(self, "_fdbox", None)
        if not box or getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            _warn(f"unclosed file {self!r}", ResourceWarning, source=self)
        except Exception:
            pass
        try:
            w = self._wbuf
            if w:  # what open() files do too: the buffer is not lost
                mv = memoryview(w)
                done = 0
                at = -1 if self._append or not self._seekable else self._fpos
                while done < len(mv):
                    done += _write(box[0], mv[done:]) if at < 0 else _pwrite(
                        box[0], mv[done:], at + done)
        except Exception:
            pass
        if not getattr(self, "_inflight", None):
            try:
                _close(box.pop())
            except (IndexError, OSError):
                pass


class TextFile(File):
    """An open file in text mode: ``read`` and ``readline`` return str,
    ``write`` takes str, decoded and encoded with the File's ``encoding``,
    ``errors`` and ``newline`` as ``open()`` does.  ``read_at`` and
    ``write_at`` still move bytes.  ``tell()`` is refused while decoded text
    is waiting to be read (as ``open()`` does during iteration): it returns a
    byte offset, which ``seek`` accepts."""

    __slots__ = ("encoding", "errors", "newlines_mode", "_line_buffering", "_decoder",
                 "_encoder", "_text", "_tpos", "_eof", "_wnl")

    def __init__(self, fd: int, name: Any, mode: str, readable: bool, writable: bool,
                 append: bool, bufsize: int, native: bool, encoding: str, errors: str,
                 newline: Optional[str], line_buffering: bool) -> None:
        File.__init__(self, fd, name, mode, readable, writable, append, bufsize, native)
        self.encoding = encoding
        self.errors = errors
        self.newlines_mode = newline
        self._line_buffering = line_buffering
        self._decoder: Any = None
        self._encoder: Any = None
        self._text = ""
        self._tpos = 0
        self._eof = False
        # what "\n" becomes on write
        self._wnl = newline if newline in ("\r", "\r\n") else None

    def _new_decoder(self) -> Any:
        d = codecs.getincrementaldecoder(self.encoding)(self.errors)
        if self.newlines_mode is None or self.newlines_mode == "":
            d = io.IncrementalNewlineDecoder(d, translate=self.newlines_mode is None)
        return d

    def _reset_text(self) -> None:
        self._text = ""
        self._tpos = 0
        self._decoder = None
        self._eof = False

    async def _decode_more(self) -> bool:
        """Decode one more buffer's worth into _text; False at end of file."""
        if self._eof:
            return False
        if self._decoder is None:
            self._decoder = self._new_decoder()
        raw = await self._raw_read(self._bufsize or DEFAULT_BUFFER_SIZE)
        s = self._decoder.decode(raw, final=not raw)
        if not raw:
            self._eof = True
        rest = self._text[self._tpos:]
        self._text = rest + s if rest else s
        self._tpos = 0
        return bool(raw) or bool(s)

    async def read(self, n: int = -1) -> str:  # type: ignore[override]
        """Up to ``n`` characters (all the rest for ``n < 0``); ``""`` at end
        of file."""
        t = self._take()
        try:
            self._check_readable()
            if self._wbuf:
                await self._flush_locked()
            if n is None or n < 0:
                while await self._decode_more():
                    pass
                out = self._text[self._tpos:]
                self._text, self._tpos = "", 0
                return out
            while len(self._text) - self._tpos < n and await self._decode_more():
                pass
            out = self._text[self._tpos:self._tpos + n]
            self._tpos += len(out)
            return out
        finally:
            t.append(None)

    def _find_eol(self, text: str, pos: int, start: int) -> int:
        """The end (exclusive) of the line starting at pos, or -1 if the line
        may go on past the decoded text."""
        nl = self.newlines_mode
        if nl is None or nl == "\n":
            i = text.find("\n", start)
            return i + 1 if i >= 0 else -1
        if nl == "":
            i_n = text.find("\n", start)
            i_r = text.find("\r", start)
            if i_r >= 0 and (i_n < 0 or i_r < i_n):
                if i_r + 1 < len(text):
                    return i_r + 2 if text[i_r + 1] == "\n" else i_r + 1
                return i_r + 1 if self._eof else -1
            return i_n + 1 if i_n >= 0 else -1
        i = text.find(nl, start)
        return i + len(nl) if i >= 0 else -1

    async def readline(self, size: int = -1) -> str:  # type: ignore[override]
        """One line with its line ending (translated to ``"\\n"`` when
        ``newline`` is None); ``""`` at end of file."""
        t = self._take()
        try:
            self._check_readable()
            if self._wbuf:
                await self._flush_locked()
            start = self._tpos
            while True:
                text, pos = self._text, self._tpos
                end = self._find_eol(text, pos, start)
                if end < 0 and 0 <= size <= len(text) - pos:
                    end = pos + size
                if end >= 0:
                    if 0 <= size < end - pos:
                        end = pos + size
                    self._tpos = end
                    return text[pos:end]
                # Keep a possible "\r" of "\r\n" in view for the next search.
                start = max(0, len(text) - pos - 1)
                if not await self._decode_more():
                    out = self._text[self._tpos:]
                    self._text, self._tpos = "", 0
                    return out
                start += self._tpos
        finally:
            t.append(None)

    async def write(self, s: str) -> int:  # type: ignore[override]
        """Write the str ``s``; returns its length in characters."""
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        t = self._take()
        try:
            self._check_writable()
            if self._text or self._decoder is not None:
                self._give_back_text()
            if self._encoder is None:
                self._encoder = codecs.getincrementalencoder(self.encoding)(self.errors)
                if self._append or (self._seekable and self._tell_locked() != 0):
                    self._encoder.setstate(0)  # no BOM in the middle of a file
            data = s.replace("\n", self._wnl) if self._wnl and "\n" in s else s
            await self._write_locked(self._encoder.encode(data))
            if self._line_buffering and ("\n" in s or "\r" in s):
                await self._flush_locked()
            return len(s)
        finally:
            t.append(None)

    def _give_back_text(self) -> None:
        if self._tpos < len(self._text):
            raise io.UnsupportedOperation(
                "write after a partial read of decoded text: seek first")
        self._reset_text()

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:  # type: ignore[override]
        """``seek(cookie)`` with a value from ``tell()``, ``seek(0)``, or
        ``seek(0, os.SEEK_END)``; as ``open()``'s text files allow."""
        if whence == os.SEEK_CUR and offset != 0:
            raise io.UnsupportedOperation("can't do nonzero cur-relative seeks")
        if whence == os.SEEK_END and offset != 0:
            raise io.UnsupportedOperation("can't do nonzero end-relative seeks")
        if whence == os.SEEK_CUR:
            return await self.tell()
        t = self._take()
        try:
            self._reset_text()
            self._drop_readahead()
            await self._flush_locked()
            pos = self._lseek(offset, whence)
            if self._encoder is not None:
                self._encoder.reset()
                if pos != 0:
                    self._encoder.setstate(0)
            return pos
        finally:
            t.append(None)

    async def tell(self) -> int:  # type: ignore[override]
        t = self._take()
        try:
            if self._tpos < len(self._text):
                raise OSError("tell(): decoded text is waiting to be read (read to the end "
                              "of the line or file, or seek, first)")
            pos = self._tell_locked()
            if self._decoder is not None:
                pending, flag = self._decoder.getstate()
                pos -= len(pending)
                if isinstance(self._decoder, io.IncrementalNewlineDecoder) and flag & 1:
                    pos -= 1  # a "\r" held back until the next byte says if "\n" follows
            return pos
        finally:
            t.append(None)

    async def readinto(self, buffer: Any) -> int:
        raise io.UnsupportedOperation("readinto() of a text file")
