"""cpu: 8 tasks of pure-Python CPU work; speedup of 2 worker threads over 1.

Each task runs ``work(n)``, a plain ``for`` loop summing ints with no await,
sized to take about 0.3 s on one thread (``n`` is calibrated once in a
separate interpreter and passed to every case, so all cases do the same work).

* zokio: spawn the 8 tasks on ``Runtime(threads=1)`` and on
  ``Runtime(threads=2)`` and join them; the two runtimes alternate within one
  process, round by round, so drift hits both alike.  Speedup = median time at
  1 thread / median time at 2 threads.
* threading (reference): the same 8 work items on 1 plain ``threading.Thread``
  and split 4 + 4 over 2 threads — what the interpreter and the machine
  allow.  It runs as its own case and, again, interleaved round by round
  inside the zokio case, so that zokio can be compared with what the machine
  gave at the same moments (these shared VMs do not always deliver 2 cores).
* asyncio: 8 tasks on one loop; 1.0x by construction, its time is reported.

Bar: zokio speedup >= 1.75x.  Run alone: ``python bench/bench_cpu.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "cpu"
NTASKS = 8


def work(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def calibrate(target: float) -> int:
    """Loop count that makes ``work`` take ``target`` seconds on this thread."""
    n = 200_000
    while True:
        t0 = time.perf_counter()
        work(n)
        dt = time.perf_counter() - t0
        if dt > 0.05:
            break
        n *= 2
    best = dt
    for _ in range(2):
        t0 = time.perf_counter()
        work(n)
        best = min(best, time.perf_counter() - t0)
    return int(n * target / best)


def _calibrate_in_child(target: float) -> int:
    python = os.environ.get("ZOKIO_BENCH_PYTHON") or sys.executable
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_cpu; print(bench_cpu.calibrate({target}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1])
    except Exception:
        return calibrate(target)


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    target = 0.1 if quick else 0.3
    n = _calibrate_in_child(target)
    rep = C.repeats(repeat, quick, full=5, fast=2)
    p = {"n": n, "repeat": rep, "target": target}
    return [
        C.Case(WORKLOAD, "zokio", "zokio", dict(p)),
        C.Case(WORKLOAD, "threading", "threading", dict(p)),
        C.Case(WORKLOAD, "asyncio", "asyncio", dict(p)),
    ]


def _zokio_round(zokio, threads: int, n: int) -> float:
    async def task():
        return work(n)

    async def bench():
        t0 = time.perf_counter()
        hs = [zokio.spawn(task()) for _ in range(NTASKS)]
        for h in hs:
            await h
        return time.perf_counter() - t0

    async def warm():
        await zokio.sleep(0)

    with zokio.Runtime(threads=threads) as rt:
        rt.block_on(warm())
        return rt.block_on(bench())


def _threading_round(threads: int, n: int) -> float:
    per = NTASKS // threads

    def body():
        for _ in range(per):
            work(n)

    ts = [threading.Thread(target=body) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def _asyncio_round(n: int) -> float:
    import asyncio

    async def task():
        return work(n)

    async def bench():
        t0 = time.perf_counter()
        ts = [asyncio.create_task(task()) for _ in range(NTASKS)]
        for t in ts:
            await t
        return time.perf_counter() - t0

    return asyncio.run(bench())


def run_case(p):
    n, rep = p["n"], p["repeat"]
    rt = p["runtime"]
    single = work(n // 10)  # warm the function
    t0 = time.perf_counter()
    work(n)
    single = time.perf_counter() - t0
    if rt == "asyncio":
        times = [_asyncio_round(n) for _ in range(rep)]
        return {"t1": C.median(times), "t1s": times, "single": single}
    if rt == "zokio":
        zokio = C.require("zokio")
        rnd = lambda t: _zokio_round(zokio, t, n)  # noqa: E731
    elif rt == "threading":
        rnd = lambda t: _threading_round(t, n)  # noqa: E731
    else:
        raise ValueError(rt)
    t1s, t2s, r1s, r2s = [], [], [], []
    for _ in range(rep):
        t1s.append(rnd(1))
        t2s.append(rnd(2))
        if rt == "zokio":
            # the threading reference, interleaved round by round in the same
            # process: what the machine allowed at the same moments
            r1s.append(_threading_round(1, n))
            r2s.append(_threading_round(2, n))
    t1, t2 = C.median(t1s), C.median(t2s)
    out = {"t1": t1, "t2": t2, "t1s": t1s, "t2s": t2s, "speedup": t1 / t2, "single": single}
    if r1s:
        out.update(ref_t1=C.median(r1s), ref_t2=C.median(r2s), ref_t1s=r1s, ref_t2s=r2s,
                   ref_speedup=C.median(r1s) / C.median(r2s))
    return out


def report(results):
    rows = []
    for r in results:
        cell = C.status_cell(r)
        if cell:
            rows.append([r["label"], cell, "-", "-", C.bg_cell(r)])
            continue
        rows.append([r["label"], f"{r['t1']:.2f} s",
                     f"{r['t2']:.2f} s" if "t2" in r else "-",
                     C.fmt_ratio(r.get("speedup", 1.0)), C.bg_cell(r)])
        if "ref_speedup" in r:
            rows.append(["threading, interleaved with zokio", f"{r['ref_t1']:.2f} s",
                         f"{r['ref_t2']:.2f} s", C.fmt_ratio(r["ref_speedup"]), C.bg_cell(r)])
    p = results[0]["params"] if results else {"repeat": 0, "n": 0}
    text = (f"### cpu: {NTASKS} tasks x pure-Python loop (n={p['n']:,}, ~{p.get('target', 0.3)} s each;"
            f" median of {p['repeat']} rounds)\n\n"
            + C.table(["runtime", "1 thread", "2 threads", "speedup", "bg load"], rows))
    z = C.value(results, "zokio", "speedup")
    th = C.value(results, "threading", "speedup")
    ref = C.value(results, "zokio", "ref_speedup")
    if z is not None and ref:
        text += (f"\n\nzokio's speedup is {z / ref:.0%} of what plain threads reached in the same"
                 f" process at the same moments ({C.fmt_ratio(z)} vs {C.fmt_ratio(ref)}). On these"
                 " shared virtual machines the second core is not always fully available (with other"
                 " work running, 2 plain threads have been seen as low as 1.0-1.4x): read the bar"
                 " against that reference and the bg load column.")
    bars = [C.bar("cpu: 8 CPU-bound tasks, threads=2 vs 1",
                  f"threading {C.fmt_ratio(th)} (interleaved with zokio: {C.fmt_ratio(ref)}), "
                  "asyncio 1.00x", C.fmt_ratio(z), ">= 1.75x",
                  None if z is None else z >= 1.75)]
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
