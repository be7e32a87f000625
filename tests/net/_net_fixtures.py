"""The fd-leak fixture of the zokio.net tests.

Each test module here imports ``no_fd_leak`` (an autouse fixture), so every
test runs under it: the set of open fds after the test (runtimes shut down,
garbage collected) must equal the set before it.  (It is not in a
tests/net/conftest.py: a second module named ``conftest`` would shadow
tests/conftest.py for the test files that import helpers from it.)
"""
from __future__ import annotations

import gc
import os
import time
import warnings

import pytest


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _describe(fds) -> list:
    out = []
    for fd in sorted(fds, key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd} -> ?")
    return out


@pytest.fixture(autouse=True)
def no_fd_leak():
    """Fail the test if it leaves an fd open (compares /proc/self/fd).

    Autouse fixtures are set up first and torn down last, so the runtimes
    of make_runtime are shut down before the comparison."""
    gc.collect()
    before = _open_fds()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        # listdir's own fd is gone by the time it returns
        extra = _open_fds() - before
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"fds left open by the test: {_describe(extra)}"
