"""process: spawn + wait of /bin/true, 16 in flight.

16 tasks each spawn ``/bin/true`` and wait for it, ``K`` times; the figure is
processes/s over the 16 x K children of a round.  zokio:
``await (await zokio.process.spawn(["/bin/true"])).wait()`` with threads = 1
and 2 (the wait is a POLL op on the child's pidfd); asyncio and uvloop:
``await (await asyncio.create_subprocess_exec("/bin/true")).wait()``.  The
children inherit stdin/stdout/stderr (no pipes).  One untimed warm-up round
runs first in each process.

Cases are interleaved: every configuration runs once per round, in a fresh
process per configuration and round; a row's figure is the median over all
of its timed rounds.

Bar: zokio >= 1.5x asyncio.
Run alone: ``python bench/bench_process.py``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "process"
INFLIGHT = 16
PROGRAM = "/bin/true"

CONFIGS = [
    ("zokio", "zokio threads=2", {"threads": 2}),
    ("zokio", "zokio threads=1", {"threads": 1}),
    ("asyncio", "asyncio", {}),
    ("uvloop", "uvloop", {}),
]


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    outer = 2 if quick else 3
    inner = repeat or (2 if quick else 3)
    k = 10 if quick else 40
    out = []
    for _ in range(outer):
        for runtime, label, extra in CONFIGS:
            out.append(C.Case(WORKLOAD, runtime, label, {"k": k, "repeat": inner, **extra},
                              timeout=300))
    return out


def _zokio(p):
    zokio = C.require("zokio")
    import zokio.process as zp

    rt = zokio.Runtime(threads=p["threads"])

    async def one(kk):
        for _ in range(kk):
            child = await zp.spawn([PROGRAM])
            rc = await child.wait()
            if rc != 0:
                raise RuntimeError(f"{PROGRAM} exited {rc}")

    async def bench(kk):
        t0 = time.perf_counter()
        hs = [zokio.spawn(one(kk)) for _ in range(INFLIGHT)]
        for h in hs:
            await h
        return time.perf_counter() - t0

    with rt:
        rt.block_on(bench(max(1, p["k"] // 4)))
        times = [rt.block_on(bench(p["k"])) for _ in range(p["repeat"])]
        backend = rt.backend
    return times, {"backend": backend}


def _asyncio(p):
    import asyncio

    async def one(kk):
        for _ in range(kk):
            proc = await asyncio.create_subprocess_exec(PROGRAM)
            rc = await proc.wait()
            if rc != 0:
                raise RuntimeError(f"{PROGRAM} exited {rc}")

    async def bench(kk):
        t0 = time.perf_counter()
        await asyncio.gather(*(one(kk) for _ in range(INFLIGHT)))
        return time.perf_counter() - t0

    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(bench(max(1, p["k"] // 4)))
        times = [runner.run(bench(p["k"])) for _ in range(p["repeat"])]
    return times, {}


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio":
        times, extra = _zokio(p)
    elif rt in ("asyncio", "uvloop"):
        times, extra = _asyncio(p)
    else:
        raise ValueError(rt)
    rates = [INFLIGHT * p["k"] / t for t in times]
    return {"rate": C.median(rates), "rates": rates, "spread": C.spread(rates), **extra}


def _merge(results):
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r["label"], {"label": r["label"], "rates": [], "procs": [],
                                           "status": "ok"})
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


def report(results):
    rows = _merge(results)
    p = results[0]["params"] if results else {"k": 0, "repeat": 0}
    nproc = max((len(r["procs"]) for r in rows.values()), default=0)
    base = rows.get("asyncio", {}).get("rate")
    table_rows = []
    for _rt, label, _e in CONFIGS:
        row = rows.get(label)
        if row is None:
            continue
        if row.get("status") != "ok":
            table_rows.append([label, C.status_cell(row), "-", "-", C.bg_cell(row)])
            continue
        table_rows.append([label, C.fmt_num(row["rate"], "procs/s"), f"{row['spread'] * 100:.0f}%",
                           C.fmt_ratio(C.ratio(row["rate"], base)), C.bg_cell(row)])
    text = (f"### process: spawn + wait of {PROGRAM}, {INFLIGHT} in flight ({INFLIGHT} x {p['k']} "
            f"children per round; {nproc} interleaved processes per row x {p['repeat']} timed "
            f"rounds each, median of all rounds)\n\n"
            + C.table(["runtime", "processes/s", "spread", "vs asyncio", "bg load"], table_rows))

    def val(label):
        row = rows.get(label)
        return row.get("rate") if row and row.get("status") == "ok" else None

    z2, z1 = val("zokio threads=2"), val("zokio threads=1")
    best = max([x for x in (z2, z1) if x is not None], default=None)
    r = C.ratio(best, base)
    bars = [C.bar("process: spawn + wait /bin/true, 16 in flight",
                  f"asyncio {C.fmt_num(base, '/s')}, uvloop {C.fmt_num(val('uvloop'), '/s')}",
                  f"{C.fmt_num(best, '/s')} ({C.fmt_ratio(r)}; threads=1 {C.fmt_num(z1, '/s')}, "
                  f"threads=2 {C.fmt_num(z2, '/s')})", ">= 1.5x asyncio",
                  None if r is None else r >= 1.5)]
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
