"""zokio.fs: files on the completion port (io_uring natively, the blocking
pool on epoll), on both backends and both interpreters.

Every test runs under ``no_fd_leak``: the fds open after it (runtimes shut
down) must be those open before it, and no zokio File may have been left for
its finalizer to close.
"""
from __future__ import annotations

import errno
import gc
import io
import os
import random
import stat
import threading
import time
import warnings

import pytest

import zokio
import zokio.fs as fs
from zokio.net import BusyResourceError

pytestmark = pytest.mark.timeout(60)


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak():
    """Autouse: set up first, torn down last (after make_runtime's
    shutdown)."""
    gc.collect()
    before = _fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        deadline = time.monotonic() + 5.0
        while True:
            extra = _fds() - before
            if not extra or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        gc.collect()
    unclosed = [str(w.message) for w in caught if "zokio.fs" in str(w.message)]
    assert not unclosed, f"Files left to their finalizer: {unclosed}"
    assert not extra, f"fds left open: {[(fd, _link(fd)) for fd in sorted(extra, key=int)]}"


def _link(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def run(make_runtime, coro_fn, threads=2):
    return make_runtime(threads).block_on(coro_fn())


# ---- where ops run -----------------------------------------------------------------

def test_native_on_io_uring_pool_on_epoll(make_runtime, util, tmp_path):
    want = util.expected_backend()

    async def main():
        async with await fs.open(tmp_path / "a", "wb") as f:
            return zokio._native.fs_native(), f.native, zokio.current_runtime().backend

    native, file_native, backend = run(make_runtime, main)
    assert native == file_native == (backend == "io_uring")
    if want is not None:
        assert backend == want


# ---- offsets -------------------------------------------------------------------------

def test_read_write_at_offsets(make_runtime, tmp_path):
    p = tmp_path / "f.bin"

    async def main():
        async with await fs.open(p, "w+b") as f:
            assert await f.write_at(b"hello", 10) == 5
            assert await f.write_at(bytearray(b"AB"), 0) == 2
            assert await f.write_at(memoryview(b"xyz"), 13) == 3
            whole = await f.read_at(100, 0)
            mid = await f.read_at(4, 9)
            # the position was not used nor moved
            assert await f.tell() == 0
            buf = bytearray(6)
            k = await f.readinto_at(buf, 10)
            return whole, mid, bytes(buf[:k])

    whole, mid, into = run(make_runtime, main)
    assert whole == b"AB" + b"\0" * 8 + b"helxyz"
    assert mid == b"\0hel"
    assert into == b"helxyz"
    assert p.read_bytes() == whole


def test_sparse_file_past_2_gib(make_runtime, tmp_path):
    """Offsets past 2 GiB and 4 GiB, in a sparse file (no real disk use)."""
    p = tmp_path / "sparse"
    offs = [2**31 - 3, 2**31 + 4096, 2**32 + 7, 5 * 2**30]

    async def main():
        async with await fs.open(p, "w+b") as f:
            for i, off in enumerate(offs):
                await f.write_at(f"<{i}>".encode(), off)
            got = [await f.read_at(3, off) for off in offs]
            # positional calls past 2 GiB: seek, write, read, tell
            assert await f.seek(3 * 2**30) == 3 * 2**30
            await f.write(b"positional")
            await f.flush()
            assert await f.tell() == 3 * 2**30 + 10
            await f.seek(3 * 2**30 + 3)
            tail = await f.read(4)
            across = await f.read_at(8, 2**31 - 5)
            st = await f.stat()
            beyond = await f.read_at(10, 6 * 2**30)
            return got, tail, across, st, beyond

    got, tail, across, st, beyond = run(make_runtime, main)
    assert got == [b"<0>", b"<1>", b"<2>", b"<3>"]
    assert tail == b"itio"
    assert across == b"\0\0<0>\0\0\0"
    assert st.st_size == 5 * 2**30 + 3 == os.stat(p).st_size
    assert st.st_blocks * 512 < 1 << 20  # sparse: nothing real was written in between
    assert beyond == b""


def test_short_reads_at_eof(make_runtime, tmp_path):
    p = tmp_path / "ten"
    p.write_bytes(b"0123456789")

    async def main():
        async with await fs.open(p, "rb") as f:
            a = await f.read(4)
            b = await f.read(100)      # short: the rest
            c = await f.read(5)        # at EOF
            d = await f.read_at(100, 7)
            e = await f.read_at(5, 10)
            g = await f.read_at(5, 1000)
            await f.seek(8)
            buf = bytearray(8)
            k = await f.readinto(buf)
            k2 = await f.readinto(buf)
            await f.seek(0)
            everything = await f.read()
            return a, b, c, d, e, g, bytes(buf[:k]), k2, everything

    assert run(make_runtime, main) == (b"0123", b"456789", b"", b"789", b"", b"", b"89", 0,
                                       b"0123456789")


def test_positional_reads_writes_seek_tell_truncate_append(make_runtime, tmp_path):
    p = tmp_path / "pos"

    async def main():
        async with await fs.open(p, "w+b") as f:
            for i in range(100):            # small writes gather in the buffer
                await f.write(b"%03d," % i)
            assert await f.tell() == 400
            await f.seek(0)
            first = await f.read(8)          # the read flushes, then reads
            assert await f.tell() == 8
            await f.write(b"XX")             # after read-ahead: at the logical position
            await f.seek(-4, os.SEEK_CUR)
            back = await f.read(6)
            assert await f.seek(0, os.SEEK_END) == 400
            assert await f.truncate(100) == 100
            assert await f.tell() == 400     # truncate does not move the position
            await f.fsync()
            await f.datasync()
            st = await f.stat()
        async with await fs.open(p, "ab") as f:
            await f.write(b"tail")
            await f.flush()                  # write_at does not see the buffer
            await f.write_at(b"??", 0)       # Linux: O_APPEND appends whatever the offset
        async with await fs.open(p, "r+b") as f:
            await f.seek(0)
            data = await f.read()
        return first, back, st.st_size, data

    first, back, size, data = run(make_runtime, main)
    assert first == b"000,001,"
    assert back == b"1,XX2,"
    assert size == 100
    assert data[:100].startswith(b"000,001,XX2,")
    assert data[100:] == b"tail??"


def test_modes_like_open(make_runtime, tmp_path):
    p = tmp_path / "m"

    async def main():
        out = []
        async with await fs.open(p, "x") as f:
            await f.write("one\n")
        with pytest.raises(FileExistsError) as ei:
            await fs.open(p, "x")
        out.append(str(p) in str(ei.value))
        async with await fs.open(p, "r") as f:
            with pytest.raises(io.UnsupportedOperation):
                await f.write("no")
        async with await fs.open(p, "w") as f:
            with pytest.raises(io.UnsupportedOperation):
                await f.read()
        for bad in ("rw", "rr", "q", "rbt", ""):
            with pytest.raises(ValueError):
                await fs.open(p, bad)
        with pytest.raises(ValueError):
            await fs.open(p, "rb", encoding="utf-8")
        with pytest.raises(ValueError):
            await fs.open(p, "r", buffering=0)
        with pytest.raises(LookupError):
            await fs.open(p, "r", encoding="no-such-codec")
        with pytest.raises(ValueError):
            await fs.open(p, "r", newline="x")
        f = await fs.open(p, "rb")
        await f.close()
        await f.close()  # idempotent
        with pytest.raises(ValueError):
            await f.read()
        with pytest.raises(ValueError):
            await f.read_at(1, 0)
        return out

    assert run(make_runtime, main) == [True]


# ---- errors ----------------------------------------------------------------------------

def _no_permission_path(tmp_path):
    """A path whose opening for writing fails with EACCES, also for root."""
    if os.geteuid() != 0:
        p = tmp_path / "locked"
        p.write_bytes(b"x")
        p.chmod(0)
        return p
    for cand in ("/sys/kernel/notes", "/sys/kernel/vmcoreinfo"):
        try:
            open(cand, "wb").close()
        except PermissionError:
            return cand
        except OSError:
            continue
    pytest.skip("no path refuses root here")


def test_errors_are_the_standard_subclasses_with_the_path(make_runtime, tmp_path):
    missing = tmp_path / "missing" / "file"
    locked = _no_permission_path(tmp_path)
    d = tmp_path / "dir"
    d.mkdir()
    f = tmp_path / "file"
    f.write_bytes(b"x")

    async def main():
        errs = {}

        async def expect(name, coro):
            try:
                await coro
            except OSError as e:
                errs[name] = e
            else:
                errs[name] = None

        await expect("open missing", fs.open(missing))
        await expect("read_bytes missing", fs.read_bytes(missing))
        await expect("read_text missing", fs.read_text(missing))
        await expect("stat missing", fs.stat(missing))
        await expect("remove missing", fs.remove(missing))
        await expect("open locked", fs.open(locked, "wb"))
        await expect("write_bytes locked", fs.write_bytes(locked, b"y"))
        await expect("open dir", fs.open(d))
        await expect("read_bytes dir", fs.read_bytes(d))
        await expect("remove dir", fs.remove(d))
        await expect("rmdir file", fs.rmdir(f))
        await expect("mkdir existing", fs.mkdir(d))
        await expect("rmdir not empty", fs.rmdir(tmp_path))
        await expect("rename missing", fs.rename(missing, tmp_path / "z"))
        await expect("listdir missing", fs.listdir(missing))
        await expect("copy missing", fs.copy(missing, tmp_path / "c"))
        assert await fs.exists(missing) is False
        assert await fs.exists(f) is True
        return errs

    errs = run(make_runtime, main)
    want = {
        "open missing": (FileNotFoundError, missing),
        "read_bytes missing": (FileNotFoundError, missing),
        "read_text missing": (FileNotFoundError, missing),
        "stat missing": (FileNotFoundError, missing),
        "remove missing": (FileNotFoundError, missing),
        "open locked": (PermissionError, locked),
        "write_bytes locked": (PermissionError, locked),
        "open dir": (IsADirectoryError, d),
        "read_bytes dir": (IsADirectoryError, d),
        "remove dir": (IsADirectoryError, d),
        "rmdir file": (NotADirectoryError, f),
        "mkdir existing": (FileExistsError, d),
        "rmdir not empty": (OSError, tmp_path),
        "rename missing": (FileNotFoundError, missing),
        "listdir missing": (FileNotFoundError, missing),
        "copy missing": (FileNotFoundError, missing),
    }
    for name, (cls, path) in want.items():
        e = errs[name]
        assert isinstance(e, cls), (name, e)
        assert str(path) in str(e), (name, str(e))
        assert e.filename == str(path), (name, e.filename)
    assert errs["rmdir not empty"].errno == errno.ENOTEMPTY
    # the same message open() gives
    try:
        open(missing)
    except FileNotFoundError as e:
        assert str(e) == str(errs["open missing"])


# ---- text ---------------------------------------------------------------------------------

TEXT = "alpha\nbeta\r\ngamma\rdelta\n\nésprit ünïcode ✓\r\n\rlast line without end"


@pytest.mark.parametrize("newline", [None, "", "\n", "\r", "\r\n"])
def test_text_mode_newlines_like_open(make_runtime, tmp_path, newline):
    """Reading and writing with every newline mode gives what open() gives,
    with a tiny buffer so that "\\r\\n" and multi-byte characters fall across
    reads."""
    raw = tmp_path / "raw"
    raw.write_bytes(TEXT.encode("utf-8"))
    ours = tmp_path / "ours"
    theirs = tmp_path / "theirs"
    with open(theirs, "w", encoding="utf-8", newline=newline) as f:
        f.write(TEXT)
    with open(raw, encoding="utf-8", newline=newline) as f:
        want_lines = f.readlines()
    with open(raw, encoding="utf-8", newline=newline) as f:
        want_text = f.read()

    async def main():
        async with await fs.open(raw, encoding="utf-8", newline=newline, buffering=3) as f:
            lines = [line async for line in f]
        async with await fs.open(raw, encoding="utf-8", newline=newline, buffering=5) as f:
            text = await f.read()
        async with await fs.open(raw, encoding="utf-8", newline=newline, buffering=2) as f:
            pieces = []
            while True:
                s = await f.read(3)
                if not s:
                    break
                pieces.append(s)
        async with await fs.open(ours, "w", encoding="utf-8", newline=newline, buffering=4) as f:
            for i in range(0, len(TEXT), 3):
                await f.write(TEXT[i:i + 3])
        whole = await fs.read_text(raw, encoding="utf-8", newline=newline)
        return lines, text, "".join(pieces), whole

    lines, text, pieced, whole = run(make_runtime, main)
    assert lines == want_lines
    assert text == want_text == pieced == whole
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1", "utf-8-sig", "shift_jis"])
def test_text_encodings_round_trip(make_runtime, tmp_path, encoding):
    text = "héllo wörld\nsecond line\n" if encoding == "latin-1" else \
        "日本語のテキスト\nline two ✓\n" if encoding != "shift_jis" else "日本語のテキスト\n二行目\n"
    p = tmp_path / "t"

    async def main():
        async with await fs.open(p, "w", encoding=encoding) as f:
            await f.write(text[:5])
            await f.write(text[5:])
        async with await fs.open(p, encoding=encoding, buffering=3) as f:
            lines = [line async for line in f]
        await fs.write_text(tmp_path / "w", text, encoding=encoding)
        return lines, await fs.read_text(p, encoding=encoding)

    lines, whole = run(make_runtime, main)
    assert p.read_bytes() == text.encode(encoding) == (tmp_path / "w").read_bytes()
    assert whole == text
    assert lines == text.splitlines(keepends=True)
    with open(p, encoding=encoding) as f:
        assert f.read() == text


def test_text_errors_argument(make_runtime, tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"ok \xff\xfe end\n")

    async def main():
        with pytest.raises(UnicodeDecodeError):
            async with await fs.open(p, encoding="utf-8") as f:
                await f.read()
        async with await fs.open(p, encoding="utf-8", errors="replace") as f:
            a = await f.read()
        b = await fs.read_text(p, encoding="utf-8", errors="surrogateescape")
        return a, b

    a, b = run(make_runtime, main)
    assert a == "ok \ufffd\ufffd end\n"
    assert b.encode("utf-8", "surrogateescape") == p.read_bytes()


def test_text_tell_and_seek(make_runtime, tmp_path):
    p = tmp_path / "ts"
    p.write_text("first\nsecond\nthird\n", encoding="utf-8")

    async def main():
        async with await fs.open(p, encoding="utf-8") as f:
            a = await f.read()
            end = await f.tell()
            await f.seek(0)
            b = await f.readline()
            with pytest.raises(OSError):
                await f.tell()  # decoded text waits to be read
            await f.seek(6)
            c = await f.read()
            with pytest.raises(io.UnsupportedOperation):
                await f.seek(3, os.SEEK_CUR)
            return a, end, b, c

    assert run(make_runtime, main) == ("first\nsecond\nthird\n", 19, "first\n", "second\nthird\n")


# ---- lines ------------------------------------------------------------------------------------

def test_line_iteration(make_runtime, tmp_path):
    lines = [b"x" * n + b"\n" for n in (0, 1, 5, 100, 70000, 3)] + [b"no newline at the end"]
    p = tmp_path / "lines"
    p.write_bytes(b"".join(lines))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")

    async def main():
        async with await fs.open(p, "rb", buffering=64) as f:
            got = [line async for line in f]
        async with await fs.open(p, "rb") as f:
            first = await f.readline()
            limited = await f.readline(1)
            rest = await f.readlines()
        async with await fs.open(empty, "rb") as f:
            none = [line async for line in f]
        return got, first, limited, rest, none

    got, first, limited, rest, none = run(make_runtime, main)
    assert got == lines
    assert first == lines[0] and limited == b"x" and rest == [b"\n"] + lines[2:]
    assert none == []


# ---- whole files and directories -----------------------------------------------------------------

def test_whole_file_helpers(make_runtime, tmp_path):
    big = os.urandom(3 << 20)

    async def main():
        assert await fs.write_bytes(tmp_path / "b", big) == len(big)
        assert await fs.write_bytes(tmp_path / "e", b"") == 0
        assert await fs.write_text(tmp_path / "t", "línea\n" * 3, encoding="utf-8") == 18
        proc = await fs.read_bytes("/proc/self/status")   # st_size 0, yet has content
        return (await fs.read_bytes(tmp_path / "b"), await fs.read_bytes(tmp_path / "e"),
                await fs.read_text(tmp_path / "t", encoding="utf-8"), proc)

    b, e, t, proc = run(make_runtime, main)
    assert b == big and e == b"" and t == "línea\n" * 3
    assert (tmp_path / "t").read_bytes() == "línea\n".encode() * 3
    assert b"Pid:" in proc


def test_directory_ops(make_runtime, tmp_path):
    async def main():
        deep = tmp_path / "a" / "b" / "c"
        with pytest.raises(FileNotFoundError):
            await fs.mkdir(deep)
        await fs.mkdir(deep, parents=True)
        await fs.mkdir(deep, parents=True, exist_ok=True)
        await fs.mkdir(str(tmp_path / "a" / "m"), mode=0o700)
        await fs.write_bytes(deep / "f1", b"1")
        await fs.write_bytes(deep / "f2", b"22")
        names = sorted(await fs.listdir(deep))
        entries = sorted((e.name, e.is_file(), e.is_dir()) for e in await fs.scandir(tmp_path / "a"))
        st = await fs.stat(deep / "f2")
        mode = (await fs.stat(tmp_path / "a" / "m")).st_mode
        await fs.rename(deep / "f1", deep / "f2")          # replaces
        after = sorted(await fs.listdir(deep))
        moved = await fs.read_bytes(deep / "f2")
        await fs.remove(deep / "f2")
        await fs.rmdir(deep)
        gone = await fs.exists(deep)
        with open(tmp_path / "x", "w"):
            pass
        os.symlink(tmp_path / "x", tmp_path / "ln")
        st_link = await fs.stat(tmp_path / "ln", follow_symlinks=False)
        return names, entries, st, mode, after, moved, gone, st_link

    names, entries, st, mode, after, moved, gone, st_link = run(make_runtime, main)
    assert names == ["f1", "f2"]
    assert entries == [("b", False, True), ("m", False, True)]
    assert st.st_size == 2 and stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(mode) == 0o700 & ~_umask()
    assert after == ["f2"] and moved == b"1" and gone is False
    assert stat.S_ISLNK(st_link.st_mode)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_stat_matches_os_stat(make_runtime, tmp_path):
    p = tmp_path / "s"
    p.write_bytes(b"abc")

    async def main():
        async with await fs.open(p, "rb") as f:
            return await fs.stat(p), await f.stat(), await fs.stat(f.fileno())

    a, b, c = run(make_runtime, main)
    ref = os.stat(p)
    for st in (a, b, c):
        assert st == ref
        assert st.st_mtime_ns == ref.st_mtime_ns and st.st_mtime == ref.st_mtime
        assert st.st_blksize == ref.st_blksize and st.st_blocks == ref.st_blocks


def test_copy(make_runtime, tmp_path):
    data = os.urandom((5 << 20) + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    src.chmod(0o640)
    (tmp_path / "into").mkdir()

    async def main():
        a = await fs.copy(src, tmp_path / "dst")
        b = await fs.copy(str(src), str(tmp_path / "into"))
        await fs.write_bytes(tmp_path / "small", b"tiny")
        c = await fs.copy(tmp_path / "small", tmp_path / "dst")   # overwrites, truncates
        return a, b, c

    a, b, c = run(make_runtime, main)
    assert os.fspath(a) == str(tmp_path / "dst")
    assert b == str(tmp_path / "into" / "src")
    assert (tmp_path / "into" / "src").read_bytes() == data
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o640
    assert (tmp_path / "dst").read_bytes() == b"tiny"


# ---- concurrency and cancellation ---------------------------------------------------------------

def test_eight_workers_read_one_file_with_read_at(make_runtime, tmp_path):
    size = 4 << 20
    data = os.urandom(size)
    p = tmp_path / "shared"
    p.write_bytes(data)

    async def main():
        f = await fs.open(p, "rb")
        threads_seen = set()

        async def reader(seed):
            rnd = random.Random(seed)
            for _ in range(60):
                off = rnd.randrange(size)
                n = rnd.choice((1, 100, 4096, 65536))
                got = await f.read_at(n, off)
                threads_seen.add(threading.get_ident())
                assert got == data[off:off + n]
                if rnd.random() < 0.1:
                    await zokio.yield_now()

        hs = [zokio.spawn(reader(i)) for i in range(64)]
        for h in hs:
            await h
        await f.close()
        return len(threads_seen)

    assert run(make_runtime, main, threads=8) >= 2


def test_two_tasks_on_the_position_get_busy_error(make_runtime, tmp_path):
    p = tmp_path / "busy"
    p.write_bytes(os.urandom(8 << 20))

    async def main():
        async with await fs.open(p, "rb", buffering=0) as f:
            async def big():
                return await f.read(8 << 20)

            h = zokio.spawn(big())
            errors = 0
            await zokio.yield_now()  # one worker: big takes the File first
            while not h.done():
                try:
                    await f.read(1)
                except BusyResourceError:
                    errors += 1
                await zokio.yield_now()
            got = await h
            return errors, len(got)

    errors, n = run(make_runtime, main, threads=1)
    assert n == 8 << 20  # the refused reads took nothing from the big one
    assert errors >= 1


def test_cancel_reads_mid_flight(make_runtime, tmp_path):
    """Cancel many reads at random moments (the buffer stays pinned until the
    op's completion), with garbage collections running on a plain thread;
    nothing crashes, and every read that completes has the right bytes."""
    size = 16 << 20
    data = os.urandom(size)
    p = tmp_path / "cancel"
    p.write_bytes(data)
    stop = threading.Event()

    def gc_storm():
        while not stop.is_set():
            gc.collect()
            time.sleep(0.001)

    async def main():
        f = await fs.open(p, "rb")
        rnd = random.Random(7)

        async def reader(off, n, into):
            if into:
                buf = bytearray(n)
                k = await f.readinto_at(buf, off)
                assert bytes(buf[:k]) == data[off:off + k]
                return k
            got = await f.read_at(n, off)
            assert got == data[off:off + n]
            return len(got)

        cancelled = completed = 0
        for _ in range(40):
            hs = []
            for _ in range(16):
                off = rnd.randrange(size - (1 << 20))
                hs.append(zokio.spawn(reader(off, rnd.choice((4096, 1 << 20)), rnd.random() < 0.5)))
            if rnd.random() < 0.5:
                await zokio.yield_now()
            for h in hs[::2]:
                h.cancel()
            for h in hs:
                try:
                    await h
                    completed += 1
                except zokio.Cancelled:
                    cancelled += 1
        # the File is intact: a positional read after all that
        async with await fs.open(p, "rb") as g:
            await g.seek(12345)
            assert await g.read(100000) == data[12345:112345]
        # close with reads still in flight: the fd closes when the last ends
        hs = [zokio.spawn(reader(rnd.randrange(size - 4096), 4096, False)) for _ in range(8)]
        await f.close()
        for h in hs:
            try:
                await h
            except (ValueError, zokio.Cancelled):
                pass
        return cancelled, completed

    t = threading.Thread(target=gc_storm)
    t.start()
    try:
        cancelled, completed = run(make_runtime, main)
    finally:
        stop.set()
        t.join()
    assert cancelled + completed == 40 * 16
    assert completed >= 40 * 8


def test_cancelled_positional_read_leaves_the_file_usable(make_runtime, tmp_path):
    p = tmp_path / "pos-cancel"
    data = os.urandom(4 << 20)
    p.write_bytes(data)

    async def main():
        async with await fs.open(p, "rb", buffering=0) as f:
            for i in range(30):
                h = zokio.spawn(f.read(1 << 20))
                if i % 2:
                    await zokio.yield_now()
                h.cancel()
                try:
                    got = await h
                except zokio.Cancelled:
                    got = None
                pos = await f.tell()
                if got is not None:
                    assert got == data[pos - len(got):pos]
                await f.seek(0)
            return await f.read(10)

    assert run(make_runtime, main) == data[:10]


def test_files_from_tasks_spawned_by_plain_threads(make_runtime, tmp_path):
    rt = make_runtime(4)
    out = {}

    async def job(i):
        p = tmp_path / f"t{i}"
        await fs.write_text(p, f"thread {i}\n" * 100, encoding="ascii")
        async with await fs.open(p, encoding="ascii") as f:
            return len([line async for line in f])

    def thread_main(i):
        out[i] = rt.block_on(job(i))

    ts = [threading.Thread(target=thread_main, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == {i: 100 for i in range(8)}


def test_unclosed_file_is_closed_by_its_finalizer_with_a_warning(make_runtime, tmp_path):
    p = tmp_path / "leak"

    async def main():
        f = await fs.open(p, "wb")
        await f.write(b"buffered, not flushed")
        return f.fileno()

    # The File dies with main's frame, on a worker; the warning is the point
    # here, so it is recorded here and not by the fixture.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        fd = run(make_runtime, main)
        gc.collect()
    assert any("unclosed file <zokio.fs.File" in str(w.message) for w in caught)
    assert p.read_bytes() == b"buffered, not flushed"
    assert str(fd) not in _fds() or _link(fd) != str(p)


def test_cancelled_opens_leave_no_fd(make_runtime, tmp_path):
    """An open cancelled at any moment either hands its File to the caller
    or closes its fd (on the pool the job may finish after the cancel)."""
    paths = []
    for i in range(20):
        p = tmp_path / f"o{i}"
        p.write_bytes(b"x" * i)
        paths.append(p)

    async def main():
        rnd = random.Random(3)
        opened = cancelled = 0
        for _ in range(15):
            hs = [zokio.spawn(fs.open(p, rnd.choice(("rb", "r+b", "ab")))) for p in paths]
            if rnd.random() < 0.5:
                await zokio.yield_now()
            for h in hs:
                if rnd.random() < 0.5:
                    h.cancel()
            for h in hs:
                try:
                    f = await h
                except zokio.Cancelled:
                    cancelled += 1
                    continue
                opened += 1
                await f.close()
        return opened, cancelled

    opened, cancelled = run(make_runtime, main)
    assert opened + cancelled == 15 * 20 and cancelled > 0


def test_file_ops_never_reach_the_epoll_port(make_runtime, tmp_path):
    """On epoll no file op is submitted to the port (so no regular file is
    ever offered to epoll_ctl); on io_uring they are the port's ops."""
    p = tmp_path / "ports"

    async def main():
        before = zokio._native.port_stats()
        async with await fs.open(p, "w+b") as f:
            await f.write(b"abc" * 1000)
            await f.fsync()
            await f.seek(0)
            await f.read()
            await f.read_at(10, 5)
            await f.stat()
        await fs.read_bytes(p)
        await fs.stat(p)
        await fs.rename(p, tmp_path / "q")
        await fs.remove(tmp_path / "q")
        after = zokio._native.port_stats()
        return zokio.current_runtime().backend, before, after

    backend, before, after = run(make_runtime, main, threads=1)
    assert after["ctls"] == before["ctls"]
    if backend == "epoll":
        assert after["submitted"] == before["submitted"]
    else:
        assert after["submitted"] - before["submitted"] >= 12
