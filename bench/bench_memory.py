"""idle memory: resident bytes per parked task, N tasks parked at once.

Each case runs in a fresh interpreter (and, for the median, in several fresh
interpreters).  Inside the runtime's main task: ``gc.collect()``, read RSS
(``/proc/self/smaps_rollup`` Rss), spawn N tasks that each mark a
preallocated byte as started and then park, wait until every task has
started, ``gc.collect()``, read RSS again.  Bytes per task =
(RSS after - RSS before) / N.  The figure covers everything a parked task
holds: coroutine and frame, the runtime's task object, its timer entry or
waiter, the handle kept in a list (8 B of it is the list slot).  Each task's
int argument (its index) is created before the first reading, so it is not
counted.

Parking modes:
* sleep: ``await <runtime>.sleep(3600)``;
* wait: zokio awaits a fresh ``zokio.Oneshot()`` per task (the cell is
  created after the first RSS reading, so it is counted); asyncio/uvloop
  await ``event.wait()`` on one shared ``asyncio.Event``; trio awaits one
  shared ``trio.Event``.

Two reference rows: zokio with the JoinHandles dropped instead of kept in a
list, and the floor — N bare coroutines of the same shape suspended at an
await and held in a list, with no runtime at all (what any runtime must pay).

The process exits with ``os._exit`` right after measuring; the tasks are
never released.  Bar: zokio <= 600 B per task.
Run alone: ``python bench/bench_memory.py``.
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "memory"
LONG = 3600.0


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    n = 50_000 if quick else 200_000
    procs = repeat or (1 if quick else 3)
    out = []
    for t in (2, 1):
        for mode in ("sleep", "wait"):
            out.append(C.Case(WORKLOAD, "zokio", f"zokio threads={t} {mode}",
                              {"n": n, "threads": t, "mode": mode}, timeout=180, procs=procs))
    out.append(C.Case(WORKLOAD, "zokio", "zokio threads=2 sleep, handles dropped",
                      {"n": n, "threads": 2, "mode": "sleep", "drop": True}, timeout=180, procs=procs))
    out.append(C.Case(WORKLOAD, "python", "floor: bare suspended coroutines",
                      {"n": n, "mode": "floor"}, timeout=180, procs=procs))
    for rt in ("asyncio", "uvloop", "trio"):
        for mode in ("sleep", "wait"):
            out.append(C.Case(WORKLOAD, rt, f"{rt} {mode}", {"n": n, "mode": mode},
                              timeout=180, procs=procs))
    return out


async def _wait_started(started, n, sleep):
    """Sleep in small steps until every task has marked itself started."""
    t0 = time.perf_counter()
    while started.count(1) < n:
        if time.perf_counter() - t0 > 60:
            raise RuntimeError(f"only {started.count(1)} of {n} tasks started within 60 s")
        await sleep(0.02)
    # one more pass so that the last tasks are fully parked, not just started
    await sleep(0.05)


def _measure_zokio(p):
    zokio = C.require("zokio")
    n, mode = p["n"], p["mode"]
    started = bytearray(n)
    ids = list(range(n))  # the tasks' int arguments exist before the baseline
    keep = {}

    async def sleeper(i):
        started[i] = 1
        await zokio.sleep(LONG)

    async def waiter(i, cell):
        started[i] = 1
        await cell

    async def main():
        gc.collect()
        r0 = C.rss_bytes()
        t0 = time.perf_counter()
        if mode == "sleep" and p.get("drop"):
            hs = None
            for i in ids:
                zokio.spawn(sleeper(i))
        elif mode == "sleep":
            hs = [zokio.spawn(sleeper(i)) for i in ids]
        else:
            cells = [zokio.Oneshot() for _ in ids]
            hs = [zokio.spawn(waiter(i, cells[i])) for i in ids]
            keep["cells"] = cells
        await _wait_started(started, n, zokio.sleep)
        dt = time.perf_counter() - t0
        keep["hs"] = hs
        gc.collect()
        r1 = C.rss_bytes()
        return r0, r1, dt

    rt = zokio.Runtime(threads=p["threads"])
    return rt.block_on(main())  # no shutdown: the process exits right after


def _measure_asyncio(p):
    import asyncio

    n, mode = p["n"], p["mode"]
    started = bytearray(n)
    ids = list(range(n))  # the tasks' int arguments exist before the baseline
    keep = {}

    async def sleeper(i):
        started[i] = 1
        await asyncio.sleep(LONG)

    async def waiter(i, ev):
        started[i] = 1
        await ev.wait()

    async def main():
        ev = asyncio.Event()
        gc.collect()
        r0 = C.rss_bytes()
        t0 = time.perf_counter()
        if mode == "sleep":
            ts = [asyncio.create_task(sleeper(i)) for i in ids]
        else:
            ts = [asyncio.create_task(waiter(i, ev)) for i in ids]
        await _wait_started(started, n, asyncio.sleep)
        dt = time.perf_counter() - t0
        keep["ts"] = ts
        gc.collect()
        r1 = C.rss_bytes()
        return r0, r1, dt

    if p["runtime"] == "uvloop":
        loop = C.require("uvloop").new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    return loop.run_until_complete(main())  # tasks left pending on purpose


def _measure_trio(p):
    trio = C.require("trio")
    n, mode = p["n"], p["mode"]
    started = bytearray(n)
    ids = list(range(n))  # the tasks' int arguments exist before the baseline

    async def sleeper(i):
        started[i] = 1
        await trio.sleep(LONG)

    async def waiter(i, ev):
        started[i] = 1
        await ev.wait()

    async def main():
        ev = trio.Event()
        gc.collect()
        r0 = C.rss_bytes()
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in ids:
                if mode == "sleep":
                    nursery.start_soon(sleeper, i)
                else:
                    nursery.start_soon(waiter, i, ev)
            await _wait_started(started, n, trio.sleep)
            dt = time.perf_counter() - t0
            gc.collect()
            r1 = C.rss_bytes()
            # Cancelling 200k parked tasks takes trio longer than the whole
            # measurement: report from here and end the process.
            C.emit_and_exit(_result(p, r0, r1, dt))
        return r0, r1, dt

    return trio.run(main)


class _Park:
    """An awaitable that suspends its coroutine once and is never resumed."""

    __slots__ = ()

    def __await__(self):
        yield self


def _measure_floor(p):
    """The pure-Python floor: N coroutines of the same shape, each suspended
    at an await, held in a list; no runtime, no task object, no timer."""
    n = p["n"]
    started = bytearray(n)
    ids = list(range(n))  # the tasks' int arguments exist before the baseline
    park = _Park()

    async def parked(i):
        started[i] = 1
        await park

    gc.collect()
    r0 = C.rss_bytes()
    t0 = time.perf_counter()
    coros = [parked(i) for i in ids]
    for c in coros:
        c.send(None)
    dt = time.perf_counter() - t0
    gc.collect()
    r1 = C.rss_bytes()
    assert started.count(1) == n
    return r0, r1, dt


def run_case(p):
    rt = p["runtime"]
    if rt == "python":
        r0, r1, dt = _measure_floor(p)
    elif rt == "zokio":
        r0, r1, dt = _measure_zokio(p)
    elif rt in ("asyncio", "uvloop"):
        r0, r1, dt = _measure_asyncio(p)
    elif rt == "trio":
        r0, r1, dt = _measure_trio(p)
    else:
        raise ValueError(rt)
    return _result(p, r0, r1, dt)


def _result(p, r0, r1, dt):
    return {"per_task": (r1 - r0) / p["n"], "rss_before": r0, "rss_after": r1,
            "park_seconds": dt}


def report(results):
    rows = []
    for r in results:
        cell = C.status_cell(r)
        if cell:
            rows.append([r["label"], cell, "-", "-", C.bg_cell(r)])
            continue
        rows.append([r["label"], f"{r['per_task']:.0f} B", f"{r['rss_before'] / 2**20:.1f} MiB",
                     f"{r['rss_after'] / 2**20:.1f} MiB", C.bg_cell(r)])
    p = results[0]["params"] if results else {"n": 0}
    procs = next((len(r.get("procs", [r])) for r in results), 1)
    text = (f"### idle memory ({p['n']:,} parked tasks; RSS delta / N; median of {procs} fresh"
            f" process(es) per row)\n\n"
            + C.table(["runtime / parked in", "RSS per task", "RSS before", "RSS after", "bg load"], rows))
    zs = C.value(results, "zokio threads=2 sleep", "per_task")
    zw = C.value(results, "zokio threads=2 wait", "per_task")
    peer = ", ".join(f"{lab} {C.value(results, lab, 'per_task'):.0f} B"
                     for lab in ("asyncio wait", "asyncio sleep", "uvloop sleep", "trio sleep")
                     if C.value(results, lab, "per_task") is not None) or "-"
    worst = max([v for v in (zs, zw) if v is not None], default=None)
    bars = [C.bar(f"memory: RSS per idle task ({p['n'] // 1000}k parked, threads=2)", peer,
                  f"sleep {'-' if zs is None else f'{zs:.0f} B'}, oneshot {'-' if zw is None else f'{zw:.0f} B'}",
                  "<= 600 B", None if (zs is None or zw is None) else worst <= 600)]
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
