"""Short stress run: a two-thread runtime and 20k tasks that wake one another.

The full stress suite lands here later; `scripts/tox.sh run -e stress` runs
whatever this directory holds, once per completion port.
"""
import zokio

N = 20_000


def test_chain_of_tasks_each_woken_by_the_previous_one():
    runs = [0] * N  # slot i is written only by task i

    async def link(i, prev):
        if prev is not None:
            assert await prev == i - 1  # woken when task i-1 completes
        await zokio.yield_now()
        runs[i] += 1
        return i

    async def main():
        prev = None
        for i in range(N):
            prev = zokio.spawn(link(i, prev))
            if i % 64 == 0:
                await zokio.yield_now()  # let the workers start on the chain
        return await prev

    with zokio.Runtime(threads=2) as rt:
        assert rt.block_on(main()) == N - 1
    assert runs == [1] * N


def test_tasks_spawned_from_tasks_fan_in():
    runs = [0] * N

    async def leaf(i):
        await zokio.yield_now()
        runs[i] += 1
        return i

    async def branch(b):
        handles = [zokio.spawn(leaf(b * 100 + j)) for j in range(100)]
        return sum([await h for h in handles])

    async def main():
        handles = [zokio.spawn(branch(b)) for b in range(N // 100)]
        return sum([await h for h in handles])

    with zokio.Runtime(threads=2) as rt:
        assert rt.block_on(main()) == sum(range(N))
    assert runs == [1] * N
