"""zokio.fs: files on the completion port.

``async with await zokio.fs.open(path, "rb") as f: data = await f.read()``;
``await zokio.fs.read_text(path)``.  On io_uring every file operation but
directory listing, ``truncate`` and ``copy`` is a native op the kernel runs
(OPENAT, READ, WRITE, STATX, FSYNC, CLOSE, RENAMEAT, UNLINKAT, MKDIRAT); on
the epoll backend, which cannot wait for a regular file, the same calls run
the syscall on the blocking pool.  See docs/api.md.
"""
from ._file import DEFAULT_BUFFER_SIZE, File, TextFile, open
from ._paths import (
    copy,
    exists,
    listdir,
    mkdir,
    read_bytes,
    read_text,
    remove,
    rename,
    rmdir,
    scandir,
    stat,
    write_bytes,
    write_text,
)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "File",
    "TextFile",
    "copy",
    "exists",
    "listdir",
    "mkdir",
    "open",
    "read_bytes",
    "read_text",
    "remove",
    "rename",
    "rmdir",
    "scandir",
    "stat",
    "write_bytes",
    "write_text",
]
