"""The programs in examples/ run and print what they promise."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(name: str) -> str:
    env = dict(os.environ)
    # Import the installed zokio, not the source tree next to the examples.
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name)],
        capture_output=True, text=True, timeout=60, cwd="/", env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(90)
def test_hello():
    assert _run("hello.py").strip() == str([i * 2 for i in range(10)])


@pytest.mark.timeout(90)
def test_cancel_and_timeout():
    out = _run("cancel_and_timeout.py")
    line = next(l for l in out.splitlines() if l.startswith("worker cancelled:"))
    log = eval(line.split(":", 1)[1])  # the list the example printed
    assert log[-1] == "cleaned up" and log[:-1] and set(log[:-1]) == {"tick"}
    assert "timeout: timed out after 0.05 s" in out
    assert "blocking pool: done" in out
    assert "three ticks" in out


@pytest.mark.timeout(90)
def test_parallel_cpu_runs():
    out = _run("parallel_cpu.py")
    assert "threads=1:" in out and "threads=2:" in out
