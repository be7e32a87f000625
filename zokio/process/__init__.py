"""zokio.process: child processes with pipes on the completion port.

``child = await zokio.process.spawn([...], stdout=PIPE)``, then
``await child.stdout.read()`` and ``await child.wait()``; or
``await zokio.process.run([...], capture_output=True, timeout=5)`` like
``subprocess.run``.  Exit is observed through a pidfd (no SIGCHLD handler,
no reaper thread per child); see ``_child.py``.
"""
from ._child import (
    DEVNULL,
    PIPE,
    STDOUT,
    CalledProcessError,
    Child,
    CompletedProcess,
    TimeoutExpired,
    run,
    spawn,
)
from ._pipe import PipeReader, PipeWriter

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CalledProcessError",
    "Child",
    "CompletedProcess",
    "PipeReader",
    "PipeWriter",
    "TimeoutExpired",
    "run",
    "spawn",
]
