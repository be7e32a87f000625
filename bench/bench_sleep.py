"""sleep lateness: N concurrent sleeps of random length; how late do they wake?

N tasks (100k) are spawned at once; task i reads ``time.monotonic()``, sets
its intended deadline to that plus ``d_i``, sleeps ``d_i`` with the runtime's
own sleep (``zokio.sleep``, ``asyncio.sleep``, ``trio.sleep``) and records
``time.monotonic() - deadline`` on waking.  ``d_i`` is uniform in [0, 1) s
from a fixed seed, identical for every runtime.  Per round the p50, p99 and
max of the N lateness values are taken; the table reports the median of those
over the rounds.  A negative minimum would mean a task woke early.

Lateness includes everything between the deadline and the task running
again: timer granularity, timer-structure cost, and queueing behind the other
tasks that are being started or woken at the same moment.  The main task
spawns all N tasks in one loop without awaiting, which no runtime can
preempt; "p99 after spawn" is the p99 over the sleeps whose deadline fell
after that loop had ended (the bar is on the plain p99 over all N).
"min" is the earliest wake (negative: woke before its deadline) and "early
wakes" counts them.

Bar: zokio (threads=2) p99 <= 2 ms.  Run alone: ``python bench/bench_sleep.py``.
"""

from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "sleep"
SEED = 20240601


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    n = 20_000 if quick else 100_000
    rep = C.repeats(repeat, quick, full=5, fast=2)
    p = {"n": n, "repeat": rep}
    return [
        C.Case(WORKLOAD, "zokio", "zokio threads=2", {**p, "threads": 2}),
        C.Case(WORKLOAD, "zokio", "zokio threads=1", {**p, "threads": 1}),
        C.Case(WORKLOAD, "asyncio", "asyncio", dict(p)),
        C.Case(WORKLOAD, "uvloop", "uvloop", dict(p)),
        C.Case(WORKLOAD, "trio", "trio", dict(p)),
    ]


def durations(n: int) -> list[float]:
    rnd = random.Random(SEED)
    return [rnd.random() for _ in range(n)]


def zokio_burst(zokio, ds):
    """One burst on zokio: a task per d in ds sleeps d seconds.  Returns
    (lateness of each, deadline of each, time the last was spawned).  Also
    the cold burst of bench_stranded.py."""
    mono = time.monotonic
    n = len(ds)

    async def burst():
        lat = [0.0] * n
        dls = [0.0] * n

        async def sleeper(i, d):
            deadline = mono() + d
            dls[i] = deadline
            await zokio.sleep(d)
            lat[i] = mono() - deadline

        hs = [zokio.spawn(sleeper(i, d)) for i, d in enumerate(ds)]
        spawned = mono()
        for h in hs:
            await h
        return lat, dls, spawned

    return burst()


def asyncio_burst(ds):
    """zokio_burst's twin on the running asyncio loop."""
    import asyncio

    mono = time.monotonic
    n = len(ds)

    async def burst():
        lat = [0.0] * n
        dls = [0.0] * n

        async def sleeper(i, d):
            deadline = mono() + d
            dls[i] = deadline
            await asyncio.sleep(d)
            lat[i] = mono() - deadline

        ts = [asyncio.create_task(sleeper(i, d)) for i, d in enumerate(ds)]
        spawned = mono()
        for t in ts:
            await t
        return lat, dls, spawned

    return burst()


def _zokio(p, ds):
    zokio, rt = C.zokio_runtime(p["threads"])

    async def warm():
        await zokio.sleep(0.01)

    with rt:
        rt.block_on(warm())
        return [rt.block_on(zokio_burst(zokio, ds)) for _ in range(p["repeat"])]


def _asyncio(p, ds):
    with C.asyncio_runner(p["runtime"]) as runner:
        return [runner.run(asyncio_burst(ds)) for _ in range(p["repeat"])]


def _trio(p, ds):
    trio = C.require("trio")
    mono = time.monotonic
    n = len(ds)

    async def bench():
        lat = [0.0] * n
        dls = [0.0] * n

        async def sleeper(i, d):
            deadline = mono() + d
            dls[i] = deadline
            await trio.sleep(d)
            lat[i] = mono() - deadline

        async with trio.open_nursery() as nursery:
            for i, d in enumerate(ds):
                nursery.start_soon(sleeper, i, d)
            spawned = mono()
        return lat, dls, spawned

    return [trio.run(bench) for _ in range(p["repeat"])]


def run_case(p):
    ds = durations(p["n"])
    rt = p["runtime"]
    if rt == "zokio":
        rounds = _zokio(p, ds)
    elif rt in ("asyncio", "uvloop"):
        rounds = _asyncio(p, ds)
    elif rt == "trio":
        rounds = _trio(p, ds)
    else:
        raise ValueError(rt)
    per = []
    for lat, dls, spawned in rounds:
        s = sorted(x * 1e3 for x in lat)
        # sleeps that became due only after the spawning loop had finished:
        # lateness without the (unpreemptible) spawning loop in the way
        steady = sorted(x * 1e3 for x, dl in zip(lat, dls) if dl > spawned)
        per.append({"p50": C.percentile(s, 50), "p90": C.percentile(s, 90),
                    "p99": C.percentile(s, 99), "max": s[-1], "min": s[0],
                    "early": sum(1 for x in s if x < 0),
                    "p99_after_spawn": C.percentile(steady, 99), "n_after_spawn": len(steady)})
    out = {k: C.median(r[k] for r in per)
           for k in ("p50", "p90", "p99", "max", "min", "p99_after_spawn", "n_after_spawn")}
    out["early_min"] = min(r["min"] for r in per)
    out["early_count"] = max(r["early"] for r in per)
    out["rounds"] = per
    return out


def report(results):
    rows = []
    for r in results:
        cell = C.status_cell(r)
        if cell:
            rows.append([r["label"], cell, "-", "-", "-", "-", "-", C.bg_cell(r)])
            continue
        rows.append([r["label"], f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.2f}",
                     f"{r['early_min']:.3f}", str(r["early_count"]),
                     f"{r['p99_after_spawn']:.2f}", C.bg_cell(r)])
    p = results[0]["params"] if results else {"n": 0, "repeat": 0}
    text = (f"### sleep lateness ({p['n']:,} concurrent sleeps, d uniform in [0, 1) s, fixed seed;"
            f" ms; median over {p['repeat']} rounds)\n\n"
            + C.table(["runtime", "p50 ms", "p99 ms", "max ms", "min ms", "early wakes",
                       "p99 after spawn", "bg load"], rows))
    z = C.value(results, "zokio threads=2", "p99")
    peers = ", ".join(f"{rt} {C.value(results, rt, 'p99'):.1f} ms" if C.value(results, rt, "p99") is not None
                      else f"{rt} -" for rt in ("asyncio", "uvloop", "trio"))
    bars = [C.bar(f"sleep: p99 lateness, {p['n'] // 1000}k sleeps (threads=2)", f"p99: {peers}",
                  "-" if z is None else f"{z:.2f} ms", "p99 <= 2 ms", None if z is None else z <= 2.0)]
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
