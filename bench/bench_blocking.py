"""blocking: round trips/s through the blocking-thread pool, 64 in flight.

64 tasks each run ``K`` iterations of ``await <offload>(f)`` where ``f`` is a
trivial function (returns None); the timed region covers all 64 x K round
trips.  The offload is ``zokio.spawn_blocking(f)``, ``asyncio.to_thread(f)``
(stock loop and uvloop; default executor, which has min(32, cores + 4)
threads) or ``trio.to_thread.run_sync(f)`` (default limiter: 40 threads).
One untimed warm-up round runs first in the same runtime, so pool threads
exist before timing.

Bar: zokio (threads=2) >= 2x asyncio.to_thread.
Run alone: ``python bench/bench_blocking.py``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "blocking"
INFLIGHT = 64


def f():
    return None


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    k = 50 if quick else 300
    rep = C.repeats(repeat, quick, full=5, fast=2)
    p = {"k": k, "repeat": rep}
    return [
        C.Case(WORKLOAD, "zokio", "zokio threads=2", {**p, "threads": 2}, timeout=120),
        C.Case(WORKLOAD, "zokio", "zokio threads=1", {**p, "threads": 1}, timeout=120),
        C.Case(WORKLOAD, "asyncio", "asyncio", dict(p)),
        C.Case(WORKLOAD, "uvloop", "uvloop", dict(p)),
        C.Case(WORKLOAD, "trio", "trio", dict(p)),
    ]


def _zokio(p):
    zokio, rt = C.zokio_runtime(p["threads"])
    k = p["k"]

    async def worker(kk):
        for _ in range(kk):
            await zokio.spawn_blocking(f)

    async def bench(kk):
        t0 = time.perf_counter()
        hs = [zokio.spawn(worker(kk)) for _ in range(INFLIGHT)]
        for h in hs:
            await h
        return time.perf_counter() - t0

    with rt:
        rt.block_on(bench(max(1, k // 5)))
        times = [rt.block_on(bench(k)) for _ in range(p["repeat"])]
        try:
            metrics = rt.metrics()
        except Exception as exc:
            metrics = {"error": repr(exc)}
    return times, {"metrics": metrics}


def _asyncio(p):
    import asyncio

    k = p["k"]

    async def worker(kk):
        for _ in range(kk):
            await asyncio.to_thread(f)

    async def bench(kk):
        t0 = time.perf_counter()
        ts = [asyncio.create_task(worker(kk)) for _ in range(INFLIGHT)]
        for t in ts:
            await t
        return time.perf_counter() - t0

    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(bench(max(1, k // 5)))
        times = [runner.run(bench(k)) for _ in range(p["repeat"])]
    return times, {}


def _trio(p):
    trio = C.require("trio")
    k = p["k"]

    async def worker(kk):
        for _ in range(kk):
            await trio.to_thread.run_sync(f)

    async def bench(kk):
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(INFLIGHT):
                nursery.start_soon(worker, kk)
        return time.perf_counter() - t0

    trio.run(bench, max(1, k // 5))
    return [trio.run(bench, k) for _ in range(p["repeat"])], {}


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio":
        times, extra = _zokio(p)
    elif rt in ("asyncio", "uvloop"):
        times, extra = _asyncio(p)
    elif rt == "trio":
        times, extra = _trio(p)
    else:
        raise ValueError(rt)
    total = INFLIGHT * p["k"]
    rates = [total / t for t in times]
    return {"rate": C.median(rates), "rates": rates, "spread": C.spread(rates), **extra}


def report(results):
    base = C.value(results, "asyncio", "rate")
    rows = []
    for r in results:
        cell = C.status_cell(r)
        if cell:
            rows.append([r["label"], cell, "-", "-", C.bg_cell(r)])
            continue
        rows.append([r["label"], C.fmt_num(r["rate"], "calls/s"), f"{r['spread'] * 100:.0f}%",
                     C.fmt_ratio(C.ratio(r["rate"], base)), C.bg_cell(r)])
    p = results[0]["params"] if results else {"k": 0, "repeat": 0}
    text = (f"### blocking: offload round trips ({INFLIGHT} in flight x {p['k']} calls;"
            f" median of {p['repeat']} rounds after a warm-up)\n\n"
            + C.table(["runtime", "round trips/s", "spread", "vs asyncio.to_thread", "bg load"], rows))
    z = C.value(results, "zokio threads=2", "rate")
    r = C.ratio(z, base)
    uv = C.value(results, "uvloop", "rate")
    tr = C.value(results, "trio", "rate")
    bars = [C.bar("blocking: spawn_blocking round trips, 64 in flight",
                  f"asyncio.to_thread {C.fmt_num(base, '/s')}, uvloop {C.fmt_num(uv, '/s')}, "
                  f"trio {C.fmt_num(tr, '/s')}",
                  f"{C.fmt_num(z, '/s')} ({C.fmt_ratio(r)})", ">= 2x asyncio.to_thread",
                  None if r is None else r >= 2.0)]
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
