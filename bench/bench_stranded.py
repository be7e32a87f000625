"""stranded: work left on a worker stuck in one long poll; cold sleep bursts.

Two figures of issue 5 §2 ("no stranded work").

* stuck: a task files work on its worker and then runs one CPU-bound poll
  of ``H`` = 1 s (a busy loop, no await); the runtime's other worker is idle.
  - *sleep*: the task spawns a sleeper (it lands in this worker's LIFO slot)
    and yields once, so the sleeper runs here first and files a 10 ms timer
    on this worker's wheel; then the 1 s poll.  Figure: how long the 10 ms
    ``sleep`` took, from the call to the sleeper running again.  A round
    counts only if the sleeper filed its timer on the thread that then ran
    the poll (else the idle worker stole the task first, and the round is
    run again; the table says how often).
  - *lifo*: the task spawns a child (into this worker's LIFO slot) and at
    once runs the 1 s poll.  Figure: from ``spawn`` to the child's first
    line running.
  zokio runs at threads=2, where the monitor hands both to the idle worker;
  median of 5 rounds each.  threads=1 (no other worker to take them) and
  asyncio, uvloop and trio -- single-threaded: everything on the loop waits
  for the poll to end -- run the same code for comparison; their figure is
  the whole poll by construction, so one round each is enough.
* cold: ``N`` = 100k concurrent sleeps of ``d_i`` uniform in [0, 1) s (the
  fixed seed of bench_sleep.py), spawned at once by the main task; lateness
  = wake time - (start + d_i).  No warm-up of any kind: the *first* burst in
  a freshly started process ("cold": its memory is all first-touch), then a
  second burst in the same runtime ("warm").  Per burst the p50, p99 and max
  lateness; each figure is the median over 5 fresh processes.  zokio at
  threads=2 against asyncio and uvloop.

  zokio at threads=1 too: there no task starts before the spawning loop
  ends, so every collection the loop sets off comes before any deadline is
  set.

  Every cold process also records the collector's pauses during each burst
  (``gc.callbacks``: how many, their total and the longest) and the p99 of the
  lateness those pauses alone explain: a sleep whose deadline fell inside a
  pause cannot wake before that pause ends, whatever the runtime does.  Two
  more rows separate the collector from the runtime:
  - *zokio threads=2, collector paused*: the same bursts with ``gc.disable()``
    around them -- the lateness the runtime itself adds;
  - *no runtime (the burst's coroutines alone)*: no scheduler at all; the
    process builds the same N sleeper coroutines and suspends each at its
    first await, as a runtime would when spawning them, and records the
    pauses that this allocation sets off.  Its p99 is the lateness that a
    perfect runtime (every timer fired on time, no object of its own) which
    starts each task as it is spawned -- as a work-stealing runtime with an
    idle worker does -- would show from the collector alone: the floor of
    the cold figure at threads >= 2 on this interpreter with the collector
    in its default setting.

Bars (zokio, threads=2): sleep and LIFO wake behind a 1 s poll <= 30 ms
(they were 1.0 s before the monitor); cold p99 <= 5 ms; warm p99 <= 2 ms.
Run alone: ``python bench/bench_stranded.py``.
"""

from __future__ import annotations

import bisect
import gc
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from bench_sleep import asyncio_burst, durations, zokio_burst  # noqa: E402  (the same bursts)

WORKLOAD = "stranded"
SLEEP = 0.010
BAR_STUCK_MS = 30.0
BAR_COLD_MS = 5.0
BAR_WARM_MS = 2.0


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    hog = 0.3 if quick else 1.0
    rep = C.repeats(repeat, quick, full=5, fast=2)
    stuck = {"sub": "stuck", "hog": hog, "sleep": SLEEP}
    n = 20_000 if quick else 100_000
    procs = repeat or (2 if quick else 5)
    cold = {"sub": "cold", "n": n}
    return [
        C.Case(WORKLOAD, "zokio", "stuck: zokio threads=2", {**stuck, "threads": 2, "repeat": rep},
               timeout=180),
        C.Case(WORKLOAD, "zokio", "stuck: zokio threads=1", {**stuck, "threads": 1, "repeat": 1}),
        C.Case(WORKLOAD, "asyncio", "stuck: asyncio", {**stuck, "repeat": 1}),
        C.Case(WORKLOAD, "uvloop", "stuck: uvloop", {**stuck, "repeat": 1}),
        C.Case(WORKLOAD, "trio", "stuck: trio", {**stuck, "repeat": 1}),
        C.Case(WORKLOAD, "zokio", "cold: zokio threads=2", {**cold, "threads": 2},
               timeout=120, procs=procs),
        C.Case(WORKLOAD, "zokio", "cold: zokio threads=1", {**cold, "threads": 1},
               timeout=120, procs=procs),
        C.Case(WORKLOAD, "zokio", "cold: zokio threads=2, collector paused",
               {**cold, "threads": 2, "gc_off": True}, timeout=120, procs=procs),
        C.Case(WORKLOAD, "threading", "cold: no runtime (the burst's coroutines alone)",
               {**cold, "floor": True}, timeout=120, procs=procs),
        C.Case(WORKLOAD, "asyncio", "cold: asyncio", dict(cold), timeout=120, procs=procs),
        C.Case(WORKLOAD, "uvloop", "cold: uvloop", dict(cold), timeout=120, procs=procs),
    ]


def hog(seconds: float) -> None:
    """One CPU-bound stretch of Python with no await: the poll that sticks."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ------------------------------------------------------------------ stuck


def _zokio_stuck(p):
    zokio, rt = C.zokio_runtime(p["threads"])
    perf = time.perf_counter
    ident = threading.get_ident

    async def sleeper(out):
        out["timer_thread"] = ident()
        t0 = perf()
        await zokio.sleep(p["sleep"])
        out["value"] = perf() - t0

    async def stuck_sleep():
        out = {}
        h = zokio.spawn(sleeper(out))   # LIFO slot: runs next, on this worker
        await zokio.yield_now()         # ... and files its timer here
        out["hog_thread"] = ident()
        hog(p["hog"])
        await h
        return out

    async def child(out, spawned_at):
        out["value"] = perf() - spawned_at

    async def stuck_lifo():
        out = {}
        h = zokio.spawn(child(out, perf()))   # into this worker's LIFO slot
        hog(p["hog"])
        await h
        return out

    async def warm():
        await zokio.sleep(0.01)

    sleeps, lifos, retried = [], [], 0
    with rt:
        rt.block_on(warm())
        while len(sleeps) < p["repeat"]:
            out = rt.block_on(stuck_sleep())
            if out["timer_thread"] != out["hog_thread"] and p["threads"] > 1:
                retried += 1          # the idle worker took the task: not a stuck timer
                if retried > 50:
                    raise RuntimeError("could not get the timer filed on the stuck worker")
                continue
            sleeps.append(out["value"])
        for _ in range(p["repeat"]):
            lifos.append(rt.block_on(stuck_lifo())["value"])
        rescued = rt.metrics()["stranded_rescued"]
    return sleeps, lifos, {"retried": retried, "rescued": rescued}


def _asyncio_stuck(p):
    import asyncio

    perf = time.perf_counter

    async def stuck_sleep():
        out = {}

        async def sleeper():
            out["t0"] = t0 = perf()
            await asyncio.sleep(p["sleep"])
            out["value"] = perf() - t0

        t = asyncio.create_task(sleeper())
        await asyncio.sleep(0)       # the sleeper starts its sleep
        if "t0" not in out:
            raise RuntimeError("the sleeper did not start before the poll")
        hog(p["hog"])
        await t
        return out["value"]

    async def stuck_lifo():
        out = {}

        async def child(spawned_at):
            out["value"] = perf() - spawned_at

        t = asyncio.create_task(child(perf()))
        hog(p["hog"])
        await t
        return out["value"]

    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(asyncio.sleep(0.01))
        sleeps = [runner.run(stuck_sleep()) for _ in range(p["repeat"])]
        lifos = [runner.run(stuck_lifo()) for _ in range(p["repeat"])]
    return sleeps, lifos, {}


def _trio_stuck(p):
    trio = C.require("trio")
    perf = time.perf_counter

    async def stuck_sleep():
        out = {}

        async def sleeper(task_status=trio.TASK_STATUS_IGNORED):
            task_status.started()   # the parent resumes once this task yields ...
            t0 = perf()
            await trio.sleep(p["sleep"])   # ... here
            out["value"] = perf() - t0

        async with trio.open_nursery() as nursery:
            await nursery.start(sleeper)
            hog(p["hog"])
        return out["value"]

    async def stuck_lifo():
        out = {}

        async def child(spawned_at):
            out["value"] = perf() - spawned_at

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, perf())
            hog(p["hog"])
        return out["value"]

    trio.run(trio.sleep, 0.01)
    sleeps = [trio.run(stuck_sleep) for _ in range(p["repeat"])]
    lifos = [trio.run(stuck_lifo) for _ in range(p["repeat"])]
    return sleeps, lifos, {}


def _run_stuck(p):
    rt = p["runtime"]
    if rt == "zokio":
        sleeps, lifos, extra = _zokio_stuck(p)
    elif rt in ("asyncio", "uvloop"):
        sleeps, lifos, extra = _asyncio_stuck(p)
    elif rt == "trio":
        sleeps, lifos, extra = _trio_stuck(p)
    else:
        raise ValueError(rt)
    ms = lambda xs: [round(x * 1e3, 3) for x in xs]  # noqa: E731
    return {"sleep_ms": C.median(x * 1e3 for x in sleeps), "lifo_ms": C.median(x * 1e3 for x in lifos),
            "sleep_rounds": ms(sleeps), "lifo_rounds": ms(lifos), **extra}


# ------------------------------------------------------------------ cold burst


class _PauseLog:
    """The collector's pauses, as (start, end) in ``time.monotonic`` (the
    clock the deadlines are read from), while the block runs."""

    def __init__(self):
        self.pauses: list[tuple[float, float]] = []
        self._start = 0.0

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.monotonic()
        else:
            self.pauses.append((self._start, time.monotonic()))

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def _pause_bound(dls, pauses):
    """Per deadline, how late the collector alone made it: a deadline inside
    a pause [a, b) cannot be met before b."""
    ends = sorted(pauses)
    starts = [a for a, _ in ends]
    out = []
    for dl in dls:
        k = bisect.bisect_right(starts, dl) - 1
        out.append(max(0.0, ends[k][1] - dl) if k >= 0 and dl < ends[k][1] else 0.0)
    return out


def _burst_stats(lat, dls, spawned, pauses):
    s = sorted(x * 1e3 for x in lat)
    steady = sorted(x * 1e3 for x, dl in zip(lat, dls) if dl > spawned)
    bound = sorted(x * 1e3 for x in _pause_bound(dls, pauses))
    spans = [(b - a) * 1e3 for a, b in pauses]
    return {"p50": C.percentile(s, 50), "p99": C.percentile(s, 99), "max": s[-1], "min": s[0],
            "p99_after_spawn": C.percentile(steady, 99) if steady else 0.0,
            "collections": len(spans), "gc_pause_ms": sum(spans), "gc_pause_max_ms": max(spans, default=0.0),
            "gc_bound_p99": C.percentile(bound, 99)}


def _measured(run_burst, gc_off=False):
    """Run one burst with the collector's pauses logged (or the collector
    paused); returns (lat, dls, spawned, pauses)."""
    was_enabled = gc.isenabled()
    if gc_off:
        gc.disable()
    try:
        with _PauseLog() as log:
            lat, dls, spawned = run_burst()
    finally:
        if gc_off and was_enabled:
            gc.enable()
    return lat, dls, spawned, log.pauses


def _zokio_bursts(p, ds):
    zokio, rt = C.zokio_runtime(p["threads"])
    with rt:   # no warm-up: the first thing this process does is the burst
        return [_measured(lambda: rt.block_on(zokio_burst(zokio, ds)), p.get("gc_off", False))
                for _ in range(2)]


def _asyncio_bursts(p, ds):
    with C.asyncio_runner(p["runtime"]) as runner:
        return [_measured(lambda: runner.run(asyncio_burst(ds))) for _ in range(2)]


def _floor_bursts(p, ds):
    """The burst's own objects without a runtime: build the N sleeper
    coroutines and suspend each at its first await, at the pace the loop
    allows, then let them go.  A sleep "wakes" at its deadline unless a pause
    covers it; that lateness is the floor no runtime can go under."""
    mono = time.monotonic
    n = len(ds)

    class Suspend:
        def __await__(self):
            yield self

    def burst():
        lat = [0.0] * n
        dls = [0.0] * n

        async def sleeper(i, d):
            deadline = mono() + d
            dls[i] = deadline
            await Suspend()
            lat[i] = mono() - deadline

        held = []
        for i, d in enumerate(ds):
            c = sleeper(i, d)
            c.send(None)
            held.append(c)
        spawned = mono()
        for c in held:
            c.close()
        return lat, dls, spawned

    rounds = []
    for _ in range(2):
        lat, dls, spawned, pauses = _measured(burst)
        rounds.append((_pause_bound(dls, pauses), dls, spawned, pauses))
    return rounds


def _run_cold(p):
    ds = durations(p["n"])
    if p.get("floor"):
        rounds = _floor_bursts(p, ds)
    elif p["runtime"] == "zokio":
        rounds = _zokio_bursts(p, ds)
    elif p["runtime"] in ("asyncio", "uvloop"):
        rounds = _asyncio_bursts(p, ds)
    else:
        raise ValueError(p["runtime"])
    cold, warm = (_burst_stats(*r) for r in rounds)
    out = {f"cold_{k}": v for k, v in cold.items()}
    out.update({f"warm_{k}": v for k, v in warm.items()})
    return out


def run_case(p):
    if p["sub"] == "stuck":
        return _run_stuck(p)
    return _run_cold(p)


# ------------------------------------------------------------------ report


def _range(r, key):
    vals = [x[key] for x in r.get("procs", [r]) if x.get("status") == "ok" and key in x]
    return f"{min(vals):.2f}-{max(vals):.2f}" if len(vals) > 1 else "-"


def report(results):
    parts, bars = [], []
    stuck = [r for r in results if r["params"].get("sub") == "stuck"]
    if stuck:
        z = C.find(stuck, "stuck: zokio threads=2")
        zs = C.value(stuck, "stuck: zokio threads=2", "sleep_ms")
        zl = C.value(stuck, "stuck: zokio threads=2", "lifo_ms")
        rows = []
        for r in stuck:
            name = r["label"].split(": ", 1)[1]
            cell = C.status_cell(r)
            if cell:
                rows.append([name, cell, "-", "-", "-", "-", C.bg_cell(r)])
                continue
            rounds = len(r["sleep_rounds"])
            rows.append([name, f"{r['sleep_ms']:.1f}", f"{r['lifo_ms']:.1f}",
                         C.fmt_ratio(C.ratio(r["sleep_ms"], zs)) if r is not z else "1.00x",
                         f"{rounds}" + (f" (+{r['retried']} retried)" if r.get("retried") else ""),
                         str(r.get("rescued", "-")), C.bg_cell(r)])
        p = stuck[0]["params"]
        zrep = z["params"]["repeat"] if z else "-"
        text = (f"#### stuck: work left on a worker that then runs one {p['hog']:g} s CPU-bound poll,"
                f" other worker idle (ms; zokio threads=2: median of {zrep} rounds; the others: 1"
                " round, their figure is the whole poll by construction)\n\n"
                + C.table(["runtime", f"{SLEEP * 1e3:g} ms sleep took", "LIFO child start delay",
                           "sleep vs zokio", "rounds", "monitor rescues", "bg load"], rows))
        if z and z.get("status") == "ok":
            text += ("\n\nzokio rounds (ms): sleep " + ", ".join(f"{x:.1f}" for x in z["sleep_rounds"])
                     + "; LIFO " + ", ".join(f"{x:.1f}" for x in z["lifo_rounds"]) + ".")
        parts.append(text)
        peers = ", ".join(
            f"{rt} {C.value(stuck, f'stuck: {rt}', 'sleep_ms') / 1e3:.2f} s"
            if C.value(stuck, f"stuck: {rt}", "sleep_ms") is not None else f"{rt} -"
            for rt in ("asyncio", "uvloop", "trio"))
        bars.append(C.bar(f"stranded: {SLEEP * 1e3:g} ms sleep on a worker stuck in a {p['hog']:g} s poll "
                          "(threads=2)", peers, "-" if zs is None else f"{zs:.1f} ms",
                          f"<= {BAR_STUCK_MS:g} ms", None if zs is None else zs <= BAR_STUCK_MS))
        peers = ", ".join(
            f"{rt} {C.value(stuck, f'stuck: {rt}', 'lifo_ms') / 1e3:.2f} s"
            if C.value(stuck, f"stuck: {rt}", "lifo_ms") is not None else f"{rt} -"
            for rt in ("asyncio", "uvloop", "trio"))
        bars.append(C.bar(f"stranded: LIFO task behind a {p['hog']:g} s poll, start delay (threads=2)",
                          peers, "-" if zl is None else f"{zl:.1f} ms",
                          f"<= {BAR_STUCK_MS:g} ms", None if zl is None else zl <= BAR_STUCK_MS))

    cold = [r for r in results if r["params"].get("sub") == "cold"]
    if cold:
        zc = C.value(cold, "cold: zokio threads=2", "cold_p99")
        zw = C.value(cold, "cold: zokio threads=2", "warm_p99")
        rows = []
        for r in cold:
            name = r["label"].split(": ", 1)[1]
            cell = C.status_cell(r)
            if cell:
                rows.append([name, cell] + ["-"] * 9 + [C.bg_cell(r)])
                continue
            pauses = (f"{r['cold_collections']:.0f} / {r['cold_gc_pause_ms']:.0f} / {r['cold_gc_pause_max_ms']:.0f}"
                      if "cold_collections" in r else "-")
            bound = f"{r['cold_gc_bound_p99']:.2f}" if "cold_gc_bound_p99" in r else "-"
            floor = r["params"].get("floor")
            rows.append([name, "-" if floor else f"{r['cold_p50']:.2f}", f"{r['cold_p99']:.2f}",
                         _range(r, "cold_p99"), f"{r['cold_max']:.1f}", pauses, bound,
                         "-" if floor else f"{r['warm_p50']:.2f}", f"{r['warm_p99']:.2f}",
                         _range(r, "warm_p99"),
                         "-" if floor else C.fmt_ratio(C.ratio(r["cold_p99"], zc)), C.bg_cell(r)])
        p = cold[0]["params"]
        procs = max(len(r.get("procs", [r])) for r in cold)
        parts.append(
            f"#### cold: {p['n']:,} concurrent sleeps in [0, 1) s, the first burst in a fresh process"
            f" (no warm-up) and the second one (warm); lateness in ms, median of {procs} fresh"
            " processes; collector pauses in the cold burst as count / total ms / longest ms, and the"
            " p99 lateness those pauses alone explain (the no-runtime row: that is all it has)\n\n"
            + C.table(["runtime", "cold p50", "cold p99", "cold p99 range", "cold max",
                       "GC pauses (n / total / max)", "p99 from GC pauses alone", "warm p50",
                       "warm p99", "warm p99 range", "cold p99 vs zokio", "bg load"], rows))
        peers = ", ".join(
            f"{rt} {C.value(cold, f'cold: {rt}', 'cold_p99'):.0f} ms"
            if C.value(cold, f"cold: {rt}", "cold_p99") is not None else f"{rt} -"
            for rt in ("asyncio", "uvloop"))
        floor = C.value(cold, "cold: no runtime (the burst's coroutines alone)", "cold_p99")
        if floor is not None:
            peers += f"; the collector's floor with no runtime {floor:.0f} ms"
        bars.append(C.bar(f"sleep, cold: p99 lateness of the first {p['n'] // 1000}k burst in a fresh "
                          "process (threads=2)", peers, "-" if zc is None else f"{zc:.2f} ms",
                          f"p99 <= {BAR_COLD_MS:g} ms", None if zc is None else zc <= BAR_COLD_MS))
        peers = ", ".join(
            f"{rt} {C.value(cold, f'cold: {rt}', 'warm_p99'):.0f} ms"
            if C.value(cold, f"cold: {rt}", "warm_p99") is not None else f"{rt} -"
            for rt in ("asyncio", "uvloop"))
        bars.append(C.bar(f"sleep, warm: p99 lateness of the second {p['n'] // 1000}k burst in that "
                          "process (threads=2)", peers, "-" if zw is None else f"{zw:.2f} ms",
                          f"p99 <= {BAR_WARM_MS:g} ms", None if zw is None else zw <= BAR_WARM_MS))
    text = "### stranded work and cold sleep bursts\n\n" + "\n\n".join(parts)
    return {"text": text, "bars": bars}


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
