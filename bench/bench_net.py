"""net: TCP echo and HTTP servers under load, zokio against asyncio, uvloop and C.

Every case is one server process under one load: the case's subprocess
starts the server (zokio: ``examples/echo_server.py`` / ``http_server.py``
with ``--threads N`` and ``ZOKIO_BACKEND``; asyncio and uvloop, protocol and
streams API: ``bench/net_peers.py``; the floor: ``bench/c/epoll_echo.c``),
waits for its ``port N`` line, runs the load generator against it on
127.0.0.1, and reads the server's CPU time (utime + stime of every thread,
``/proc/PID/stat``) at the start and the end of the measured window.

* echo: ``echo-load`` (``../shared/tools/echo-load.c``, or ``$ZOKIO_ECHO_LOAD_C``;
  compiled with gcc into a temporary directory, as is the C server): C
  connections each send S bytes, wait for all S back, repeat; 1 s of warm-up
  then the measured seconds.  req/s is round trips per second; CPU/req is the
  server's CPU time over the measured window divided by the round trips in it
  (the window is taken by the clock: CPU read 1 s after echo-load starts and
  again when it exits).
* http: ``wrk -t2 --latency`` (installed with apt-get when missing and the
  bench runs as root, else the cases report it missing): 1 s of untimed
  warm-up, then the measured run; CPU/req is the server's CPU over the
  measured run divided by the requests wrk counted; p99 from wrk's latency
  distribution.  ``/work?us=200`` does 200 us of pure-Python work per request
  (the loop count per us is calibrated once per run and given to every
  server, so all of them do the same work).
* idle: the client opens N connections to the echo server, one echo round
  trip on each (so each is accepted and its task parked in ``read(65536)``,
  or its protocol set up), then reads the server's RSS
  (``/proc/PID/smaps_rollup``); RSS growth / N, against a baseline taken after
  200 connections were opened, used and closed.

Rounds are interleaved (every server once per round, in the same order), and
each table cell is the median over the rounds.  On 2 cores the load generator
takes one core, so req/s of the faster servers is capped by the client: read
CPU/req.  Run alone: ``python bench/bench_net.py [--quick]``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "net"
EXAMPLES = os.path.join(C.REPO_DIR, "examples")
PEERS_PY = os.path.join(C.BENCH_DIR, "net_peers.py")
EPOLL_ECHO_C = os.path.join(C.BENCH_DIR, "c", "epoll_echo.c")
ECHO_LOAD_C = os.environ.get("ZOKIO_ECHO_LOAD_C") or os.path.normpath(
    os.path.join(C.REPO_DIR, "..", "shared", "tools", "echo-load.c"))
HZ = os.sysconf("SC_CLK_TCK")

# ------------------------------------------------------------------ servers
# (runtime, label, extra) ; extra says how to start it.

ZOKIO_SERVERS = [(f"zokio t={t} {b}", {"threads": t, "backend": b})
                 for b in ("io_uring", "epoll") for t in (1, 2)]
PEER_SERVERS = [(f"{loop} {api}", {"loop": loop, "api": api})
                for loop in ("uvloop", "asyncio") for api in ("protocol", "streams")]


def _servers(kind: str) -> list[tuple[str, str, dict]]:
    out = [("zokio", lab, ex) for lab, ex in ZOKIO_SERVERS]
    out += [(ex["loop"], lab, ex) for lab, ex in PEER_SERVERS]
    if kind == "echo":
        out.append(("c", "C epoll", {}))
    return out


# ------------------------------------------------------------------ tools

_TMP: list[str] = []


def _tmpdir() -> str:
    if not _TMP:
        d = tempfile.mkdtemp(prefix="zokio-bench-net-")
        atexit.register(shutil.rmtree, d, True)
        _TMP.append(d)
    return _TMP[0]


def compile_c(src: str, name: str) -> str | None:
    """Compile ``src`` with gcc -O2 into the temporary directory; None if that fails."""
    if not os.path.exists(src) or not shutil.which("gcc"):
        return None
    out = os.path.join(_tmpdir(), name)
    if not os.path.exists(out):
        r = subprocess.run(["gcc", "-O2", "-o", out, src], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"gcc {src} failed:\n{r.stderr}", file=sys.stderr)
            return None
    return out


def ensure_wrk() -> str | None:
    """wrk's path; installs Debian's package when missing and running as root."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        cmd = ["apt-get", "install", "-y", "-q", "wrk"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(cmd, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            subprocess.run(cmd, capture_output=True, env=env)
        path = shutil.which("wrk")
    if not path:
        print("wrk is not installed and could not be installed (apt-get install wrk): "
              "the http cases report it missing", file=sys.stderr)
    return path


def calibrate_loops(python: str) -> float | None:
    """The /work loop's iterations per microsecond, measured once for the whole run."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import http_server as h; "
            "print(h.calibrate())")
    try:
        r = subprocess.run([python, "-c", code, EXAMPLES], capture_output=True, text=True,
                           timeout=60, cwd=C.BENCH_DIR)
        return float(r.stdout.strip().splitlines()[-1])
    except Exception:
        return None


# ------------------------------------------------------------------ cases


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    rounds = C.repeats(repeat, quick, full=3, fast=1)
    python = os.environ.get("ZOKIO_BENCH_PYTHON") or sys.executable
    echo_load = compile_c(ECHO_LOAD_C, "echo-load")
    epoll_echo = compile_c(EPOLL_ECHO_C, "epoll_echo")
    wrk = ensure_wrk()
    loops = calibrate_loops(python)
    secs = 1.0 if quick else 3.0
    echo_cfgs = [(1024, 64), (102400, 4)] if quick else [
        (1024, 64), (10240, 4), (10240, 64), (102400, 4), (102400, 64)]
    http_cfgs = [("/", 100), ("/work?us=200", 100)] if quick else [
        ("/", 100), ("/", 1000), ("/work?us=200", 100)]
    idle_n = 2000 if quick else 10_000
    tools = {"echo_load": echo_load, "epoll_echo": epoll_echo, "wrk": wrk}
    out = []
    for rnd in range(rounds):
        for size, conns in echo_cfgs:
            for rt, lab, ex in _servers("echo"):
                out.append(C.Case(WORKLOAD, rt, lab, {
                    "test": "echo", "size": size, "conns": conns, "seconds": secs, "round": rnd,
                    **ex, **tools}, timeout=120))
        for path, conns in http_cfgs:
            for rt, lab, ex in _servers("http"):
                out.append(C.Case(WORKLOAD, rt, lab, {
                    "test": "http", "path": path, "conns": conns, "seconds": secs, "round": rnd,
                    "loops_per_us": loops, **ex, **tools}, timeout=120))
        for rt, lab, ex in _servers("echo"):
            if rt == "c":
                continue
            out.append(C.Case(WORKLOAD, rt, lab, {
                "test": "idle", "conns": idle_n, "round": rnd, **ex, **tools}, timeout=300))
    return out


# ------------------------------------------------------------------ one case


def _server_cmd(p: dict) -> tuple[list[str], dict]:
    python = sys.executable
    env = dict(os.environ)
    kind = "http" if p["test"] == "http" else "echo"
    if p["runtime"] == "zokio":
        C.require("zokio.net")
        env["ZOKIO_BACKEND"] = p["backend"]
        cmd = [python, os.path.join(EXAMPLES, f"{kind}_server.py"), "--port", "0",
               "--threads", str(p["threads"])]
    elif p["runtime"] in ("asyncio", "uvloop"):
        if p["runtime"] == "uvloop":
            C.require("uvloop")
        cmd = [python, PEERS_PY, "--loop", p["loop"], "--api", p["api"], "--kind", kind, "--port", "0"]
    elif p["runtime"] == "c":
        if not p.get("epoll_echo"):
            raise C.Missing("gcc could not build bench/c/epoll_echo.c")
        cmd = [p["epoll_echo"], "127.0.0.1", "0"]
    else:
        raise ValueError(p["runtime"])
    if kind == "http":
        cmd += ["--idle-timeout", "60"]
        if p.get("loops_per_us"):
            cmd += ["--loops-per-us", str(p["loops_per_us"])]
    return cmd, env


class Server:
    def __init__(self, p: dict):
        cmd, env = _server_cmd(p)
        self.errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errf, env=env,
                                     cwd=_tmpdir(), start_new_session=True)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"port (\d+)", line)
        if not m:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"server did not start: {line!r} {self.stderr()}")
        self.port = int(m.group(1))
        self.pid = self.proc.pid

    def stderr(self) -> str:
        self.errf.seek(0)
        return self.errf.read().decode(errors="replace")[-2000:]

    def cpu(self) -> float:
        """utime + stime of the whole server process (all threads), seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no Rss")

    def stop(self) -> int | None:
        """SIGTERM, then the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def _echo(p: dict, srv: Server) -> dict:
    if not p.get("echo_load"):
        raise C.Missing(f"echo-load could not be built from {ECHO_LOAD_C}")
    warm = 1
    cmd = [p["echo_load"], "-a", f"127.0.0.1:{srv.port}", "-c", str(p["conns"]),
           "-s", str(p["size"]), "-d", str(p["seconds"]), "-w", str(warm)]
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warm)
    c0 = srv.cpu()
    out, err = load.communicate(timeout=60)
    c1 = srv.cpu()
    res = json.loads(out.strip().splitlines()[-1])
    if res.get("errors"):
        raise RuntimeError(f"echo-load saw {res['errors']} errors: {err} {srv.stderr()}")
    reqs = res["requests"]
    return {"rps": res["rps"], "cpu_us": (c1 - c0) / reqs * 1e6 if reqs else None,
            "server_cores": (c1 - c0) / p["seconds"], "p99_us": res["p99_us"],
            "p50_us": res["p50_us"], "mib_s": res["mib_s"]}


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _wrk_latency(text: str, pct: str) -> float | None:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _http(p: dict, srv: Server) -> dict:
    if not p.get("wrk"):
        raise C.Missing("wrk is not installed (apt-get install wrk)")
    url = f"http://127.0.0.1:{srv.port}{p['path']}"
    threads = "2"
    base = [p["wrk"], "-t" + threads, f"-c{p['conns']}", "--timeout", "10s"]
    subprocess.run(base + ["-d1s", url], capture_output=True, timeout=60)  # warm-up
    c0 = srv.cpu()
    r = subprocess.run(base + ["--latency", f"-d{p['seconds']:g}s", url], capture_output=True,
                       text=True, timeout=120)
    c1 = srv.cpu()
    text = r.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    reqs = int(m.group(1))
    secs = float(m.group(2)) * (1e-3 if m.group(3) == "ms" else 1.0)
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors += sum(int(x) for x in se.groups())
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        errors += int(bad.group(1))
    return {"rps": reqs / secs, "cpu_us": (c1 - c0) / reqs * 1e6 if reqs else None,
            "server_cores": (c1 - c0) / secs, "p99_us": _wrk_latency(text, "99"),
            "p50_us": _wrk_latency(text, "50"), "errors": errors}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("echo round trip failed")
        socks.append(s)
    return socks


def _idle(p: dict, srv: Server) -> dict:
    _raise_nofile()
    n = p["conns"]
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < n + 100:
        raise C.Missing(f"RLIMIT_NOFILE {soft} is too low for {n} connections")
    for s in _open_idle(srv.port, 200):  # warm the server's allocators, then baseline
        s.close()
    time.sleep(0.5)
    r0 = srv.rss()
    socks = _open_idle(srv.port, n)
    time.sleep(1.0)
    r1 = srv.rss()
    for s in socks:
        s.close()
    return {"per_conn": (r1 - r0) / n, "rss_before": r0, "rss_after": r1}


def run_case(p: dict) -> dict:
    srv = Server(p)
    try:
        if p["test"] == "echo":
            res = _echo(p, srv)
        elif p["test"] == "http":
            res = _http(p, srv)
        else:
            res = _idle(p, srv)
    finally:
        status = srv.stop()
    res["exit_status"] = status
    if status not in (0, -signal.SIGTERM):
        res["server_stderr"] = srv.stderr()
    return res


# ------------------------------------------------------------------ report


def _key(r: dict) -> tuple:
    q = r["params"]
    if q["test"] == "echo":
        return ("echo", q["size"], q["conns"])
    if q["test"] == "http":
        return ("http", q["path"], q["conns"])
    return ("idle", q["conns"])


def _merged(results: list[dict]) -> dict[tuple, dict[str, dict]]:
    """{config key: {label: merged result over the rounds}} in first-seen order."""
    groups: dict[tuple, dict[str, list]] = {}
    for r in results:
        groups.setdefault(_key(r), {}).setdefault(r["label"], []).append(r)
    out = {}
    for k, bylab in groups.items():
        out[k] = {}
        for lab, runs in bylab.items():
            m = C.merge_runs(runs) if len(runs) > 1 else dict(runs[0])
            if len(runs) == 1:
                m["procs"] = runs
            m["label"] = lab
            out[k][lab] = m
    return out


def _lat(us: float) -> str:
    return f"{us:.0f} µs" if us < 10_000 else f"{us / 1000:.1f} ms"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def _cell(m: dict, key: str, fmt) -> str:
    cell = C.status_cell(m)
    if cell:
        return cell
    v = m.get(key)
    return "-" if v is None else fmt(v)


def _range(m: dict, key: str) -> str:
    vals = [r[key] for r in m.get("procs", []) if r.get("status") == "ok" and r.get(key) is not None]
    if len(vals) < 2:
        return ""
    return f" ({C.fmt_num(min(vals))}–{C.fmt_num(max(vals))})"


NOTE = """\
Servers: `zokio t=N BACKEND` is `examples/echo_server.py` / `examples/http_server.py`
with `--threads N` and `ZOKIO_BACKEND`; the asyncio and uvloop rows are `bench/net_peers.py`
(protocol API, and streams API with one task per connection), whose HTTP servers answer with
the same parser and routes as zokio's example; `C epoll` is `bench/c/epoll_echo.c`, one
thread. Loads: `echo-load` (closed loop: each connection sends S bytes and waits for them
back) and `wrk -t2` on 127.0.0.1. `server CPU / req` is the server process's user + system
time over the measured window divided by the requests served in it; `server cores` is that
CPU time per second. The load generator needs about one of the two cores, so req/s of the
faster servers is capped by the client: CPU per request is the figure that separates them.
`bg load`: cores used by processes other than the case, its server and its load generator.

threads=1 against threads=2: with the load generator on one of the two cores, one core is left
for the server. On the echo and hello rows a second worker thread then mostly adds cross-thread
wake-ups and stealing, so it tends to cost CPU per request rather than save it. The `/work`
rows are where a second thread can pay: each request holds its worker for 200 µs of Python,
and on the free-threaded interpreter two workers run that Python at the same time, as far as
the cores that wrk leaves allow; asyncio and uvloop run it on one thread whatever the machine."""


def report(results: list[dict]) -> dict:
    merged = _merged(results)
    rounds = max((len(m.get("procs", [m])) for g in merged.values() for m in g.values()), default=1)
    parts, bars = [], []
    for k, group in merged.items():
        if k[0] == "echo":
            title = f"echo {_size(k[1])} × {k[2]} connections (echo-load)"
        elif k[0] == "http":
            title = f"HTTP GET {k[1]}, wrk -t2 -c{k[2]}"
        else:
            title = f"idle memory: {k[1]:,} idle keep-alive connections (server RSS growth / connection)"
        rows = []
        for lab, m in group.items():
            if k[0] == "idle":
                rows.append([lab, _cell(m, "per_conn", lambda v: f"{v / 1000:.1f} KB"),
                             _cell(m, "rss_before", lambda v: f"{v / 2**20:.1f} MiB"),
                             _cell(m, "rss_after", lambda v: f"{v / 2**20:.1f} MiB"), C.bg_cell(m)])
            else:
                errs = sum(r.get("errors") or 0 for r in m.get("procs", [m]) if r.get("status") == "ok")
                rows.append([lab, _cell(m, "rps", C.fmt_num) + _range(m, "rps")
                             + (f" ({errs} wrk errors)" if errs else ""),
                             _cell(m, "cpu_us", lambda v: f"{v:.2f} µs") + _range(m, "cpu_us"),
                             _cell(m, "server_cores", lambda v: f"{v:.2f}"),
                             _cell(m, "p99_us", _lat), C.bg_cell(m)])
        head = (["server", "RSS / conn", "RSS before", "RSS after", "bg load"] if k[0] == "idle" else
                ["server", "req/s", "server CPU / req", "server cores", "p99", "bg load"])
        parts.append(f"#### {title}\n\n" + C.table(head, rows))
        bars.extend(_bars(k, group))
    text = (f"### net (median of {rounds} interleaved round(s); ranges over the rounds in"
            f" parentheses)\n\n" + NOTE + "\n\n" + "\n\n".join(parts))
    return {"text": text, "bars": bars}


def _v(group: dict, lab: str, key: str):
    m = group.get(lab)
    if not m or m.get("status") != "ok":
        return None
    return m.get(key)


def _best_zokio(group: dict, key: str, threads: int | None = None, lower: bool = True):
    vals = [(v, lab) for lab in group if lab.startswith("zokio")
            and (threads is None or lab.startswith(f"zokio t={threads} "))
            and (v := _v(group, lab, key)) is not None]
    if not vals:
        return None, None
    return (min if lower else max)(vals)


def _bars(k: tuple, group: dict) -> list[dict]:
    out = []
    if k == ("echo", 1024, 64):
        up, uc = _v(group, "uvloop protocol", "rps"), _v(group, "uvloop protocol", "cpu_us")
        zc, zl = _best_zokio(group, "cpu_us")
        zr = _v(group, zl, "rps") if zl else None
        met = None if None in (up, uc, zc, zr) else (zr >= up and zc <= uc)
        out.append(C.bar("net: echo 1 KiB × 64, req/s and CPU/req",
                         f"uvloop protocol {C.fmt_num(up)} req/s, {uc and f'{uc:.2f}'} µs",
                         f"{zl}: {C.fmt_num(zr)} req/s, {zc and f'{zc:.2f}'} µs" if zl else "-",
                         "req/s >= and CPU/req <= uvloop protocol", met))
    elif k[0] == "http" and k[1] == "/":
        uc = _v(group, "uvloop protocol", "cpu_us")
        zc, zl = _best_zokio(group, "cpu_us")
        out.append(C.bar(f"net: HTTP hello c={k[2]}, CPU/req", f"uvloop protocol {uc and f'{uc:.2f}'} µs",
                         f"{zl}: {zc:.2f} µs" if zl else "-", "<= 0.75x uvloop's",
                         None if None in (uc, zc) else zc <= 0.75 * uc))
        if k[2] == 1000:
            up99 = _v(group, "uvloop protocol", "p99_us")
            z99, zl99 = _best_zokio(group, "p99_us")
            out.append(C.bar("net: HTTP hello c=1000, p99", f"uvloop protocol {C.fmt_num(up99)} µs",
                             f"{zl99}: {C.fmt_num(z99)} µs" if zl99 else "-", "below uvloop's",
                             None if None in (up99, z99) else z99 < up99))
    elif k[0] == "http":
        ur = _v(group, "uvloop protocol", "rps")
        z2, l2 = _best_zokio(group, "rps", threads=2, lower=False)
        z1 = _v(group, l2.replace("t=2", "t=1"), "rps") if l2 else None
        met = None if None in (ur, z2, z1) else (z2 >= 1.7 * ur and z2 >= 1.7 * z1)
        out.append(C.bar(f"net: HTTP {k[1]} c={k[2]}, threads=2 req/s",
                         f"uvloop protocol {C.fmt_num(ur)}",
                         f"{l2}: {C.fmt_num(z2)} (t=1: {C.fmt_num(z1)})" if l2 else "-",
                         ">= 1.7x uvloop's and >= 1.7x zokio t=1", met))
    elif k[0] == "idle":
        up = _v(group, "uvloop protocol", "per_conn")
        z = [(lab, _v(group, lab, "per_conn")) for lab in group if lab.startswith("zokio")]
        z = [(lab, v) for lab, v in z if v is not None]
        worst = max((v for _, v in z), default=None)
        out.append(C.bar(f"net: RSS per idle connection ({k[1]:,})",
                         f"uvloop protocol {up / 1000:.1f} KB" if up is not None else "-",
                         ", ".join(f"{lab} {v / 1000:.1f} KB" for lab, v in z) or "-",
                         "<= 2 KB", None if worst is None else worst <= 2000))
    return out


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
