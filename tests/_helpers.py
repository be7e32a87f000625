"""Helpers shared by the test modules."""
import time


def settled(rt, timeout=5.0):
    """metrics() once every task has been accounted as finished (a joiner is
    woken just before its task is counted as completed)."""
    deadline = time.monotonic() + timeout
    while True:
        m = rt.metrics()
        if m["tasks_live"] == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.002)
