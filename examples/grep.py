"""A parallel grep: search a directory tree for a regular expression.

    python examples/grep.py PATTERN [ROOT] [--threads N] [--searchers K] [-i]

One task walks the tree (directory listings on the blocking pool) and sends
file paths into a bounded channel; K searcher tasks take paths from it, read
each file with zokio.fs (native io_uring reads; the blocking pool on epoll)
and match it line by line -- pure Python work that runs on several worker
threads at once on a free-threaded interpreter.  Matches go through a second
channel to one printer, so lines never interleave.  Output lines are
``path:line-number:line``, sorted per file, files in the order they finish.
Binary files (a NUL byte in the first 8 KiB) are skipped, as grep does.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import zokio
import zokio.fs
from zokio import sync


async def walk(root: str, paths: sync.Sender) -> int:
    """Send every regular file under root; returns how many."""
    count = 0
    stack = [root]
    try:
        while stack:
            directory = stack.pop()
            try:
                entries = await zokio.fs.scandir(directory)
            except OSError as e:
                print(f"grep: {e}", file=sys.stderr)
                continue
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    await paths.send(entry.path)
                    count += 1
    finally:
        paths.close()
    return count


def search(data: bytes, pattern: re.Pattern) -> list:
    if b"\0" in data[:8192]:
        return []
    text = data.decode("utf-8", errors="replace")
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]


async def searcher(paths: sync.Receiver, matches: sync.Sender, pattern: re.Pattern) -> None:
    try:
        async for path in paths:
            try:
                data = await zokio.fs.read_bytes(path)
            except OSError as e:
                print(f"grep: {e}", file=sys.stderr)
                continue
            found = search(data, pattern)
            if found:
                await matches.send((path, found))
    finally:
        matches.close()


async def printer(matches: sync.Receiver, out) -> int:
    lines = 0
    async for path, found in matches:
        for n, line in found:
            out.write(f"{path}:{n}:{line}\n")
        lines += len(found)
    return lines


async def grep(pattern: re.Pattern, root: str, searchers: int, out) -> tuple[int, int]:
    paths_tx, paths_rx = sync.channel(256)
    matches_tx, matches_rx = sync.channel(256)
    async with zokio.TaskGroup() as tg:
        walker = tg.spawn(walk(root, paths_tx))
        for _ in range(searchers):
            tg.spawn(searcher(paths_rx, matches_tx.clone(), pattern))
        matches_tx.close()
        shown = tg.spawn(printer(matches_rx, out))
    return await walker, await shown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pattern")
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: cores)")
    ap.add_argument("--searchers", type=int, default=8, help="searcher tasks")
    ap.add_argument("-i", "--ignore-case", action="store_true")
    args = ap.parse_args(argv)
    pattern = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    t0 = time.perf_counter()
    files, lines = zokio.run(grep(pattern, args.root, args.searchers, sys.stdout),
                             threads=args.threads)
    sys.stdout.flush()
    print(f"{lines} matching lines in {files} files, {time.perf_counter() - t0:.3f} s",
          file=sys.stderr)
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
