"""A three-stage pipeline over zokio channels, run by one TaskGroup.

    source ──► N CPU workers ──► sink

* stage 1 (source): generates the items 0 .. items-1 and deals them round
  robin into one bounded channel per worker (back-pressure: it waits when a
  worker falls behind), then closes those channels;
* stage 2 (workers): each drains its channel with ``async for`` and runs
  ``crunch`` (pure-Python arithmetic, no awaits) on every item; on
  free-threaded CPython the workers' crunching runs on several worker threads
  at the same time;
* stage 3 (sink): one receiver collects every result from a channel all the
  workers send into, and checks that each item arrived exactly once.

The TaskGroup waits for all three stages; if any stage raised, the others
would be cancelled and the error would come out of the ``async with``.

    python examples/pipeline.py --threads 2 --items 1000 --workers 4
"""
import argparse
import os
import sys
import threading
import time

import zokio
from zokio.sync import channel

MASK = 0xFFFFFFFF


def crunch(item: int, work: int) -> int:
    """``work`` steps of a 32-bit linear congruential generator seeded by item."""
    x = item
    for _ in range(work):
        x = (x * 1103515245 + 12345) & MASK
    return x


async def source(items: int, outs) -> None:
    for i in range(items):
        await outs[i % len(outs)].send(i)
    for tx in outs:
        tx.close()  # each worker's `async for` ends once it has drained its channel


async def worker(rx, results, work: int) -> None:
    me = threading.get_ident()
    try:
        async for item in rx:
            await results.send((item, crunch(item, work), me))
    finally:
        results.close()  # this worker's sender is done


async def sink(rx, items: int, out: dict) -> None:
    seen = bytearray(items)
    checksum = 0
    threads: dict[int, int] = {}
    async for item, value, thread in rx:  # ends when every worker's sender is closed
        if seen[item]:
            raise RuntimeError(f"item {item} arrived twice")
        seen[item] = 1
        checksum = (checksum + value) & MASK
        threads[thread] = threads.get(thread, 0) + 1
    out["count"] = sum(seen)
    out["checksum"] = checksum
    out["threads"] = threads


async def pipeline(items: int, workers: int, work: int, depth: int) -> dict:
    chans = [channel(depth) for _ in range(workers)]
    results_tx, results_rx = channel(depth * workers)
    out: dict = {}
    async with zokio.TaskGroup() as tg:
        tg.spawn(source(items, [tx for tx, _ in chans]))
        for _, rx in chans:
            tg.spawn(worker(rx, results_tx.clone(), work))
        results_tx.close()  # only the workers' clones keep the results channel open
        tg.spawn(sink(results_rx, items, out))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="zokio worker threads")
    p.add_argument("--items", type=int, default=1000, help="items through the pipeline")
    p.add_argument("--workers", type=int, default=4, help="parallel CPU stages")
    p.add_argument("--work", type=int, default=5000, help="crunch steps per item")
    p.add_argument("--depth", type=int, default=16, help="capacity of each worker's channel")
    args = p.parse_args(argv)
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"pipeline: {args.items} items, {args.workers} CPU workers, {args.work} steps each, "
          f"threads={args.threads}, GIL enabled: {gil}")
    with zokio.Runtime(threads=args.threads) as rt:
        t0 = time.perf_counter()
        out = rt.block_on(pipeline(args.items, args.workers, args.work, args.depth))
        elapsed = time.perf_counter() - t0
    print(f"results: {out['count']} of {args.items}, each once")
    print(f"checksum: {out['checksum']:#010x}")
    print(f"crunched on {len(out['threads'])} thread(s): "
          + ", ".join(str(n) for n in sorted(out["threads"].values(), reverse=True)) + " items")
    print(f"throughput: {args.items / elapsed:,.0f} items/s ({elapsed:.2f} s)")
    return 0 if out["count"] == args.items else 1


if __name__ == "__main__":
    sys.exit(main())
