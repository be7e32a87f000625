"""spawn: spawn N tasks that each yield once, then join them all; tasks/s.

Each task is ``async def child(): await <yield>`` where the yield is
``zokio.yield_now()``, ``asyncio.sleep(0)`` (asyncio, uvloop) or
``trio.lowlevel.checkpoint()``.  The timed region starts before the first
spawn and ends after the last join, inside the runtime: creating the
coroutines, scheduling, one reschedule per task, completion and joining.
zokio/asyncio/uvloop join by awaiting each handle in spawn order; trio by
leaving the nursery.  One untimed warm-up round runs first in the same
runtime (the first touch of fresh pages is several times slower than reuse).

Bar: zokio threads=2 >= 10x asyncio, and threads=2 not slower than threads=1.

threads=2 vs threads=1 is also measured head to head ("interleaved" case):
one process holds a threads=1 and a threads=2 runtime, warms both, then
runs 5 rounds alternating between them; the ratio is median(threads=2) /
median(threads=1) over those 5 rounds.  Three such sets run, each in a fresh
process; the bar asks every set's ratio to be >= 1.0 (a second thread must
never cost throughput).  Interleaving in one process takes the slow drift of
these shared machines (and a core that runs slower for a while) out of the
comparison, which separate cases measured minutes apart cannot do.

Run alone: ``python bench/bench_spawn.py [--quick] [--only zokio,asyncio]``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "spawn"
ZOKIO_THREADS = (1, 2, 4, 8)
INTERLEAVED_SETS = 3


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    n = 20_000 if quick else 100_000
    rep = C.repeats(repeat, quick, full=7, fast=3)
    # a zokio round of 100k tasks takes ~50 ms: many rounds are cheap and
    # tame the noise of such short intervals
    zrep = C.repeats(repeat, quick, full=21, fast=5)
    out = [C.Case(WORKLOAD, "zokio", f"zokio threads={t}", {"threads": t, "n": n, "repeat": zrep},
                  timeout=150)
           for t in ZOKIO_THREADS]
    for k in range(INTERLEAVED_SETS):
        out.append(C.Case(WORKLOAD, "zokio", f"zokio interleaved set {k + 1}",
                          {"interleaved": True, "n": n, "repeat": 1 if quick else 5},
                          timeout=150))
    for rt in ("asyncio", "uvloop"):
        out.append(C.Case(WORKLOAD, rt, rt, {"n": n, "repeat": rep}))
    out.append(C.Case(WORKLOAD, "trio", "trio", {"n": n, "repeat": C.repeats(repeat, quick, 5, 3)}))
    return out


def _zokio(p):
    zokio, rt = C.zokio_runtime(p["threads"])
    n = p["n"]
    perf = time.perf_counter

    async def child():
        await zokio.yield_now()

    async def bench():
        t0 = perf()
        hs = [zokio.spawn(child()) for _ in range(n)]
        for h in hs:
            await h
        return perf() - t0

    with rt:
        rt.block_on(bench())  # warm-up
        times = [rt.block_on(bench()) for _ in range(p["repeat"])]
        try:
            metrics = rt.metrics()
        except Exception as exc:  # metrics are a nice-to-have here
            metrics = {"error": repr(exc)}
    return {"times": times, "metrics": metrics}


def _zokio_interleaved(p):
    import zokio
    n = p["n"]
    perf = time.perf_counter

    async def child():
        await zokio.yield_now()

    async def bench():
        t0 = perf()
        hs = [zokio.spawn(child()) for _ in range(n)]
        for h in hs:
            await h
        return perf() - t0

    rt1, rt2 = zokio.Runtime(threads=1), zokio.Runtime(threads=2)
    try:
        for rt in (rt1, rt2, rt1, rt2):
            rt.block_on(bench())  # warm-up: both runtimes, twice
        t1, t2 = [], []
        for _ in range(p["repeat"]):
            t1.append(rt1.block_on(bench()))
            t2.append(rt2.block_on(bench()))
    finally:
        rt1.shutdown()
        rt2.shutdown()
    r1 = [n / t for t in t1]
    r2 = [n / t for t in t2]
    return {"times": t2, "rates1": r1, "rates2": r2,
            "ratio": C.median(r2) / C.median(r1)}


def _asyncio(p):
    import asyncio

    n = p["n"]
    perf = time.perf_counter

    async def child():
        await asyncio.sleep(0)

    async def bench():
        t0 = perf()
        ts = [asyncio.create_task(child()) for _ in range(n)]
        for t in ts:
            await t
        return perf() - t0

    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(bench())
        times = [runner.run(bench()) for _ in range(p["repeat"])]
    return {"times": times}


def _trio(p):
    trio = C.require("trio")
    n = p["n"]
    perf = time.perf_counter

    async def child():
        await trio.lowlevel.checkpoint()

    async def bench():
        t0 = perf()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(child)
        return perf() - t0

    trio.run(bench)
    return {"times": [trio.run(bench) for _ in range(p["repeat"])]}


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio" and p.get("interleaved"):
        res = _zokio_interleaved(p)
    elif rt == "zokio":
        res = _zokio(p)
    elif rt in ("asyncio", "uvloop"):
        res = _asyncio(p)
    elif rt == "trio":
        res = _trio(p)
    else:
        raise ValueError(rt)
    rates = [p["n"] / t for t in res["times"]]
    res.update(rate=C.median(rates), rates=rates, spread=C.spread(rates), n=p["n"])
    return res


def report(results):
    base = C.value(results, "asyncio", "rate")
    inter = [r for r in results if r["params"].get("interleaved")]
    results = [r for r in results if not r["params"].get("interleaved")]
    rows = []
    for r in results:
        cell = C.status_cell(r)
        if cell:
            rows.append([r["label"], cell, "-", "-", C.bg_cell(r)])
            continue
        rows.append([r["label"], C.fmt_num(r["rate"], "tasks/s"), f"{r['spread'] * 100:.0f}%",
                     C.fmt_ratio(C.ratio(r["rate"], base)), C.bg_cell(r)])
    n = next((r["params"]["n"] for r in results), 0)
    reps = {}
    for r in results:
        reps.setdefault(r["params"]["repeat"], []).append(r["runtime"])
    reps_text = "; ".join(f"{'/'.join(dict.fromkeys(rts))} {k}" for k, rts in reps.items())
    text = (f"### spawn + one yield + join (N={n:,}; median of timed rounds after one warm-up:"
            f" {reps_text})\n\n"
            + C.table(["runtime", "tasks/s", "spread", "vs asyncio", "bg load"], rows))
    z1 = C.value(results, "zokio threads=1", "rate")
    z2 = C.value(results, "zokio threads=2", "rate")
    curve = [C.value(results, f"zokio threads={t}", "rate") for t in ZOKIO_THREADS]
    r_async = C.ratio(z2, base)
    r_21 = C.ratio(z2, z1)
    bars = [
        C.bar("spawn: zokio threads=2 vs asyncio", f"asyncio {C.fmt_num(base, 'tasks/s')}",
              f"{C.fmt_num(z2, 'tasks/s')} ({C.fmt_ratio(r_async)})", ">= 10x asyncio",
              None if r_async is None else r_async >= 10.0),
        C.bar("spawn: zokio threads=2 vs threads=1 (separate cases)",
              f"threads=1 {C.fmt_num(z1, 'tasks/s')}",
              f"{C.fmt_num(z2, 'tasks/s')} ({C.fmt_ratio(r_21)})", "report",
              None),
    ]
    ok_sets = [r for r in inter if r.get("status") == "ok"]
    if inter:
        irows = []
        for r in inter:
            cell = C.status_cell(r)
            if cell:
                irows.append([r["label"], cell, "-", "-", C.bg_cell(r)])
                continue
            irows.append([r["label"], C.fmt_num(C.median(r["rates1"]), "tasks/s"),
                          C.fmt_num(C.median(r["rates2"]), "tasks/s"),
                          C.fmt_ratio(r["ratio"]), C.bg_cell(r)])
        rounds = inter[0]["params"]["repeat"]
        text_inter = (f"\n\n#### threads=2 vs threads=1, interleaved ({len(inter)} sets of {rounds} "
                      f"alternating rounds, each set in a fresh process)\n\n"
                      + C.table(["set", "threads=1 (median)", "threads=2 (median)",
                                 "t2 / t1", "bg load"], irows))
        ratios = [r["ratio"] for r in ok_sets]
        met = None if len(ok_sets) != len(inter) else all(x >= 1.0 for x in ratios)
        bars.append(C.bar("spawn: zokio threads=2 vs threads=1, interleaved",
                          "threads=1, same process",
                          ", ".join(C.fmt_ratio(x) for x in ratios) or "-",
                          ">= 1.0 in every set", met))
    else:
        text_inter = ""
    if all(c is not None for c in curve):
        falls = [f"{ZOKIO_THREADS[i]}->{ZOKIO_THREADS[i + 1]}" for i in range(len(curve) - 1)
                 if curve[i + 1] < 0.95 * curve[i]]
        text += ("\n\nzokio thread curve (tasks/s): "
                 + ", ".join(f"{t}: {C.fmt_num(v)}" for t, v in zip(ZOKIO_THREADS, curve))
                 + (f" — falls (>5%) at {', '.join(falls)}" if falls else " — does not fall")
                 + f". The machine has {os.cpu_count()} cores: threads > cores are oversubscribed.")
    ranges = [f"threads={t}: {C.fmt_num(min(r['rates']))}-{C.fmt_num(max(r['rates']))}"
              for t in ZOKIO_THREADS
              for r in [C.find(results, f"zokio threads={t}")] if r and r.get("status") == "ok"]
    if ranges:
        text += "\n\nzokio per-round range (tasks/s): " + "; ".join(ranges) + "."
    mlines = []
    for t in ZOKIO_THREADS:
        r = C.find(results, f"zokio threads={t}")
        m = (r or {}).get("metrics") or {}
        if r and r.get("status") == "ok" and "polls" in m:
            done = m.get("tasks_completed") or 1
            mlines.append(f"threads={t}: {m.get('polls', 0) / done:.2f} polls/task, "
                          f"{m.get('steals', 0):,} steals, {m.get('parks', 0):,} parks"
                          f" over {done:,} tasks")
    if mlines:
        text += "\n\nzokio `Runtime.metrics()` after all rounds: " + "; ".join(mlines) + "."
    text += text_inter
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
