"""sync: channels, ping-pong and a contended lock, zokio against asyncio, uvloop, trio and aiologic.

* mpsc1: one producer task sends N integers into a bounded channel of
  capacity 1024, the main task receives all N.  zokio: ``zokio.sync.channel``;
  asyncio/uvloop: ``asyncio.Queue(1024)``; trio: ``open_memory_channel(1024)``.
  msgs/s.
* mpsc4: the same with four producer tasks sending N/4 each into one channel.
* pingpong: two tasks pass a message back and forth N times; round trips/s.
  zokio ``chan``: two channels of capacity 1; zokio ``oneshot``: each message
  is a fresh ``zokio.sync.oneshot()`` sender that carries the reply; zokio
  ``cell``: the same with the core's ``zokio.Oneshot`` cell (as in bench_misc);
  asyncio/uvloop: two ``asyncio.Queue(1)``; trio: two memory channels of
  capacity 1.
* mutex: 8 tasks each take one lock K times and yield once inside the
  critical section (``zokio.yield_now()``, ``asyncio.sleep(0)``,
  ``trio.sleep(0)``), so every acquisition after the first of a round finds
  the lock held and parks; acquisitions/s (8 x K in all).  zokio ``Lock`` and
  ``Mutex(value)``; ``asyncio.Lock``; ``trio.Lock``.  Each task checks that it
  is alone inside the critical section.
* xthread: producer and consumer on different threads, N messages through a
  bounded(1024) queue.  zokio: a producer task and the main task at
  threads=2 (the scheduler places them; and threads=1, where they share the
  one worker); a producer task on a second runtime of one worker, so each
  side has a thread of its own (the shape of the aiologic peer); and a plain
  thread calling ``send_blocking`` into a channel a task drains; peer:
  ``aiologic.Queue(1024)`` between two threads, each running its own asyncio
  (or uvloop) loop, ``async_put`` on one and ``async_get`` on the other.

N differs between runtimes (each table heading gives it) so that every timed
round lasts a fraction of a second: trio checkpoints on every send, receive
and acquire and moves fewer, zokio moves more.  Every zokio case runs at
threads=1 and threads=2 (the two-runtime case: one worker each).  The timed
region is inside the runtime: ``time.perf_counter()`` and
``time.process_time()`` (CPU time of the whole process, every thread) around
the work, after one untimed warm-up of N/10 in the same runtime; for
aiologic, from the barrier both loop threads pass before their first message
until both threads have exited.  ``CPU/msg`` is that process CPU time divided by
the messages (round trips, acquisitions); ``cores`` is CPU time over wall
time.  ``apart`` is the share of samples (one every 1024 messages, or every
64 round trips / acquisitions) in which the two sides ran on different OS
threads at the sampled moment: it tells whether a threads=2 figure measured
cross-thread hand-offs at all.

Rounds are interleaved: each round runs every case once, each in a fresh
process, and each table cell is the median over the rounds (the range over
the rounds is in parentheses).  Run alone: ``python bench/bench_sync.py``
(``--quick`` for a smoke run).
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

WORKLOAD = "sync"
SUBS = ("mpsc1", "mpsc4", "pingpong", "mutex", "xthread")
UNITS = {"mpsc1": "msgs/s", "mpsc4": "msgs/s", "pingpong": "round trips/s",
         "mutex": "acquisitions/s", "xthread": "msgs/s"}
PER_UNIT = {"mpsc1": "msg", "mpsc4": "msg", "pingpong": "round trip", "mutex": "acquisition",
            "xthread": "msg"}
TITLES = {
    "mpsc1": "mpsc 1 → 1, bounded 1024",
    "mpsc4": "mpsc 4 → 1, bounded 1024",
    "pingpong": "ping-pong between two tasks",
    "mutex": "contended lock: 8 tasks, a yield inside the critical section",
    "xthread": "producer and consumer on different threads, bounded 1024",
}
CAPACITY = 1024
PRODUCERS = {"mpsc1": 1, "mpsc4": 4}
LOCK_TASKS = 8
CHUNK = 1024  # messages between two thread samples (channels)
PP_CHUNK = 64  # round trips / acquisitions between two samples

get_ident = threading.get_ident


def sizes(quick: bool) -> dict[str, int]:
    # ~0.5 s per timed round at the asyncio peers' speed on these machines.
    full = {"mpsc1": 409_600, "mpsc4": 409_600, "pingpong": 51_200, "mutex": 65_536,
            "xthread": 204_800}
    if quick:
        return {k: v // 8 for k, v in full.items()}
    return full


# N per runtime, as a multiple of sizes(): every timed round should last
# ~0.2-1 s.  trio checkpoints on every send, receive and acquire (a full pass
# through its scheduler), so it moves fewer; zokio moves more.
SCALE = {("trio", "mpsc1"): 1 / 16, ("trio", "mpsc4"): 1 / 16, ("trio", "pingpong"): 1 / 4,
         ("trio", "mutex"): 1 / 4, ("zokio", "mpsc1"): 2, ("zokio", "mpsc4"): 2,
         ("zokio", "pingpong"): 4, ("zokio", "mutex"): 4, ("zokio", "xthread"): 2,
         # creating two oneshot channels per round trip dominates this row
         ("zokio", "pingpong", "oneshot"): 1}


def _rows(sub: str) -> list[tuple[str, str, dict]]:
    """(runtime, label, params) of every case of one sub-workload."""
    out: list[tuple[str, str, dict]] = []
    if sub in ("mpsc1", "mpsc4"):
        out += [("zokio", f"zokio threads={t}", {"threads": t}) for t in (1, 2)]
        out += [(rt, f"{rt} Queue" if rt != "trio" else "trio memory channel", {})
                for rt in ("asyncio", "uvloop", "trio")]
    elif sub == "pingpong":
        for v in ("chan", "oneshot", "cell"):
            out += [("zokio", f"zokio {v} threads={t}", {"threads": t, "variant": v}) for t in (1, 2)]
        out += [(rt, f"{rt} 2 Queues" if rt != "trio" else "trio 2 memory channels", {})
                for rt in ("asyncio", "uvloop", "trio")]
    elif sub == "mutex":
        for v in ("Lock", "Mutex"):
            out += [("zokio", f"zokio {v} threads={t}", {"threads": t, "variant": v}) for t in (1, 2)]
        out += [("asyncio", "asyncio.Lock", {}), ("uvloop", "asyncio.Lock on uvloop", {}),
                ("trio", "trio.Lock", {})]
    elif sub == "xthread":
        out += [("zokio", f"zokio tasks threads={t}", {"threads": t, "variant": "tasks"}) for t in (2, 1)]
        out += [("zokio", "zokio 2 runtimes × 1 thread, task → task", {"threads": 1, "variant": "runtimes"})]
        out += [("zokio", f"zokio plain thread → task threads={t}", {"threads": t, "variant": "thread"})
                for t in (1, 2)]
        out += [("aiologic", "aiologic.Queue, 2 threads × asyncio loop", {"loop": "asyncio"}),
                ("aiologic", "aiologic.Queue, 2 threads × uvloop loop", {"loop": "uvloop"})]
    return out


def cases(quick: bool = False, repeat: int | None = None) -> list[C.Case]:
    rounds = C.repeats(repeat, quick, full=5, fast=2)
    sz = sizes(quick)
    out = []
    for rnd in range(rounds):
        for sub in SUBS:
            for rt, label, extra in _rows(sub):
                scale = SCALE.get((rt, sub, extra.get("variant")), SCALE.get((rt, sub), 1))
                n = int(sz[sub] * scale)
                out.append(C.Case(WORKLOAD, rt, f"{sub}: {label}",
                                  {"sub": sub, "n": n, "round": rnd, "rounds": rounds, **extra},
                                  timeout=120))
    return out


# ------------------------------------------------------------------ helpers


def _apart(a: list[int], b: list[int]) -> float | None:
    k = min(len(a), len(b))
    if not k:
        return None
    return sum(1 for i in range(k) if a[i] != b[i]) / k


class _Clock:
    """Wall and process CPU time of one timed region."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


# ------------------------------------------------------------------ zokio


def _zokio_sync():
    zokio = C.require("zokio")
    try:
        import zokio.sync as zs
    except Exception as exc:
        raise C.Missing(f"zokio.sync: {type(exc).__name__}: {exc}") from None
    return zokio, zs


def _need(zs, *names):
    missing = [n for n in names if not hasattr(zs, n)]
    if missing:
        raise C.Missing("zokio.sync has no " + ", ".join(missing))


def _zokio_benches(zokio, zs, p, other):
    sub = p["sub"]

    async def producer(tx, n, ids):
        send = tx.send
        i = 0
        while i < n:
            ids.append(get_ident())
            for j in range(i, min(n, i + CHUNK)):
                await send(j)
            i += CHUNK

    async def consume(rx, n, ids):
        recv = rx.recv
        total = 0
        i = 0
        while i < n:
            ids.append(get_ident())
            for _ in range(min(CHUNK, n - i)):
                total += await recv()
            i += CHUNK
        return total

    async def mpsc(n):
        _need(zs, "channel")
        k = PRODUCERS.get(sub, 1)
        per = n // k
        tx, rx = zs.channel(CAPACITY)
        pids, cids = [], []
        with _Clock() as clk:
            hs = [zokio.spawn(producer(tx if i == 0 else tx.clone(), per, pids if i == 0 else []))
                  for i in range(k)]
            total = await consume(rx, per * k, cids)
            for h in hs:
                await h
        assert total == k * per * (per - 1) // 2, "messages lost or duplicated"
        return clk, _apart(pids, cids)

    async def pp_chan_ping(tx, rx, n, ids):
        send, recv = tx.send, rx.recv
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            await send(i)
            if await recv() != i:
                raise AssertionError("ping-pong out of order")

    async def pp_chan_pong(tx, rx, n, ids):
        send, recv = tx.send, rx.recv
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            await send(await recv())

    async def pp_once_ping(tx, n, ids):
        oneshot = zs.oneshot
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            rtx, rrx = oneshot()
            tx.send(rtx)
            tx = await rrx

    async def pp_once_pong(rx, n, ids):
        oneshot = zs.oneshot
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            rtx = await rx
            ntx, rx = oneshot()
            rtx.send(ntx)

    async def pp_cell_ping(cell, n, ids):
        Cell = zokio.Oneshot
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            reply = Cell()
            cell.set(reply)
            cell = await reply

    async def pp_cell_pong(cell, n, ids):
        Cell = zokio.Oneshot
        for i in range(n):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            reply = await cell
            cell = Cell()
            reply.set(cell)

    async def pingpong(n):
        a_ids, b_ids = [], []
        if p["variant"] == "cell":
            # Each cell holds the next one: keeping the first alive would keep
            # the whole chain of 2N cells, freed by one deep recursion at the end.
            first = zokio.Oneshot()
            with _Clock() as clk:
                a = zokio.spawn(pp_cell_pong(first, n, b_ids))
                b = zokio.spawn(pp_cell_ping(first, n, a_ids))
                del first
                await a
                await b
        elif p["variant"] == "chan":
            _need(zs, "channel")
            t1, r1 = zs.channel(1)
            t2, r2 = zs.channel(1)
            with _Clock() as clk:
                a = zokio.spawn(pp_chan_pong(t2, r1, n, b_ids))
                b = zokio.spawn(pp_chan_ping(t1, r2, n, a_ids))
                await a
                await b
        else:
            _need(zs, "oneshot")
            tx, rx = zs.oneshot()
            with _Clock() as clk:
                a = zokio.spawn(pp_once_pong(rx, n, b_ids))
                b = zokio.spawn(pp_once_ping(tx, n, a_ids))
                await a
                await b
        return clk, _apart(a_ids, b_ids)

    async def lock_worker(lock, k, state, ids):
        y = zokio.yield_now
        for i in range(k):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            async with lock:
                if state[0]:
                    raise AssertionError("two tasks inside the critical section")
                state[0] = 1
                await y()
                state[0] = 0
                state[1] += 1

    async def mutex_worker(m, k, ids):
        y = zokio.yield_now
        for i in range(k):
            if not i % PP_CHUNK:
                ids.append(get_ident())
            async with m as guard:
                v = guard.value
                await y()
                guard.value = v + 1

    async def mutex(n):
        k = n // LOCK_TASKS
        idss = [[] for _ in range(LOCK_TASKS)]
        if p["variant"] == "Lock":
            _need(zs, "Lock")
            lock, state = zs.Lock(), [0, 0]
            with _Clock() as clk:
                hs = [zokio.spawn(lock_worker(lock, k, state, idss[i])) for i in range(LOCK_TASKS)]
                for h in hs:
                    await h
            count = state[1]
        else:
            _need(zs, "Mutex")
            m = zs.Mutex(0)
            with _Clock() as clk:
                hs = [zokio.spawn(mutex_worker(m, k, idss[i])) for i in range(LOCK_TASKS)]
                for h in hs:
                    await h
            async with m as guard:
                count = guard.value
        assert count == k * LOCK_TASKS, f"lost updates: {count} != {k * LOCK_TASKS}"
        return clk, _apart(idss[0], idss[1])

    def plain_producer(tx, n, ids, start):
        start.wait()
        send = tx.send_blocking
        i = 0
        while i < n:
            ids.append(get_ident())
            for j in range(i, min(n, i + CHUNK)):
                send(j)
            i += CHUNK

    async def xthread(n):
        _need(zs, "channel")
        tx, rx = zs.channel(CAPACITY)
        pids, cids = [], []
        if p["variant"] == "tasks":
            with _Clock() as clk:
                h = zokio.spawn(producer(tx, n, pids))
                total = await consume(rx, n, cids)
                await h
        elif p["variant"] == "runtimes":
            # The producer is a task of a second runtime (its own worker
            # thread); its handle is checked by the caller, off the worker.
            with _Clock() as clk:
                h = other[0].spawn(producer(tx, n, pids))
                total = await consume(rx, n, cids)
            other.append(h)
        else:
            start = threading.Event()
            th = threading.Thread(target=plain_producer, args=(tx, n, pids, start))
            th.start()
            with _Clock() as clk:
                start.set()
                total = await consume(rx, n, cids)
            th.join()
        assert total == n * (n - 1) // 2, "messages lost or duplicated"
        return clk, _apart(pids, cids)

    return {"mpsc1": mpsc, "mpsc4": mpsc, "pingpong": pingpong, "mutex": mutex,
            "xthread": xthread}[sub]


def _zokio(p):
    zokio, zs = _zokio_sync()
    other = []
    if p.get("variant") == "runtimes":
        other.append(zokio.Runtime(threads=p["threads"]))
    fn = _zokio_benches(zokio, zs, p, other)
    rt = zokio.Runtime(threads=p["threads"])
    with rt:
        rt.block_on(fn(max(PP_CHUNK * LOCK_TASKS, p["n"] // 10)))
        clk, apart = rt.block_on(fn(p["n"]))
        for h in other[1:]:
            h.result()  # the producers of both rounds finished without error
        for o in other[:1]:
            o.shutdown()
        backend = None
        try:
            backend = rt.metrics().get("backend")
        except Exception:
            pass
    return clk, apart, {"backend": backend}


# ------------------------------------------------------------------ asyncio / uvloop


def _asyncio_benches(p):
    import asyncio

    sub = p["sub"]

    async def producer(q, n, ids):
        put = q.put
        i = 0
        while i < n:
            ids.append(get_ident())
            for j in range(i, min(n, i + CHUNK)):
                await put(j)
            i += CHUNK

    async def consume(q, n):
        get = q.get
        total = 0
        for _ in range(n):
            total += await get()
        return total

    async def mpsc(n):
        k = PRODUCERS[sub]
        per = n // k
        q = asyncio.Queue(CAPACITY)
        with _Clock() as clk:
            ts = [asyncio.create_task(producer(q, per, [])) for _ in range(k)]
            total = await consume(q, per * k)
            for t in ts:
                await t
        assert total == k * per * (per - 1) // 2
        return clk, None

    async def ping(q1, q2, n):
        put, get = q1.put, q2.get
        for i in range(n):
            await put(i)
            if await get() != i:
                raise AssertionError("ping-pong out of order")

    async def pong(q1, q2, n):
        put, get = q2.put, q1.get
        for _ in range(n):
            await put(await get())

    async def pingpong(n):
        q1, q2 = asyncio.Queue(1), asyncio.Queue(1)
        with _Clock() as clk:
            a = asyncio.create_task(pong(q1, q2, n))
            b = asyncio.create_task(ping(q1, q2, n))
            await a
            await b
        return clk, None

    async def lock_worker(lock, k, state):
        s = asyncio.sleep
        for _ in range(k):
            async with lock:
                if state[0]:
                    raise AssertionError("two tasks inside the critical section")
                state[0] = 1
                await s(0)
                state[0] = 0
                state[1] += 1

    async def mutex(n):
        k = n // LOCK_TASKS
        lock, state = asyncio.Lock(), [0, 0]
        with _Clock() as clk:
            ts = [asyncio.create_task(lock_worker(lock, k, state)) for _ in range(LOCK_TASKS)]
            for t in ts:
                await t
        assert state[1] == k * LOCK_TASKS
        return clk, None

    return {"mpsc1": mpsc, "mpsc4": mpsc, "pingpong": pingpong, "mutex": mutex}[sub]


def _asyncio(p):
    fn = _asyncio_benches(p)
    with C.asyncio_runner(p["runtime"]) as runner:
        runner.run(fn(max(PP_CHUNK * LOCK_TASKS, p["n"] // 10)))
        clk, apart = runner.run(fn(p["n"]))
    return clk, apart, {}


# ------------------------------------------------------------------ trio


def _trio_benches(trio, p):
    sub = p["sub"]

    async def producer(send, n):
        s = send.send
        for j in range(n):
            await s(j)

    async def mpsc(n):
        k = PRODUCERS[sub]
        per = n // k
        send, recv = trio.open_memory_channel(CAPACITY)
        total = 0
        with _Clock() as clk:
            async with trio.open_nursery() as nursery:
                for _ in range(k):
                    nursery.start_soon(producer, send, per)
                r = recv.receive
                for _ in range(per * k):
                    total += await r()
        assert total == k * per * (per - 1) // 2
        return clk, None

    async def ping(s1, r2, n):
        for i in range(n):
            await s1.send(i)
            if await r2.receive() != i:
                raise AssertionError("ping-pong out of order")

    async def pong(s2, r1, n):
        for _ in range(n):
            await s2.send(await r1.receive())

    async def pingpong(n):
        s1, r1 = trio.open_memory_channel(1)
        s2, r2 = trio.open_memory_channel(1)
        with _Clock() as clk:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pong, s2, r1, n)
                nursery.start_soon(ping, s1, r2, n)
        return clk, None

    async def lock_worker(lock, k, state):
        s = trio.sleep
        for _ in range(k):
            async with lock:
                if state[0]:
                    raise AssertionError("two tasks inside the critical section")
                state[0] = 1
                await s(0)
                state[0] = 0
                state[1] += 1

    async def mutex(n):
        k = n // LOCK_TASKS
        lock, state = trio.Lock(), [0, 0]
        with _Clock() as clk:
            async with trio.open_nursery() as nursery:
                for _ in range(LOCK_TASKS):
                    nursery.start_soon(lock_worker, lock, k, state)
        assert state[1] == k * LOCK_TASKS
        return clk, None

    return {"mpsc1": mpsc, "mpsc4": mpsc, "pingpong": pingpong, "mutex": mutex}[sub]


def _trio(p):
    trio = C.require("trio")
    fn = _trio_benches(trio, p)
    trio.run(fn, max(PP_CHUNK * LOCK_TASKS, p["n"] // 10))
    clk, apart = trio.run(fn, p["n"])
    return clk, apart, {}


# ------------------------------------------------------------------ aiologic


def _aiologic_once(aiologic, loop: str, n: int):
    """One aiologic.Queue(1024) transfer of n messages between two threads,
    each running its own event loop; returns (clock, apart)."""
    import asyncio

    q = aiologic.Queue(maxsize=CAPACITY)
    ready = threading.Barrier(3)
    pids, cids, out, errors = [], [], [0], []

    def runner():
        return C.asyncio_runner(loop)

    async def produce():
        put = q.async_put
        i = 0
        while i < n:
            pids.append(get_ident())
            for j in range(i, min(n, i + CHUNK)):
                await put(j)
            i += CHUNK

    async def consume():
        get = q.async_get
        total = 0
        i = 0
        while i < n:
            cids.append(get_ident())
            for _ in range(min(CHUNK, n - i)):
                total += await get()
            i += CHUNK
        out[0] = total

    def thread(coro_fn):
        try:
            with runner() as r:
                async def main():
                    ready.wait()  # the loop is up: start together
                    await coro_fn()
                r.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            ready.abort()

    ths = [threading.Thread(target=thread, args=(f,)) for f in (produce, consume)]
    for t in ths:
        t.start()
    ready.wait()
    with _Clock() as clk:
        for t in ths:
            t.join()
    if errors:
        raise errors[0]
    assert out[0] == n * (n - 1) // 2, "messages lost or duplicated"
    return clk, _apart(pids, cids)


def _aiologic(p):
    aiologic = C.require("aiologic")
    if p["loop"] == "uvloop":
        C.require("uvloop")
    _aiologic_once(aiologic, p["loop"], max(CHUNK, p["n"] // 10))
    clk, apart = _aiologic_once(aiologic, p["loop"], p["n"])
    return clk, apart, {"aiologic": C._version_of("aiologic")}


# ------------------------------------------------------------------ one case


def run_case(p):
    rt = p["runtime"]
    if rt == "zokio":
        clk, apart, extra = _zokio(p)
    elif rt in ("asyncio", "uvloop"):
        clk, apart, extra = _asyncio(p)
    elif rt == "trio":
        clk, apart, extra = _trio(p)
    elif rt == "aiologic":
        clk, apart, extra = _aiologic(p)
    else:
        raise ValueError(rt)
    n = p["n"]
    return {"rate": n / clk.wall, "elapsed": clk.wall, "cpu": clk.cpu,
            "cpu_us": clk.cpu / n * 1e6, "cores": clk.cpu / clk.wall, "apart": apart, **extra}


# ------------------------------------------------------------------ report


def _merged(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{sub: {label: result merged over the rounds}} in case order."""
    groups: dict[str, dict[str, list]] = {}
    for r in results:
        groups.setdefault(r["params"]["sub"], {}).setdefault(r["label"], []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for sub, bylab in groups.items():
        out[sub] = {}
        for lab, runs in bylab.items():
            m = C.merge_runs(runs)
            m["label"] = lab
            m["params"] = runs[0]["params"]
            out[sub][lab] = m
    return out


def _v(group: dict, lab: str, key: str = "rate"):
    m = group.get(lab)
    if not m or m.get("status") != "ok":
        return None
    return m.get(key)


def _range(m: dict, key: str) -> str:
    vals = [r[key] for r in m.get("procs", []) if r.get("status") == "ok" and r.get(key) is not None]
    if len(vals) < 2:
        return ""
    return f" ({C.fmt_num(min(vals))}–{C.fmt_num(max(vals))})"


def _base_label(sub: str) -> str:
    if sub == "mutex":
        return "asyncio.Lock"
    if sub == "pingpong":
        return "asyncio 2 Queues"
    if sub == "xthread":
        return "aiologic.Queue, 2 threads × asyncio loop"
    return "asyncio Queue"


def _best(group: dict, prefix: str, threads: int | None = None):
    vals = [(v, lab) for lab in group if lab.startswith(prefix)
            and (threads is None or lab.endswith(f"threads={threads}"))
            and (v := _v(group, lab)) is not None]
    return max(vals) if vals else (None, None)


NOTE = """\
CPU/msg is the process's CPU time (all threads) in the timed region divided by the
messages, round trips or acquisitions; `cores` is that CPU time per second of wall time.
`apart`: the share of samples in which the two sides ran on different OS threads.
`bg load`: cores used by other processes while the case ran (the worst of its rounds);
these machines have 2 cores shared with other work, so a row with a high figure competed
for them.

threads=1 against threads=2: one channel hand-off or lock handoff is a few hundred
nanoseconds of work, less than moving a task's wake-up to another worker (a parked
worker to unpark, cache lines to move). zokio's scheduler runs a task woken by another
task next on the waker's worker, so two tasks that pass messages tend to stay together
(`apart` mostly well below 50%; 0% for ping-pong) and the second worker adds little beyond
an occasional steal, which then costs CPU per message. Where the two sides really
are on different threads (the cross-thread rows) each message costs more CPU than on one
worker. More workers pay when the stages do work between messages (`examples/pipeline.py`)."""


def report(results: list[dict]) -> dict:
    merged = _merged(results)
    rounds = max((len(m.get("procs", [m])) for g in merged.values() for m in g.values()), default=1)
    parts, bars = [], []
    for sub, group in merged.items():
        base_lab = _base_label(sub)
        base = _v(group, f"{sub}: {base_lab}")
        rows = []
        for lab, m in group.items():
            name = lab.split(": ", 1)[1]
            cell = C.status_cell(m)
            if cell:
                why = m.get("error", "") if cell == "missing" else ""
                rows.append([name, cell + (f" ({why})" if why else ""), "-", "-", "-", "-", C.bg_cell(m)])
                continue
            ap = m.get("apart")
            rows.append([name, C.fmt_num(m["rate"]) + _range(m, "rate"),
                         C.fmt_ratio(C.ratio(m["rate"], base)),
                         f"{m['cpu_us']:.2f} µs" + _range(m, "cpu_us"),
                         f"{m['cores']:.2f}", "-" if ap is None else f"{ap * 100:.0f}%",
                         C.bg_cell(m)])
        by_rt: dict[str, set] = {}
        for m in group.values():
            by_rt.setdefault(m["runtime"], set()).add(m["params"]["n"])
        ns: dict[int, list[str]] = {}
        for m in group.values():
            rt, q = m["runtime"], m["params"]
            who = rt if len(by_rt[rt]) == 1 else f"{rt} {q.get('variant')}"
            ns.setdefault(q["n"], []).append(who)
        vs = "vs aiologic (asyncio)" if sub == "xthread" else "vs asyncio"
        head = ["runtime", UNITS[sub], vs, f"CPU / {PER_UNIT[sub]}", "cores", "apart", "bg load"]
        size = "; ".join(
            (f"{LOCK_TASKS} tasks × {n // LOCK_TASKS:,}" if sub == "mutex" else f"N={n:,}")
            + ("" if len(ns) == 1 else " for " + ", ".join(sorted(set(rts))))
            for n, rts in sorted(ns.items(), key=lambda kv: -kv[0]))
        parts.append(f"#### {TITLES[sub]} ({size})\n\n" + C.table(head, rows))
        bars.extend(_bars(sub, group, base_lab, base))
    text = (f"### sync: channels, ping-pong, contended lock (median of {rounds} interleaved"
            f" round(s); ranges over the rounds in parentheses)\n\n" + NOTE + "\n\n"
            + "\n\n".join(parts))
    return {"text": text, "bars": bars}


def _bars(sub: str, group: dict, base_lab: str, base) -> list[dict]:
    out = []

    def bar(title, zlab, z, need, extra=""):
        r = C.ratio(z, base)
        out.append(C.bar(title, f"{base_lab} {C.fmt_num(base, UNITS[sub])}",
                         f"{zlab}: {C.fmt_num(z)} ({C.fmt_ratio(r)}){extra}" if zlab else "-",
                         f">= {need:g}x {base_lab}", None if r is None else r >= need))

    if sub in ("mpsc1", "mpsc4"):
        z1 = _v(group, f"{sub}: zokio threads=1")
        z2 = _v(group, f"{sub}: zokio threads=2")
        bar(f"sync: {TITLES[sub]}, threads=1", "zokio threads=1" if z1 is not None else None, z1, 2,
            f"; threads=2: {C.fmt_num(z2)} ({C.fmt_ratio(C.ratio(z2, base))})")
    elif sub == "pingpong":
        # zokio.sync's channels only (the bar: "oneshot or mpsc"), not the core cell
        z, lab = max(_best(group, "pingpong: zokio chan"), _best(group, "pingpong: zokio oneshot"),
                     key=lambda t: -1 if t[0] is None else t[0])
        bar("sync: ping-pong round trips/s", lab and lab.split(": ", 1)[1], z, 3)
    elif sub == "mutex":
        z, lab = _best(group, "mutex: zokio Lock")
        bar("sync: contended lock, 8 tasks, yield inside", lab and lab.split(": ", 1)[1], z, 2)
    elif sub == "xthread":
        # Judged on both: the two tasks of one runtime at threads=2 (where the
        # scheduler decides how often they really are on different workers)
        # and the two single-worker runtimes (always on different threads).
        labs = ["zokio tasks threads=2", "zokio 2 runtimes × 1 thread, task → task"]
        vals = [(lab, _v(group, f"xthread: {lab}"), _v(group, f"xthread: {lab}", "apart"))
                for lab in labs]
        ok = [(lab, z, ap) for lab, z, ap in vals if z is not None]
        rs = [C.ratio(z, base) for _, z, _ in ok]
        text = "; ".join(f"{lab}: {C.fmt_num(z)} ({C.fmt_ratio(r)}"
                         + ("" if ap is None else f", apart {ap * 100:.0f}%") + ")"
                         for (lab, z, ap), r in zip(ok, rs))
        met = None if base is None or len(ok) < len(labs) else all(r >= 3 for r in rs)
        out.append(C.bar("sync: producer and consumer on different workers",
                         f"{base_lab} {C.fmt_num(base, UNITS[sub])}", text or "-",
                         f">= 3x {base_lab}", met))
    return out


if __name__ == "__main__":
    C.module_main(os.path.abspath(__file__), __doc__.splitlines()[0], cases, run_case, report)
