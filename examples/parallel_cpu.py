"""CPU-bound Python in tasks runs on several cores at once on free-threaded
CPython (3.13t): compare threads=1 with threads=2."""
import sys
import time

import zokio


def crunch(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def task(n: int) -> int:
    return crunch(n)


async def main(n: int) -> None:
    handles = [zokio.spawn(task(n)) for _ in range(8)]
    for h in handles:
        await h


if __name__ == "__main__":
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"GIL enabled: {gil}")
    for threads in (1, 2):
        with zokio.Runtime(threads=threads) as rt:
            t0 = time.perf_counter()
            rt.block_on(main(2_000_000))
            print(f"threads={threads}: {time.perf_counter() - t0:.2f} s")
