"""Where each file operation runs, and the errors it raises.

On io_uring (``_native.fs_native()``: the worker's port is io_uring and the
kernel has every file opcode) an operation is one native op on the worker's
port (``op_openat``, ``op_read``... rows in native/io/op.c): the kernel does
the work, usually inline in the submitting ``io_uring_enter`` when the data
is in the page cache, with no thread hop.  Elsewhere (the epoll backend,
which cannot wait for a regular file, or an older kernel) the same call runs
the plain syscall on the blocking pool (``zokio.spawn_blocking``).  Errors are
the standard ``OSError`` subclasses with the path in the message, as
``open()`` and ``os`` give them.
"""
from __future__ import annotations

import os
from typing import Any

from .. import _native
from .._api import spawn_blocking

fs_native = _native.fs_native
op_openat = _native.op_openat
op_statx = _native.op_statx
op_fsync = _native.op_fsync
op_renameat = _native.op_renameat
op_unlinkat = _native.op_unlinkat
op_mkdirat = _native.op_mkdirat
op_read = _native.op_read
op_read_into = _native.op_read_into
op_write = _native.op_write
op_close = _native.op_close

_N_FIELDS = os.stat_result.n_fields


def fspath(path: Any) -> Any:
    """What an error message shows for ``path``: its str/bytes form."""
    try:
        return os.fspath(path)
    except TypeError:
        return path


def path_error(e: OSError, path: Any, path2: Any = None) -> OSError:
    """``e`` as the OSError subclass of its errno, naming the path(s), like
    ``open()``: ``[Errno 2] No such file or directory: 'x'``."""
    if e.errno is None:
        return e
    if path2 is None:
        new = OSError(e.errno, e.strerror or os.strerror(e.errno), fspath(path))
    else:
        new = OSError(e.errno, e.strerror or os.strerror(e.errno), fspath(path), None,
                      fspath(path2))
    return new


def stat_result(t: tuple) -> os.stat_result:
    """An ``os.stat_result`` from op_statx's tuple, with the same float times
    CPython computes (sec + nsec * 1e-9)."""
    mode, ino, dev, nlink, uid, gid, size, a, m, c, blksize, blocks, rdev = t[:13]
    a_s, a_n = divmod(a, 1_000_000_000)
    m_s, m_n = divmod(m, 1_000_000_000)
    c_s, c_n = divmod(c, 1_000_000_000)
    fields = (mode, ino, dev, nlink, uid, gid, size, a_s, m_s, c_s,
              a_s + a_n * 1e-9, m_s + m_n * 1e-9, c_s + c_n * 1e-9, a, m, c,
              blksize, blocks, rdev)
    return os.stat_result(fields[:_N_FIELDS])


def check_path(path: Any) -> None:
    """TypeError for what is not a path (before any op is made)."""
    if not isinstance(path, (str, bytes)):
        os.fspath(path)


async def pool(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await spawn_blocking(fn, *args, **kwargs)
