"""Whole-file helpers and directory operations.

Each helper is one call: on io_uring a short chain of native ops on the
worker's port (``read_bytes``: OPENAT, STATX, READ, CLOSE); elsewhere one job
on the blocking pool that does the same with the plain syscalls.  Listing a
directory (``listdir``, ``scandir``) and ``copy`` always run on the pool:
io_uring has no getdents, and ``copy`` is a loop of ``copy_file_range``
(the kernel copies, or shares extents on filesystems that can) that is
cheapest as one job.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import stat as _stat
from typing import Any, Optional

from . import _ops
from ._ops import check_path, fs_native, path_error, pool, stat_result

__all__ = [
    "copy", "exists", "listdir", "mkdir", "read_bytes", "read_text", "remove",
    "rename", "rmdir", "scandir", "stat", "write_bytes", "write_text",
]

_CHUNK = 1 << 20


# ---- stat / exists ------------------------------------------------------------

async def stat(path: Any, *, follow_symlinks: bool = True) -> os.stat_result:
    """``os.stat(path)``: an ``os.stat_result``.  An int is an open fd."""
    if isinstance(path, int):
        try:
            if fs_native():
                return stat_result(await _ops.op_statx("", fd=path))
            return await pool(os.fstat, path)
        except OSError as e:
            raise path_error(e, path) from None
    check_path(path)
    try:
        if fs_native():
            return stat_result(await _ops.op_statx(path, follow_symlinks=follow_symlinks))
        return await pool(os.stat, path, follow_symlinks=follow_symlinks)
    except OSError as e:
        raise path_error(e, path) from None


async def exists(path: Any) -> bool:
    """``os.path.exists(path)``: False for a path that cannot be stat'ed."""
    try:
        await stat(path)
    except (OSError, ValueError):
        return False
    return True


# ---- whole files ----------------------------------------------------------------

def _read_bytes_sync(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def _read_all_native(fd: int, size: int) -> bytes:
    """Read fd from offset 0 to its end: one READ of size + 1 bytes when the
    size is right (a short read is the end), more when the file grew."""
    want = size + 1
    first = await _ops.op_read(fd, want, 0)
    if len(first) < want:
        return first
    parts = [first]
    off = len(first)
    while True:
        chunk = await _ops.op_read(fd, _CHUNK, off)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        off += len(chunk)


async def read_bytes(path: Any) -> bytes:
    """The whole file, as bytes."""
    check_path(path)
    if not fs_native():
        try:
            return await pool(_read_bytes_sync, path)
        except OSError as e:
            raise path_error(e, path) from None
    try:
        fd = await _ops.op_openat(path, os.O_RDONLY)
    except OSError as e:
        raise path_error(e, path) from None
    try:
        st = await _ops.op_statx("", fd=fd)
        if _stat.S_ISDIR(st[0]):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), _ops.fspath(path))
        return await _read_all_native(fd, st[6])
    except OSError as e:
        raise path_error(e, path) from None
    finally:
        await _close_fd(fd)


async def _close_fd(fd: int) -> None:
    """Close fd (CLOSE op); its errors are dropped as os.close's would be in
    a finally."""
    try:
        await _ops.op_close(fd)
    except OSError:
        pass


def _decode(data: bytes, encoding: Optional[str], errors: Optional[str],
            newline: Optional[str]) -> str:
    w = io.TextIOWrapper(io.BytesIO(data), encoding=_encoding(encoding), errors=errors,
                         newline=newline)
    try:
        return w.read()
    finally:
        w.detach()


def _encode(text: str, encoding: Optional[str], errors: Optional[str],
            newline: Optional[str]) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"data must be str, not {type(text).__name__}")
    b = io.BytesIO()
    w = io.TextIOWrapper(b, encoding=_encoding(encoding), errors=errors, newline=newline,
                         write_through=True)
    w.write(text)
    w.flush()
    out = b.getvalue()
    w.detach()
    return out


def _encoding(encoding: Optional[str]) -> str:
    if encoding is None:
        import locale
        return locale.getpreferredencoding(False)
    return encoding


async def read_text(path: Any, encoding: Optional[str] = None, errors: Optional[str] = None,
                    newline: Optional[str] = None) -> str:
    """The whole file, decoded as ``open(path, encoding=..., errors=...,
    newline=...).read()`` would."""
    return _decode(await read_bytes(path), encoding, errors, newline)


def _write_bytes_sync(path: Any, data: Any, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
    try:
        mv = memoryview(data)
        n = mv.nbytes
        done = 0
        while done < n:
            done += os.write(fd, mv[done:])
        return n
    finally:
        os.close(fd)


async def _write_all_native(fd: int, data: Any, offset: int) -> int:
    # Not released with a `with`: a pool job of a cancelled call may still
    # hold the view (its syscall runs on); it is freed when that ends.
    b = memoryview(data).cast("B")
    n = len(b)
    done = await _ops.op_write(fd, b, offset)
    while done < n:
        k = await _ops.op_write(fd, b[done:], offset + done if offset >= 0 else -1)
        if k <= 0:
            raise OSError(errno.EIO, "write made no progress")
        done += k
    return n


async def write_bytes(path: Any, data: Any) -> int:
    """Create or truncate the file and write ``data`` (any bytes-like
    object); returns the byte count."""
    check_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not fs_native():
        try:
            return await pool(_write_bytes_sync, path, data, flags)
        except OSError as e:
            raise path_error(e, path) from None
    try:
        fd = await _ops.op_openat(path, flags, 0o666)
    except OSError as e:
        raise path_error(e, path) from None
    try:
        return await _write_all_native(fd, data, 0)
    except OSError as e:
        raise path_error(e, path) from None
    finally:
        await _close_fd(fd)


async def write_text(path: Any, data: str, encoding: Optional[str] = None,
                     errors: Optional[str] = None, newline: Optional[str] = None) -> int:
    """Create or truncate the file and write ``data`` encoded as
    ``open(path, "w", encoding=..., errors=..., newline=...)`` would;
    returns the number of characters."""
    await write_bytes(path, _encode(data, encoding, errors, newline))
    return len(data)


# ---- directory entries ---------------------------------------------------------------

async def remove(path: Any) -> None:
    """``os.remove``: unlink a file (IsADirectoryError for a directory)."""
    check_path(path)
    try:
        if fs_native():
            await _ops.op_unlinkat(path)
        else:
            await pool(os.remove, path)
    except OSError as e:
        raise path_error(e, path) from None


async def rmdir(path: Any) -> None:
    """``os.rmdir``: remove an empty directory."""
    check_path(path)
    try:
        if fs_native():
            await _ops.op_unlinkat(path, True)
        else:
            await pool(os.rmdir, path)
    except OSError as e:
        raise path_error(e, path) from None


async def rename(src: Any, dst: Any) -> None:
    """``os.rename``: an existing file at ``dst`` is replaced."""
    check_path(src)
    check_path(dst)
    try:
        if fs_native():
            await _ops.op_renameat(src, dst)
        else:
            await pool(os.rename, src, dst)
    except OSError as e:
        raise path_error(e, src, dst) from None


async def _mkdir1(path: Any, mode: int) -> None:
    try:
        if fs_native():
            await _ops.op_mkdirat(path, mode)
        else:
            await pool(os.mkdir, path, mode)
    except OSError as e:
        raise path_error(e, path) from None


async def _is_dir(path: Any) -> bool:
    try:
        return _stat.S_ISDIR((await stat(path)).st_mode)
    except OSError:
        return False


async def mkdir(path: Any, mode: int = 0o777, *, parents: bool = False,
                exist_ok: bool = False) -> None:
    """Make a directory, like ``pathlib.Path.mkdir``: ``parents=True`` makes
    missing parents; ``exist_ok=True`` accepts an existing directory."""
    check_path(path)
    try:
        await _mkdir1(path, mode)
    except FileNotFoundError:
        p = os.fspath(path)
        parent = os.path.dirname(p.rstrip(b"/" if isinstance(p, bytes) else "/"))
        if not parents or not parent or parent == p:
            raise
        await mkdir(parent, parents=True, exist_ok=True)
        await mkdir(path, mode, parents=False, exist_ok=exist_ok)
    except OSError:
        if not exist_ok or not await _is_dir(path):
            raise


async def listdir(path: Any = ".") -> list:
    """``os.listdir`` on the blocking pool."""
    check_path(path)
    try:
        return await pool(os.listdir, path)
    except OSError as e:
        raise path_error(e, path) from None


def _scandir_sync(path: Any) -> list:
    with os.scandir(path) as it:
        return list(it)


async def scandir(path: Any = ".") -> list:
    """The entries of ``os.scandir(path)`` as a list of ``os.DirEntry``
    (read on the blocking pool; their cached ``is_dir()`` / ``is_file()``
    need no further system call)."""
    check_path(path)
    try:
        return await pool(_scandir_sync, path)
    except OSError as e:
        raise path_error(e, path) from None


# ---- copy ------------------------------------------------------------------------------

def _copy_fd(src: int, dst: int) -> int:
    """Copy src to dst from their starts: copy_file_range (in the kernel;
    reflinks where the filesystem shares extents), else sendfile, else
    read/write.  Returns the bytes copied."""
    total = 0
    use_cfr = hasattr(os, "copy_file_range")
    while True:
        if use_cfr:
            try:
                n = os.copy_file_range(src, dst, 1 << 30)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                               errno.EPERM) and total == 0:
                    use_cfr = False
                    continue
                raise
        else:
            data = os.read(src, _CHUNK)
            n = len(data)
            if n:
                mv = memoryview(data)
                done = 0
                while done < n:
                    done += os.write(dst, mv[done:])
        if n == 0:
            return total
        total += n


def _copy_sync(src: Any, dst: Any, follow_symlinks: bool) -> Any:
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(os.fspath(src)))
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise shutil.SameFileError(f"{src!r} and {dst!r} are the same file")
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        if _stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(src))
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            _copy_fd(sfd, dfd)
            os.fchmod(dfd, _stat.S_IMODE(st.st_mode))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return dst


async def copy(src: Any, dst: Any) -> Any:
    """Copy the file ``src`` to ``dst`` (a file path, or a directory to copy
    into) with its permission bits, like ``shutil.copy``; returns the path
    written.  The data moves inside the kernel (``copy_file_range``), on
    the blocking pool."""
    check_path(src)
    check_path(dst)
    try:
        return await pool(_copy_sync, src, dst, True)
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise path_error(e, src, dst) from None
