"""Shared machinery for zokio's benchmark scripts.

Every workload module (``bench_*.py``) follows the same shape:

* ``CASES`` / ``cases(opts)`` describes the cases: one runtime (zokio, asyncio,
  uvloop, trio, threading) with one set of parameters each;
* ``run_case(params)`` runs one case *in the current process* and returns a
  JSON-able dict;
* ``main()`` runs every case in a fresh subprocess (so one runtime's threads,
  allocator state or a crash cannot touch the next), prints a table and can
  write the raw results as JSON for ``run_all.py``.

Absolute numbers on the shared 2-core machines drift from run to run, so the
figures that matter are ratios between runtimes measured in the same run on
the same interpreter.  Each case reports the median of several repeats.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULT_MARK = "@@ZOKIO-BENCH-RESULT@@ "

PEERS = ("zokio", "asyncio", "uvloop", "trio")


# ---------------------------------------------------------------- exceptions


class Missing(Exception):
    """A runtime could not be imported: reported as missing, not as a crash."""


def require(name: str):
    """Import the runtime ``name`` or raise :class:`Missing`."""
    try:
        if name == "asyncio":
            import asyncio

            return asyncio
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken extension
        raise Missing(f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- statistics


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def percentile(sorted_xs: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in [0, 100])."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def spread(xs: list[float]) -> float:
    """(max - min) / median, a crude noise figure for a set of repeats."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


def rss_bytes() -> int:
    """Resident set size of this process, in bytes.

    ``/proc/self/smaps_rollup`` sums the page tables at the moment of reading;
    ``VmRSS`` in ``/proc/self/status`` is a per-thread cached counter that can
    lag by up to 64 pages per thread, so it is only the fallback.
    """
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read RSS")


# ---------------------------------------------------------------- machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version_of(mod: str) -> str:
    try:
        from importlib import metadata

        return metadata.version(mod)
    except Exception:
        return "missing"


def machine_info(python: str | None = None) -> dict[str, Any]:
    """Facts about the machine and the interpreter that the cases run on.

    The interpreter facts are read from ``python`` (a subprocess), so the
    parent may be any Python; the figures in the tables come from that one.
    """
    python = python or sys.executable
    probe = (
        "import json, sys, sysconfig, platform\n"
        "d = {'python': sys.version.split()[0], 'implementation': platform.python_implementation(),\n"
        "     'free_threaded_build': bool(sysconfig.get_config_var('Py_GIL_DISABLED')),\n"
        "     'gil_enabled_at_start': getattr(sys, '_is_gil_enabled', lambda: True)(),\n"
        "     'executable': sys.executable}\n"
        "from importlib import metadata\n"
        "for m in ('uvloop', 'trio', 'zokio', 'aiologic'):\n"
        "    try: d[m] = metadata.version(m)\n"
        "    except Exception: d[m] = 'missing'\n"
        "gil = {}\n"
        "for m in ('uvloop', 'trio', 'zokio', 'aiologic'):\n"
        "    try: __import__(m)\n"
        "    except Exception as e: gil[m] = 'import failed: %s' % e; continue\n"
        "    gil[m] = getattr(sys, '_is_gil_enabled', lambda: True)()\n"
        "d['gil_enabled_after_import'] = gil\n"
        "print(json.dumps(d))\n"
    )
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60,
                             cwd=BENCH_DIR)
        interp = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:  # pragma: no cover - reported, not fatal
        interp = {"error": repr(exc)}
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "kernel": platform.release(),
        "mem_total_gib": round(mem_total / 2**30, 1) if mem_total else None,
        **interp,
    }


def gil_state() -> bool | None:
    f = getattr(sys, "_is_gil_enabled", None)
    return f() if f else None


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One runtime/parameter combination of one workload."""

    workload: str
    runtime: str  # zokio | asyncio | uvloop | trio | threading
    label: str  # what the table shows, e.g. "zokio threads=2"
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 300.0
    procs: int = 1  # >1: run in this many fresh processes, report medians


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold the results of several processes of one case into one result:
    every numeric field becomes the median over the processes that succeeded."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        out = dict(runs[-1])
        out["procs"] = runs
        return out
    out = dict(ok[0])
    for k, v in ok[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
            out[k] = median(vals)
    out["wall"] = sum(r.get("wall", 0.0) for r in runs)
    out["procs"] = runs
    out["procs_ok"] = len(ok)
    return out


def run_case_subprocess(module_file: str, case: Case, python: str | None = None) -> dict[str, Any]:
    """Run ``case`` in a fresh interpreter; never raises.

    The result dict always has ``status``: ``ok``, ``missing``, ``error`` or
    ``timeout``.
    """
    python = python or os.environ.get("ZOKIO_BENCH_PYTHON") or sys.executable
    payload = json.dumps({"runtime": case.runtime, **case.params})
    cmd = [python, module_file, "--run-case", payload]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=case.timeout,
                              cwd=BENCH_DIR)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        return {"status": "timeout", "error": f"no result after {case.timeout:.0f} s",
                "stderr": tail[-2000:], "wall": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    if result is None:
        err = proc.stderr.strip().splitlines()
        return {"status": "error", "error": f"exit {proc.returncode}: " + (err[-1] if err else "no output"),
                "stderr": proc.stderr[-3000:], "wall": wall}
    result.setdefault("status", "ok")
    result["wall"] = wall
    if proc.stderr.strip() and result["status"] == "ok":
        result["stderr"] = proc.stderr[-1500:]
    return result


def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, total, steal) jiffies of the whole machine from /proc/stat.
    Steal (time the hypervisor gave our vCPUs to someone else) counts as
    busy too: for a case it is time it could not run."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    steal = parts[7] if len(parts) > 7 else 0
    return sum(parts) - idle, sum(parts), steal


def child_main(run_case: Callable[[dict[str, Any]], dict[str, Any]], payload: str) -> None:
    """Entry point of a case subprocess: run it and print one result line.

    Besides the case's own figures the result records ``other_cpu``: how many
    cores' worth of CPU the *rest of the machine* used while the case ran
    (machine busy time minus this process's CPU time, per second of wall
    time).  On a shared 2-core machine a value well above 0.1 means the case
    was competing with something else and its figure is suspect.  It
    includes ``steal_cpu``, recorded apart: the vCPU time the hypervisor
    took, which no process on this machine can see or avoid.
    """
    params = json.loads(payload)
    _CHILD_START[:] = [_cpu_jiffies(), os.times(), time.perf_counter()]
    try:
        res = run_case(params)
        res.setdefault("status", "ok")
    except Missing as exc:
        res = {"status": "missing", "error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - report everything
        traceback.print_exc()
        res = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    emit_and_exit(res)


_CHILD_START: list[Any] = []


def emit_and_exit(res: dict[str, Any]) -> None:
    """Print a case's result line and end the process at once.

    A case may call this itself from inside its runtime once it has its
    figures, when leaving the runtime cleanly would only cost time (e.g.
    cancelling 200k parked trio tasks)."""
    res.setdefault("status", "ok")
    res["gil_enabled_at_end"] = gil_state()
    j0, c0, w0 = _CHILD_START or (None, os.times(), time.perf_counter())
    j1, c1, w1 = _cpu_jiffies(), os.times(), time.perf_counter()
    if j0 and j1 and w1 - w0 > 0.3:  # jiffies are 10 ms: too coarse for short cases
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - j0[0]) / hz
        # The case's own CPU includes the children it waited for (a server
        # and a load generator it started), so that they are not counted as
        # other load.
        own = ((c1.user - c0.user) + (c1.system - c0.system)
               + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system))
        res["other_cpu"] = round(max(0.0, busy - own) / (w1 - w0), 3)
        res["own_cpu"] = round(own / (w1 - w0), 3)
        res["steal_cpu"] = round((j1[2] - j0[2]) / hz / (w1 - w0), 3)
    sys.stdout.write(RESULT_MARK + json.dumps(res) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a runtime with parked tasks or live threads
    # must not be able to hang or crash a finished measurement.
    os._exit(0)


# ---------------------------------------------------------------- runtimes


def asyncio_runner(runtime: str):
    """An ``asyncio.Runner`` on the stock loop or on uvloop."""
    import asyncio

    if runtime == "uvloop":
        uvloop = require("uvloop")
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def zokio_runtime(threads: int, **kw):
    zokio = require("zokio")
    return zokio, zokio.Runtime(threads=threads, **kw)


# ---------------------------------------------------------------- tables


def fmt_num(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x != x:  # nan
        return "nan"
    ax = abs(x)
    if ax >= 1e6:
        s = f"{x / 1e6:.2f}M"
    elif ax >= 1e4:
        s = f"{x / 1e3:.0f}k"
    elif ax >= 1e3:
        s = f"{x / 1e3:.1f}k"
    elif ax >= 100:
        s = f"{x:.0f}"
    elif ax >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + (f" {unit}" if unit else "")


def fmt_ratio(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.2f}x"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def bg_cell(res: dict[str, Any]) -> str:
    """Background load while the case ran (cores used by other processes)."""
    runs = res.get("procs", [res])
    vals = [r.get("other_cpu") for r in runs if r.get("other_cpu") is not None]
    if not vals:
        return "-"
    steal = max((r.get("steal_cpu") or 0.0 for r in runs), default=0.0)
    # steal is part of the other load; named when it is a visible share
    return f"{max(vals):.2f}" + (f" (steal {steal:.2f})" if steal >= 0.01 else "")


def status_cell(res: dict[str, Any]) -> str | None:
    """The table text for a case that did not produce a figure, else None."""
    st = res.get("status")
    if st == "ok":
        return None
    if st == "missing":
        return "missing"
    if st == "timeout":
        return "timeout"
    return "error"


# ---------------------------------------------------------------- CLI


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (smoke run)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per case (median is reported)")
    p.add_argument("--only", default=None,
                   help="comma-separated runtimes to run (zokio,asyncio,uvloop,trio,threading)")
    p.add_argument("--json", default=None, help="write the raw results to this file")
    p.add_argument("--run-case", default=None, help=argparse.SUPPRESS)
    return p


def machine_busy(interval: float = 0.5) -> float:
    """Cores' worth of CPU the whole machine used over the next ``interval`` s."""
    j0 = _cpu_jiffies()
    time.sleep(interval)
    j1 = _cpu_jiffies()
    if not j0 or not j1:
        return 0.0
    return (j1[0] - j0[0]) / os.sysconf("SC_CLK_TCK") / interval


def settle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait up to ``max_wait`` s for the machine to go (nearly) idle; returns
    the busy figure last seen.  ``ZOKIO_BENCH_SETTLE`` sets the default."""
    if max_wait <= 0:
        return -1.0
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy()
    return busy


def run_cases(module_file: str, cases: list[Case], only: str | None = None,
              verbose: bool = True) -> list[dict[str, Any]]:
    """Run each case in its own subprocess; returns results in case order."""
    keep = set(only.split(",")) if only else None
    max_wait = float(os.environ.get("ZOKIO_BENCH_SETTLE", "0") or 0)
    results = []
    for case in cases:
        if keep is not None and case.runtime not in keep:
            continue
        if max_wait > 0:
            settle(max_wait)
        if verbose:
            print(f"  [{case.workload}] {case.label} ...", end="", flush=True, file=sys.stderr)
        runs = [run_case_subprocess(module_file, case) for _ in range(max(1, case.procs))]
        res = runs[0] if len(runs) == 1 else merge_runs(runs)
        res["label"] = case.label
        res["runtime"] = case.runtime
        res["workload"] = case.workload
        res["params"] = case.params
        if verbose:
            extra = "" if res["status"] == "ok" else f" {res['status']}: {res.get('error', '')}"
            noise = res.get("other_cpu")
            steal = res.get("steal_cpu") or 0.0
            noise = (f" (other load {noise:.2f} cores" + (f", steal {steal:.2f}" if steal >= 0.01 else "")
                     + ")") if noise is not None else ""
            print(f" {res.get('wall', 0):.1f} s{noise}{extra}", file=sys.stderr, flush=True)
        results.append(res)
    return results


def write_json(path: str | None, obj: Any) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1, default=str)


def find(results: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    for r in results:
        if r.get("label") == label:
            return r
    return None


def value(results: list[dict[str, Any]], label: str, key: str) -> float | None:
    r = find(results, label)
    if r is None or r.get("status") != "ok":
        return None
    return r.get(key)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def module_main(module_file: str, description: str, cases_fn, run_case_fn, report_fn) -> None:
    """``main()`` of a workload module: run its cases, print its table."""
    args = base_parser(description).parse_args()
    if args.run_case is not None:
        child_main(run_case_fn, args.run_case)
        return
    print(f"python: {os.environ.get('ZOKIO_BENCH_PYTHON') or sys.executable}", file=sys.stderr)
    results = run_cases(module_file, cases_fn(quick=args.quick, repeat=args.repeat), args.only)
    rep = report_fn(results)
    print(rep["text"])
    for b in rep.get("bars", []):
        print(f"bar: {b['workload']}: zokio {b['zokio']} vs {b['peers']} -> {b['bar']}: "
              f"{'MET' if b['met'] else ('not met' if b['met'] is False else 'n/a')}")
    write_json(args.json, results)


def bar(workload: str, peers: str, zokio: str, bar_text: str, met: bool | None) -> dict[str, Any]:
    return {"workload": workload, "peers": peers, "zokio": zokio, "bar": bar_text, "met": met}


def repeats(repeat: int | None, quick: bool, full: int = 5, fast: int = 3) -> int:
    if repeat:
        return repeat
    return fast if quick else full
