"""Shared fixtures of zokio's test suite.

The suite runs twice, with ``ZOKIO_BACKEND=io_uring`` and ``ZOKIO_BACKEND=epoll``
(tox.ini); ``Runtime(backend="auto")`` honours the variable and every runtime
made through the ``make_runtime`` fixture asserts it did.

Which zokio is tested: the *installed* one.  ``python -m pytest`` run from the
repository root puts the root on ``sys.path`` and would import the source
tree's ``zokio/`` package, which has no compiled ``_native`` module; in that
case this file drops the source tree from ``sys.path`` and imports the
installed copy instead (an in-place build, ``zokio/_native*.so`` in the
tree, is used as it is).
"""
from __future__ import annotations

import gc
import importlib
import os
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent


def _import_zokio():
    try:
        import zokio._native  # noqa: F401
        return
    except ImportError:
        pass
    # The source tree shadowed the installed package: forget it and retry.
    for name in [m for m in sys.modules if m == "zokio" or m.startswith("zokio.")]:
        del sys.modules[name]

    def is_repo(p: str) -> bool:
        try:
            return Path(p or os.getcwd()).resolve() == _REPO
        except OSError:
            return False

    sys.path[:] = [p for p in sys.path if not is_repo(p)]
    importlib.invalidate_caches()
    import zokio._native  # noqa: F401,F811  (raises if zokio is not installed)


_import_zokio()

import zokio  # noqa: E402

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
BACKEND_ENV = os.environ.get("ZOKIO_BACKEND") or None
_KNOWN_BACKENDS = {"io_uring": "io_uring", "uring": "io_uring", "iouring": "io_uring",
                   "epoll": "epoll"}

# Test files of this suite: each of their tests must carry an explicit
# @pytest.mark.timeout(n).  (test_port.py, test_run_queue.py and
# test_timer_wheel.py have their own owners and conventions.)
_OWN_FILES = {
    "test_runtime.py", "test_task.py", "test_time.py", "test_blocking.py",
    "test_cancel.py", "test_concurrency.py", "test_io_ops.py", "test_errors.py",
    "test_gil.py", "test_runtime_lifecycle.py", "test_modules.py",
}


def pytest_collection_modifyitems(config, items):
    missing = [it.nodeid for it in items
               if Path(str(it.fspath)).name in _OWN_FILES
               and it.get_closest_marker("timeout") is None]
    if missing:
        raise pytest.UsageError("tests without @pytest.mark.timeout(n): " + ", ".join(missing))


def pytest_report_header(config):
    native = sys.modules["zokio._native"]
    return [
        f"zokio: {zokio.__file__} (native {os.path.basename(native.__file__)})",
        f"ZOKIO_BACKEND={BACKEND_ENV!r}  free-threaded={FREE_THREADED}  "
        f"io_uring available={native.uring_available()}",
    ]


# ---- helpers ----------------------------------------------------------------

def expected_backend():
    """The backend Runtime(backend="auto") must pick under ZOKIO_BACKEND, or None."""
    if BACKEND_ENV is None:
        return None
    return _KNOWN_BACKENDS.get(BACKEND_ENV.lower())


def zokio_threads():
    """Live threads started by zokio (workers and blocking pool)."""
    return [t for t in threading.enumerate() if t.name.startswith("zokio-")]


def open_fds():
    """The set of open file descriptors of this process."""
    return set(os.listdir("/proc/self/fd"))


def fd_details(fds):
    out = []
    for fd in sorted(fds, key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd} -> ?")
    return out


def wait_for(predicate, timeout=5.0, interval=0.002):
    """Poll `predicate` from a plain thread until true or `timeout`; returns
    its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def subprocess_env():
    """Environment for a child interpreter that imports the same zokio as
    this process (and not the source tree)."""
    env = dict(os.environ)
    pkg_parent = str(Path(zokio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHON_GIL", None)
    return env


# ---- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def _backend_env_is_valid():
    """A ZOKIO_BACKEND this suite does not know would silently test 'auto'."""
    if BACKEND_ENV is not None and BACKEND_ENV.lower() not in _KNOWN_BACKENDS and BACKEND_ENV != "auto":
        pytest.fail(f"unknown ZOKIO_BACKEND={BACKEND_ENV!r}")
    if expected_backend() == "io_uring" and not zokio._native.uring_available():
        pytest.fail("ZOKIO_BACKEND=io_uring but io_uring is not usable on this machine")
    yield


@pytest.fixture
def make_runtime():
    """Factory: make_runtime(threads=2, **options) -> Runtime.  Every runtime
    is shut down at teardown, after which no zokio thread may be alive."""
    made = []

    def factory(threads=2, **options):
        rt = zokio.Runtime(threads=threads, **options)
        made.append(rt)
        want = expected_backend()
        if options.get("backend", "auto") == "auto" and want is not None:
            assert rt.backend == want, f"ZOKIO_BACKEND={BACKEND_ENV} but runtime uses {rt.backend}"
        assert rt.backend in ("io_uring", "epoll")
        return rt

    yield factory
    for rt in made:
        rt.shutdown(timeout=10)

    def mine_alive():
        return [t.name for rt in made for t in getattr(rt, "_threads", ())
                + list(getattr(rt, "_blocking_threads", ())) if t.is_alive()]

    ok = wait_for(lambda: not mine_alive(), timeout=5)
    if not ok:
        alive = mine_alive()
        # Keep later tests isolated: force a real shutdown of any runtime
        # whose shutdown() returned without stopping its threads, then fail.
        for rt in made:
            if any(t.is_alive() for t in getattr(rt, "_threads", ())):
                rt._closed = False
                rt.shutdown(timeout=10)
        pytest.fail(f"zokio threads still alive after shutdown: {alive}")


@pytest.fixture(autouse=True)
def _no_leaked_runtime():
    """A test that fails before shutting down a Runtime it made directly must
    not leave workers running into the next tests: shut it down here (using
    zokio's registry of live runtimes) and report the leak."""
    yield
    registry = getattr(sys.modules.get("zokio._runtime"), "_owners", None)
    if not registry:
        return
    leaked = []
    for ref in list(registry.values()):
        rt = ref()
        if rt is not None and not rt.closed:
            leaked.append(repr(rt))
            rt.shutdown(timeout=10)
    if leaked:
        pytest.fail(f"test left runtimes running: {leaked}")


@pytest.fixture
def rt(make_runtime):
    """A 2-worker runtime."""
    return make_runtime(2)


@pytest.fixture
def rt1(make_runtime):
    """A 1-worker runtime (deterministic interleavings)."""
    return make_runtime(1)


@pytest.fixture
def fd_snapshot():
    """fd_snapshot() -> set of open fds; call before and after."""
    gc.collect()
    return open_fds


@pytest.fixture
def util():
    """The helpers of this file, for tests (conftest is not importable under
    --import-mode=importlib)."""
    import types
    return types.SimpleNamespace(
        zokio_threads=zokio_threads, open_fds=open_fds, fd_details=fd_details,
        wait_for=wait_for, subprocess_env=subprocess_env,
        expected_backend=expected_backend, free_threaded=FREE_THREADED,
    )
