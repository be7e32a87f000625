"""Spawn tasks, join them, sleep: the smallest zokio program."""
import zokio


async def work(n: int) -> int:
    await zokio.sleep(0.01)
    return n * 2


async def main() -> list[int]:
    handles = [zokio.spawn(work(i), name=f"work-{i}") for i in range(10)]
    return [await h for h in handles]


if __name__ == "__main__":
    print(zokio.run(main(), threads=2))
