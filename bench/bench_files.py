"""files: reads and writes of regular files, zokio.fs against thread-pool peers.

Three measurements, each on a file tree under a temporary directory on the
local disk (``$ZOKIO_BENCH_TMP``, else ``/var/tmp``), made once by the parent
process and deleted when it exits:

* ``rand``: 4 KiB reads at random 4 KiB-aligned offsets of a 256 MiB file
  that is in the page cache (each case reads it once before timing), 64 in
  flight: 64 tasks each make ``K`` reads from a precomputed list of offsets.
  zokio: ``await f.read_at(4096, off)`` on one ``zokio.fs.File``;
  asyncio: ``await asyncio.to_thread(os.pread, fd, 4096, off)``; aiofiles
  (on asyncio's stock loop): one ``aiofiles.open`` handle per task (its file
  position is per handle), ``await f.seek(off); await f.read(4096)``.
  Figure: reads/s.
* ``seq``: the same file read from start to end in 1 MiB chunks by one task
  (zokio ``await f.read(1 << 20)``; asyncio ``to_thread(os.read, fd, 1 << 20)``;
  aiofiles ``await f.read(1 << 20)``).  Figure: MiB/s.
* ``small``: 16 tasks each create files: open (create/truncate), write
  4 KiB, fsync, close.  zokio: ``zokio.fs.open`` + ``write`` + ``fsync`` +
  ``close``; asyncio: one ``to_thread`` per file running the four calls;
  aiofiles: ``aiofiles.open`` + ``write`` + ``flush`` + ``close``, with
  ``asyncio.to_thread(os.fsync, f.fileno())`` before the close (aiofiles
  has no fsync).  Figure: files/s.  The disk's flush latency dominates; it
  is reported, not barred.

zokio runs on io_uring and on epoll (``backend=``), with threads = 1 and 2.
On epoll every file op goes to the blocking pool (epoll cannot wait for a
regular file), so the epoll rows show zokio's pool against asyncio's.

Cases are interleaved: the whole list of configurations runs once per
round, in a fresh process per configuration and round, and each process
times ``inner`` rounds; a row's figure is the median over all of its timed
rounds.

Bars: rand on io_uring (threads=2) >= 5x asyncio + to_thread; seq >=
asyncio + to_thread.
Run alone: ``python bench/bench_files.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "files"
INFLIGHT = 64
SMALL_INFLIGHT = 16
BLOCK = 4096
SEQ_CHUNK = 1 << 20
SMALL_SIZE = 4096

_made: list[str] = []


def _cleanup() -> None:
    for d in _made:
        shutil.rmtree(d, ignore_errors=True)


def _tree(size_mib: int) -> str:
    """The temporary directory with data.bin (size_mib MiB), made once."""
    if _made:
        return _made[0]
    base = os.environ.get("ZOKIO_BENCH_TMP") or ("/var/tmp" if os.path.isdir("/var/tmp") else None)
    d = tempfile.mkdtemp(prefix="zokio-bench-files-", dir=base)
    _made.append(d)
    atexit.register(_cleanup)
    block = os.urandom(1 << 20)
    with open(os.path.join(d, "data.bin"), "wb") as f:
        for _ in range(size_mib):
            f.write(block)
    return d


CONFIGS = [
    ("zokio", "zokio io_uring threads=2", {"backend": "io_uring", "threads": 2}),
    ("zokio", "zokio io_uring threads=1", {"backend": "io_uring", "threads": 1}),
    ("zokio", "zokio epoll threads=2", {"backend": "epoll", "threads": 2}),
    ("zokio", "zokio epoll threads=1", {"backend": "epoll", "threads": 1}),
    ("asyncio", "asyncio + to_thread", {}),
    ("aiofiles", "aiofiles (asyncio)", {}),
]
KINDS = ("rand", "seq", "small")


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    size_mib = 64 if quick else 256
    d = _tree(size_mib)
    outer = 2 if quick else 3
    inner = repeat or (2 if quick else 3)
    k = 100 if quick else 1000
    small_n = 20 if quick else 64
    out = []
    for _ in range(outer):
        for kind in KINDS:
            for runtime, label, extra in CONFIGS:
                p = {"kind": kind, "dir": d, "size_mib": size_mib, "k": k, "small_n": small_n,
                     "repeat": inner, **extra}
                out.append(C.Case(WORKLOAD, runtime, f"{kind}: {label}", p, timeout=300))
    return out


def _offsets(size_mib: int, k: int, seed: int) -> list[list[int]]:
    rnd = random.Random(seed)
    blocks = (size_mib << 20) // BLOCK
    return [[rnd.randrange(blocks) * BLOCK for _ in range(k)] for _ in range(INFLIGHT)]


def _warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


# ---- zokio ------------------------------------------------------------------

def _zokio(p):
    zokio = C.require("zokio")
    import zokio.fs as zfs

    rt = zokio.Runtime(threads=p["threads"], backend=p["backend"])
    path = os.path.join(p["dir"], "data.bin")
    kind = p["kind"]

    async def rand(offs):
        f = await zfs.open(path, "rb")

        async def reader(lst):
            read_at = f.read_at
            for off in lst:
                await read_at(BLOCK, off)

        t0 = time.perf_counter()
        hs = [zokio.spawn(reader(lst)) for lst in offs]
        for h in hs:
            await h
        dt = time.perf_counter() - t0
        await f.close()
        return dt

    async def seq():
        f = await zfs.open(path, "rb", buffering=0)
        t0 = time.perf_counter()
        total = 0
        while True:
            b = await f.read(SEQ_CHUNK)
            if not b:
                break
            total += len(b)
        dt = time.perf_counter() - t0
        await f.close()
        return dt, total

    async def small(rnd):
        sub = os.path.join(p["dir"], f"small-{os.getpid()}-{rnd}")
        os.mkdir(sub)
        data = os.urandom(SMALL_SIZE)

        async def writer(w):
            for i in range(p["small_n"]):
                f = await zfs.open(os.path.join(sub, f"{w}-{i}"), "wb")
                await f.write(data)
                await f.fsync()
                await f.close()

        t0 = time.perf_counter()
        hs = [zokio.spawn(writer(w)) for w in range(SMALL_INFLIGHT)]
        for h in hs:
            await h
        dt = time.perf_counter() - t0
        shutil.rmtree(sub)
        return dt

    out = []
    with rt:
        if kind != "small":
            _warm(path)
        for r in range(p["repeat"] + 1):  # round 0: warm-up
            if kind == "rand":
                dt = rt.block_on(rand(_offsets(p["size_mib"], p["k"], r)))
                out.append(INFLIGHT * p["k"] / dt)
            elif kind == "seq":
                dt, total = rt.block_on(seq())
                out.append(total / (1 << 20) / dt)
            else:
                dt = rt.block_on(small(r))
                out.append(SMALL_INFLIGHT * p["small_n"] / dt)
        backend = rt.backend
    return out[1:], {"backend": backend}


# ---- asyncio + to_thread, aiofiles --------------------------------------------

def _asyncio(p, use_aiofiles: bool):
    import asyncio

    aiofiles = C.require("aiofiles") if use_aiofiles else None
    path = os.path.join(p["dir"], "data.bin")
    kind = p["kind"]

    async def rand(offs):
        if aiofiles is None:
            fd = os.open(path, os.O_RDONLY)

            async def reader(lst):
                to_thread, pread = asyncio.to_thread, os.pread
                for off in lst:
                    await to_thread(pread, fd, BLOCK, off)
        else:
            handles = [await aiofiles.open(path, "rb") for _ in offs]

            async def reader(lst, f=None):
                for off in lst:
                    await f.seek(off)
                    await f.read(BLOCK)

        t0 = time.perf_counter()
        if aiofiles is None:
            await asyncio.gather(*(reader(lst) for lst in offs))
        else:
            await asyncio.gather(*(reader(lst, h) for lst, h in zip(offs, handles)))
        dt = time.perf_counter() - t0
        if aiofiles is None:
            os.close(fd)
        else:
            for h in handles:
                await h.close()
        return dt

    async def seq():
        total = 0
        if aiofiles is None:
            fd = os.open(path, os.O_RDONLY)
            t0 = time.perf_counter()
            while True:
                b = await asyncio.to_thread(os.read, fd, SEQ_CHUNK)
                if not b:
                    break
                total += len(b)
            dt = time.perf_counter() - t0
            os.close(fd)
        else:
            f = await aiofiles.open(path, "rb", buffering=0)
            t0 = time.perf_counter()
            while True:
                b = await f.read(SEQ_CHUNK)
                if not b:
                    break
                total += len(b)
            dt = time.perf_counter() - t0
            await f.close()
        return dt, total

    def write_one(fn, data):
        fd = os.open(fn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def small(rnd):
        sub = os.path.join(p["dir"], f"small-{os.getpid()}-{rnd}")
        os.mkdir(sub)
        data = os.urandom(SMALL_SIZE)

        async def writer(w):
            for i in range(p["small_n"]):
                fn = os.path.join(sub, f"{w}-{i}")
                if aiofiles is None:
                    await asyncio.to_thread(write_one, fn, data)
                else:
                    f = await aiofiles.open(fn, "wb")
                    await f.write(data)
                    await f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
                    await f.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(SMALL_INFLIGHT)))
        dt = time.perf_counter() - t0
        shutil.rmtree(sub)
        return dt

    out = []
    with asyncio.Runner() as runner:
        if kind != "small":
            _warm(path)
        for r in range(p["repeat"] + 1):
            if kind == "rand":
                dt = runner.run(rand(_offsets(p["size_mib"], p["k"], r)))
                out.append(INFLIGHT * p["k"] / dt)
            elif kind == "seq":
                dt, total = runner.run(seq())
                out.append(total / (1 << 20) / dt)
            else:
                dt = runner.run(small(r))
                out.append(SMALL_INFLIGHT * p["small_n"] / dt)
    return out[1:], {}


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio":
        rates, extra = _zokio(p)
    elif rt == "asyncio":
        rates, extra = _asyncio(p, False)
    elif rt == "aiofiles":
        rates, extra = _asyncio(p, True)
    else:
        raise ValueError(rt)
    return {"rate": C.median(rates), "rates": rates, "spread": C.spread(rates), **extra}


def _merge(results):
    """One row per label: the median over the timed rounds of every process."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r["label"], {"label": r["label"], "rates": [], "procs": [],
                                           "status": "ok", "params": r.get("params", {})})
        row["procs"].append(r)
        if r.get("status") == "ok":
            row["rates"].extend(r["rates"])
        else:
            row["status"] = r.get("status")
            row["error"] = r.get("error", "")
    for row in rows.values():
        if row["rates"]:
            row["status"] = "ok"
            row["rate"] = C.median(row["rates"])
            row["spread"] = C.spread(row["rates"])
    return rows


UNITS = {"rand": "reads/s", "seq": "MiB/s", "small": "files/s"}
TITLES = {
    "rand": f"4 KiB random reads, {INFLIGHT} in flight, page-cached file",
    "seq": "sequential 1 MiB reads, one task, page-cached file",
    "small": f"small files: create + write 4 KiB + fsync + close, {SMALL_INFLIGHT} in flight",
}


def report(results):
    rows = _merge(results)
    p = results[0]["params"] if results else {"repeat": 0, "size_mib": 0, "k": 0}
    nproc = max((len(row["procs"]) for row in rows.values()), default=0)
    parts = []
    for kind in KINDS:
        base = rows.get(f"{kind}: asyncio + to_thread", {}).get("rate")
        table_rows = []
        for _rt, label, _e in CONFIGS:
            row = rows.get(f"{kind}: {label}")
            if row is None:
                continue
            cell = C.status_cell(row) if row.get("status") != "ok" else None
            if cell:
                table_rows.append([label, cell, "-", "-", C.bg_cell(row)])
                continue
            table_rows.append([label, C.fmt_num(row["rate"], UNITS[kind]),
                               f"{row['spread'] * 100:.0f}%",
                               C.fmt_ratio(C.ratio(row["rate"], base)), C.bg_cell(row)])
        parts.append(f"#### {TITLES[kind]}\n\n" + C.table(
            ["runtime", UNITS[kind], "spread", "vs asyncio + to_thread", "bg load"], table_rows))
    text = (f"### files: zokio.fs against asyncio + to_thread and aiofiles ({p.get('size_mib')} MiB "
            f"file; {nproc} interleaved processes per row x {p.get('repeat')} timed rounds each, "
            f"median of all rounds; rand: {INFLIGHT} x {p.get('k')} reads per round)\n\n"
            + "\n\n".join(parts))

    def val(label):
        row = rows.get(label)
        return row.get("rate") if row and row.get("status") == "ok" else None

    bars = []
    base = val("rand: asyncio + to_thread")
    z = val("rand: zokio io_uring threads=2")
    z1 = val("rand: zokio io_uring threads=1")
    best = max([x for x in (z, z1) if x is not None], default=None)
    r = C.ratio(best, base)
    bars.append(C.bar("files: 4 KiB random reads, 64 in flight (io_uring)",
                      f"asyncio + to_thread {C.fmt_num(base, '/s')}, aiofiles "
                      f"{C.fmt_num(val('rand: aiofiles (asyncio)'), '/s')}",
                      f"{C.fmt_num(best, '/s')} ({C.fmt_ratio(r)}); epoll "
                      f"{C.fmt_num(val('rand: zokio epoll threads=2'), '/s')}",
                      ">= 5x asyncio + to_thread", None if r is None else r >= 5.0))
    base = val("seq: asyncio + to_thread")
    z = val("seq: zokio io_uring threads=2")
    z1 = val("seq: zokio io_uring threads=1")
    best = max([x for x in (z, z1) if x is not None], default=None)
    r = C.ratio(best, base)
    bars.append(C.bar("files: sequential 1 MiB reads", f"asyncio + to_thread {C.fmt_num(base, 'MiB/s')}",
                      f"{C.fmt_num(best, 'MiB/s')} ({C.fmt_ratio(r)})", ">= asyncio + to_thread",
                      None if r is None else r >= 1.0))
    base = val("small: asyncio + to_thread")
    z = val("small: zokio io_uring threads=2")
    bars.append(C.bar("files: small file write + fsync + close", f"asyncio + to_thread "
                      f"{C.fmt_num(base, '/s')}, aiofiles {C.fmt_num(val('small: aiofiles (asyncio)'), '/s')}",
                      f"{C.fmt_num(z, '/s')} ({C.fmt_ratio(C.ratio(z, base))})", "report", None))
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
