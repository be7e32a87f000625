"""misc: chained spawn, ping-pong, yield_many (figures without a bar).

* chain: each task spawns the next one and returns without awaiting it;
  the last of ``D`` links (100k) sets a completion cell that the main task
  awaits.  Links/s.  (zokio: ``spawn`` + ``Oneshot``; asyncio/uvloop:
  ``create_task`` + a future; trio: ``nursery.start_soon`` + ``trio.Event``.)
* pingpong: two tasks pass a message back and forth ``M`` times; round
  trips/s.  zokio: a fresh ``zokio.Oneshot`` per message (each message carries
  the cell for its reply); asyncio/uvloop: a fresh future per message, the
  same way; trio: two memory channels of capacity 1.
* yield1: one task yields 1M times (``zokio.yield_now()``,
  ``asyncio.sleep(0)``, ``trio.lowlevel.checkpoint()``); yields/s.
* yieldN: 100 tasks yield 10k times each (1M yields in all); yields/s.

zokio runs each at threads=1 and threads=2.  Each figure is the median of
the timed rounds after one shorter warm-up round in the same runtime.
Run alone: ``python bench/bench_misc.py``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "misc"
SUBS = ("chain", "pingpong", "yield1", "yieldN")
UNITS = {"chain": "links/s", "pingpong": "round trips/s", "yield1": "yields/s", "yieldN": "yields/s"}
NTASKS_YIELDN = 100


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"chain": 20_000, "pingpong": 10_000, "yield1": 200_000, "yieldN": 200_000}
    return {"chain": 100_000, "pingpong": 50_000, "yield1": 1_000_000, "yieldN": 1_000_000}


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    sz = sizes(quick)
    out = []
    for sub in SUBS:
        rep = C.repeats(repeat, quick, full=5 if sub in ("chain", "pingpong") else 3, fast=2)
        base = {"sub": sub, "n": sz[sub], "repeat": rep}
        for t in (1, 2):
            out.append(C.Case(WORKLOAD, "zokio", f"{sub}: zokio threads={t}", {**base, "threads": t},
                              timeout=120))
        for rt in ("asyncio", "uvloop", "trio"):
            out.append(C.Case(WORKLOAD, rt, f"{sub}: {rt}", dict(base)))
    return out


# ------------------------------------------------------------------ zokio


def _zokio_benches(zokio):
    perf = time.perf_counter

    async def link(k, done):
        if k == 0:
            done.set(None)
        else:
            zokio.spawn(link(k - 1, done))

    async def chain(n):
        done = zokio.Oneshot()
        t0 = perf()
        zokio.spawn(link(n, done))
        await done
        return perf() - t0

    async def pinger(cell, n):
        for _ in range(n):
            reply = zokio.Oneshot()
            cell.set(reply)
            cell = await reply

    async def ponger(cell, n):
        for _ in range(n):
            reply = await cell
            cell = zokio.Oneshot()
            reply.set(cell)

    async def pingpong(n):
        first = zokio.Oneshot()
        t0 = perf()
        a = zokio.spawn(ponger(first, n))
        b = zokio.spawn(pinger(first, n))
        await a
        await b
        return perf() - t0

    async def yielder(n):
        y = zokio.yield_now
        for _ in range(n):
            await y()

    async def yield1(n):
        t0 = perf()
        await zokio.spawn(yielder(n))
        return perf() - t0

    async def yieldN(n):
        per = n // NTASKS_YIELDN
        t0 = perf()
        hs = [zokio.spawn(yielder(per)) for _ in range(NTASKS_YIELDN)]
        for h in hs:
            await h
        return perf() - t0

    return {"chain": chain, "pingpong": pingpong, "yield1": yield1, "yieldN": yieldN}


def _zokio(p):
    zokio, rt = C.zokio_runtime(p["threads"])
    fn = _zokio_benches(zokio)[p["sub"]]
    with rt:
        rt.block_on(fn(max(100, p["n"] // 10)))
        return [rt.block_on(fn(p["n"])) for _ in range(p["repeat"])]


# ------------------------------------------------------------------ asyncio


def _asyncio_benches():
    import asyncio

    perf = time.perf_counter

    async def link(k, done):
        if k == 0:
            done.set_result(None)
        else:
            asyncio.get_running_loop().create_task(link(k - 1, done))

    async def chain(n):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        t0 = perf()
        loop.create_task(link(n, done))
        await done
        return perf() - t0

    async def pinger(cell, n):
        loop = asyncio.get_running_loop()
        for _ in range(n):
            reply = loop.create_future()
            cell.set_result(reply)
            cell = await reply

    async def ponger(cell, n):
        loop = asyncio.get_running_loop()
        for _ in range(n):
            reply = await cell
            cell = loop.create_future()
            reply.set_result(cell)

    async def pingpong(n):
        first = asyncio.get_running_loop().create_future()
        t0 = perf()
        a = asyncio.create_task(ponger(first, n))
        b = asyncio.create_task(pinger(first, n))
        await a
        await b
        return perf() - t0

    async def yielder(n):
        s = asyncio.sleep
        for _ in range(n):
            await s(0)

    async def yield1(n):
        t0 = perf()
        await asyncio.create_task(yielder(n))
        return perf() - t0

    async def yieldN(n):
        per = n // NTASKS_YIELDN
        t0 = perf()
        ts = [asyncio.create_task(yielder(per)) for _ in range(NTASKS_YIELDN)]
        for t in ts:
            await t
        return perf() - t0

    return {"chain": chain, "pingpong": pingpong, "yield1": yield1, "yieldN": yieldN}


def _asyncio(p):
    fn = _asyncio_benches()[p["sub"]]
    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(fn(max(100, p["n"] // 10)))
        return [runner.run(fn(p["n"])) for _ in range(p["repeat"])]


# ------------------------------------------------------------------ trio


def _trio_benches(trio):
    perf = time.perf_counter

    async def link(k, nursery, done):
        if k == 0:
            done.set()
        else:
            nursery.start_soon(link, k - 1, nursery, done)

    async def chain(n):
        done = trio.Event()
        t0 = perf()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link, n, nursery, done)
            await done.wait()
        return perf() - t0

    async def pinger(send, recv, n):
        for i in range(n):
            await send.send(i)
            await recv.receive()

    async def ponger(send, recv, n):
        for _ in range(n):
            v = await recv.receive()
            await send.send(v)

    async def pingpong(n):
        s1, r1 = trio.open_memory_channel(1)
        s2, r2 = trio.open_memory_channel(1)
        t0 = perf()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ponger, s2, r1, n)
            nursery.start_soon(pinger, s1, r2, n)
        return perf() - t0

    async def yielder(n):
        cp = trio.lowlevel.checkpoint
        for _ in range(n):
            await cp()

    async def yield1(n):
        t0 = perf()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(yielder, n)
        return perf() - t0

    async def yieldN(n):
        per = n // NTASKS_YIELDN
        t0 = perf()
        async with trio.open_nursery() as nursery:
            for _ in range(NTASKS_YIELDN):
                nursery.start_soon(yielder, per)
        return perf() - t0

    return {"chain": chain, "pingpong": pingpong, "yield1": yield1, "yieldN": yieldN}


def _trio(p):
    trio = C.require("trio")
    fn = _trio_benches(trio)[p["sub"]]
    trio.run(fn, max(100, p["n"] // 10))
    return [trio.run(fn, p["n"]) for _ in range(p["repeat"])]


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio":
        times = _zokio(p)
    elif rt in ("asyncio", "uvloop"):
        times = _asyncio(p)
    elif rt == "trio":
        times = _trio(p)
    else:
        raise ValueError(rt)
    rates = [p["n"] / t for t in times]
    return {"rate": C.median(rates), "rates": rates, "spread": C.spread(rates)}


def report(results):
    parts = []
    for sub in SUBS:
        rs = [r for r in results if r["params"].get("sub") == sub]
        if not rs:
            continue
        base = C.value(rs, f"{sub}: asyncio", "rate")
        rows = []
        for r in rs:
            cell = C.status_cell(r)
            name = r["label"].split(": ", 1)[1]
            if cell:
                rows.append([name, cell, "-", "-", C.bg_cell(r)])
                continue
            rows.append([name, C.fmt_num(r["rate"], UNITS[sub]), f"{r['spread'] * 100:.0f}%",
                         C.fmt_ratio(C.ratio(r["rate"], base)), C.bg_cell(r)])
        p = rs[0]["params"]
        parts.append(f"#### {sub} (n={p['n']:,}; median of {p['repeat']} rounds)\n\n"
                     + C.table(["runtime", UNITS[sub], "spread", "vs asyncio", "bg load"], rows))
    return {"text": "### misc (no bar)\n\n" + "\n\n".join(parts), "bars": []}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
