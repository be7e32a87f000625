"""Runtime lifecycle (issue 5): the thread cap, JoinHandle.result() on a
worker, a main task's own KeyboardInterrupt, bounded and shared shutdown(),
os.fork(), async generators, the monitor thread."""
from __future__ import annotations

import threading

import pytest

import zokio
from zokio import _runtime


# ---- Runtime(threads=...) cap ------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("threads", [1025, 2**40])
def test_threads_above_cap_raise_value_error_naming_the_cap(threads, util):
    with pytest.raises(ValueError, match="1024") as info:
        zokio.Runtime(threads=threads)
    assert "threads" in str(info.value)
    assert str(threads) in str(info.value)
    assert not util.zokio_threads()
    assert _runtime.MAX_THREADS == 1024


@pytest.mark.timeout(60)
def test_threads_at_cap_is_accepted(make_runtime, util):
    rt = make_runtime(1024)
    assert rt.threads == 1024
    workers = [t for t in util.zokio_threads() if t.name.startswith("zokio-worker")]
    assert len(workers) == 1024

    async def main():
        return threading.current_thread().name

    assert rt.block_on(main()).startswith("zokio-worker-")
