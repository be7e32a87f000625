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


@pytest.mark.timeout(90)
def test_grep_finds_what_a_plain_search_finds(tmp_path):
    # A tree with nested directories, a binary file, an empty file, a file
    # too big for one read, and matches spread over many files.
    import random
    import re
    rnd = random.Random(7)
    words = ["alpha", "beta", "gamma", "needle", "Needle", "delta"]
    for d in range(4):
        sub = tmp_path / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(15):
            lines = [" ".join(rnd.choice(words) for _ in range(5)) for _ in range(rnd.randint(0, 40))]
            (sub / f"f{f}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "big.txt").write_text(("x" * 1000 + "\n") * 300 + "needle at the end\n")
    (tmp_path / "bin.dat").write_bytes(b"\0needle\n" * 10)
    (tmp_path / "empty.txt").write_text("")

    expect = set()
    pat = re.compile("needle")
    for dirpath, _, files in os.walk(tmp_path):
        for name in files:
            p = os.path.join(dirpath, name)
            data = open(p, "rb").read()
            if b"\0" in data[:8192]:
                continue
            for n, line in enumerate(data.decode().splitlines(), 1):
                if pat.search(line):
                    expect.add(f"{p}:{n}:{line}")
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "grep.py"), "needle", str(tmp_path),
         "--threads", "2", "--searchers", "4"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.splitlines()
    assert len(got) == len(set(got)) and set(got) == expect
    assert f"{len(expect)} matching lines in 63 files" in proc.stderr
