"""examples/pipeline.py moves every item through its three stages exactly once
and prints the checksum of the crunched values."""
import os
import re
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "pipeline.py")


def _expected(items: int, work: int) -> int:
    total = 0
    for item in range(items):
        x = item
        for _ in range(work):
            x = (1103515245 * x + 12345) % 2**32
        total += x
    return total % 2**32


def _run(tmp_path, *args: str) -> str:
    proc = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.timeout(180)
@pytest.mark.parametrize("threads,workers", [(1, 1), (2, 3), (4, 8)])
def test_pipeline_output_is_correct(tmp_path, threads, workers):
    items, work = 300, 200
    out = _run(tmp_path, "--threads", str(threads), "--items", str(items),
               "--workers", str(workers), "--work", str(work), "--depth", "4")
    assert f"results: {items} of {items}, each once" in out
    m = re.search(r"^checksum: (0x[0-9a-f]+)$", out, re.M)
    assert m, out
    assert int(m.group(1), 16) == _expected(items, work)
    m = re.search(r"^crunched on (\d+) thread\(s\): ([\d, ]+) items$", out, re.M)
    assert m, out
    assert 1 <= int(m.group(1)) <= threads
    assert sum(int(n) for n in m.group(2).split(",")) == items
    assert re.search(r"^throughput: [\d,]+ items/s", out, re.M), out


@pytest.mark.timeout(180)
def test_pipeline_with_fewer_items_than_workers(tmp_path):
    out = _run(tmp_path, "--threads", "2", "--items", "3", "--workers", "5", "--work", "10")
    assert "results: 3 of 3, each once" in out
    assert int(re.search(r"^checksum: (0x[0-9a-f]+)$", out, re.M).group(1), 16) == _expected(3, 10)
