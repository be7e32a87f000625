"""Cancellation, timeouts, intervals and the blocking pool."""
import time

import zokio


async def worker(log: list) -> None:
    try:
        while True:
            await zokio.sleep(0.05)
            log.append("tick")
    finally:
        log.append("cleaned up")  # runs on cancellation, may await too
        await zokio.sleep(0)


async def main() -> None:
    log: list = []
    h = zokio.spawn(worker(log))
    await zokio.sleep(0.12)
    h.cancel()
    try:
        await h
    except zokio.Cancelled:
        print("worker cancelled:", log)

    try:
        async with zokio.timeout(0.05):
            await zokio.sleep(10)
    except TimeoutError as e:
        print("timeout:", e)

    # Blocking calls belong on the blocking pool, not on a worker.
    slept = await zokio.spawn_blocking(lambda: (time.sleep(0.02), "done")[1])
    print("blocking pool:", slept)

    n = 0
    async for deadline in zokio.interval(0.02):
        n += 1
        if n == 3:
            print("three ticks, last due at", round(deadline, 3))
            break


if __name__ == "__main__":
    zokio.run(main(), threads=2)
