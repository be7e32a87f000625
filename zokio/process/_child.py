"""Child processes: spawn, wait through a pidfd, pipes on the port.

Waiting.  Each child gets a pidfd (``pidfd_open``, Linux 5.3) right after
it is forked.  ``wait()`` awaits the pidfd's readability with a POLL op on
the worker's completion port, then reaps with ``waitpid(WNOHANG)``: no
SIGCHLD handler, no thread per child, and several tasks may wait on one
child at once (one reaps, under the child's lock; the others read the code).
Signals go through ``pidfd_send_signal``, so a pid reused after the child
was reaped can never be signalled by mistake.

No zombies.  A ``Child`` that is garbage before it was reaped (its waiting
task was cancelled and nobody else kept it) hands its pidfd to the orphan
reaper: one daemon thread, started on first use, that polls every orphan's
pidfd and reaps each as it exits.  ``kill_on_drop=True`` also kills it.

Spawning itself is ``subprocess.Popen`` (fork/exec, ``cwd``, ``env``,
``close_fds`` and the rest behave exactly as there); zokio makes the pipes
(non-blocking on the parent's side only) and never calls ``Popen.wait``.
"""
from __future__ import annotations

import os
import select
import signal as _signal
import subprocess
import threading
from typing import Any, Optional, Sequence, Union

from .._api import sleep as _sleep
from .._api import spawn as _spawn
from .._api import timeout as _timeout
from .._native import op_poll
from ._pipe import PipeReader, PipeWriter

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

CompletedProcess = subprocess.CompletedProcess
CalledProcessError = subprocess.CalledProcessError
TimeoutExpired = subprocess.TimeoutExpired

_POLLIN = select.POLLIN


class Child:
    """A running (or finished) child process.  Made by ``spawn``."""

    __slots__ = ("_popen", "_pidfd", "_lock", "args", "pid", "stdin", "stdout", "stderr",
                 "_kill_on_drop", "__weakref__")

    def __init__(self, popen: subprocess.Popen, pidfd: int, stdin: Optional[PipeWriter],
                 stdout: Optional[PipeReader], stderr: Optional[PipeReader],
                 kill_on_drop: bool) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self._lock = threading.Lock()
        self.args = popen.args
        self.pid: int = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._kill_on_drop = kill_on_drop

    def __repr__(self) -> str:
        rc = self.returncode
        state = "running" if rc is None else f"returncode={rc}"
        return f"<zokio.process.Child pid={self.pid} {state}>"

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once reaped (``-N`` for a child killed by signal
        N), else None.  Updated by ``wait()`` / ``try_wait()``."""
        return self._popen.returncode

    def _reap(self) -> Optional[int]:
        """waitpid(WNOHANG) under the lock; the code, or None if running."""
        with self._lock:
            rc = self._popen.returncode
            if rc is not None:
                return rc
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped behind our back (os.wait() elsewhere): the code is lost.
                self._popen.returncode = rc = 255
                self._close_pidfd()
                return rc
            if pid == 0:
                return None
            self._popen.returncode = rc = os.waitstatus_to_exitcode(status)
            self._close_pidfd()
            return rc

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)

    def try_wait(self) -> Optional[int]:
        """The exit code if the child has exited (reaping it), else None.
        Never blocks."""
        return self._reap()

    async def wait(self) -> int:
        """Wait for the child to exit and return its exit code.  Closes
        nothing: read the pipes first (or use ``communicate``) if the child
        may fill them.  Cancel-safe: the child keeps running and can be
        waited for again."""
        while True:
            rc = self._reap()
            if rc is not None:
                return rc
            with self._lock:
                pidfd = self._pidfd
            if pidfd < 0:
                # Handed to the orphan reaper (a cancelled run()): it reaps
                # the child and stores the code; look again shortly.
                await _sleep(0.005)
                continue
            # A pidfd polls readable once the process has exited.  The lock
            # is not held across the await: the fd stays open until the
            # child is reaped, and only _reap (under the lock) closes it.
            await op_poll(pidfd, _POLLIN)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (through its pidfd).  Does nothing once
        the child has been reaped."""
        with self._lock:
            if self._popen.returncode is not None or self._pidfd < 0:
                return
            try:
                _signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass  # exited, not yet reaped

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(_signal.SIGKILL)

    async def communicate(self, input: Optional[bytes] = None) -> tuple[Optional[bytes],
                                                                         Optional[bytes]]:
        """Write ``input`` to stdin (then close it), read stdout and stderr
        to their end, wait for the child; returns ``(stdout, stderr)`` (None
        for a stream that is not a pipe).  The three run concurrently, so a
        child filling one pipe while the other is being written never
        deadlocks.  Cancelled, it cancels its readers and writer (data read
        so far is lost) and leaves the child running."""
        if input is not None and self.stdin is None:
            raise ValueError("communicate(input=...) needs stdin=PIPE")
        jobs = []
        if self.stdin is not None:
            jobs.append(_spawn(_feed(self.stdin, input)))
        out_job = _spawn(self.stdout.read()) if self.stdout is not None else None
        err_job = _spawn(self.stderr.read()) if self.stderr is not None else None
        jobs += [j for j in (out_job, err_job) if j is not None]
        try:
            for j in jobs:
                await j
        except BaseException:
            for j in jobs:
                j.cancel()
            for j in jobs:
                try:
                    await j
                except BaseException:
                    pass
            raise
        out = await out_job if out_job is not None else None
        err = await err_job if err_job is not None else None
        for end in (self.stdout, self.stderr):
            if end is not None:
                end.close()
        await self.wait()
        return out, err

    async def __aenter__(self) -> "Child":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Close the pipes and wait for the child (kill it first if the
        block raised)."""
        for end in (self.stdin, self.stdout, self.stderr):
            if end is not None:
                end.close()
        if exc[0] is not None:
            self.kill()
        await self.wait()

    def __del__(self) -> None:
        popen = getattr(self, "_popen", None)
        if popen is None or popen.returncode is not None:
            return
        try:
            if self._kill_on_drop:
                self.kill()
            _orphans.adopt(self)
        except Exception:
            pass  # interpreter teardown


async def _feed(stdin: PipeWriter, data: Optional[bytes]) -> None:
    try:
        if data:
            await stdin.write_all(data)
    except BrokenPipeError:
        pass  # the child stopped reading: what it did not take is dropped
    finally:
        stdin.close()


class _OrphanReaper:
    """One daemon thread that reaps children nobody waits for any more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Any] = {}   # pidfd -> (pid, popen)
        self._poll = select.poll()
        self._wake_r = self._wake_w = -1
        self._thread: Optional[threading.Thread] = None

    def adopt(self, child: Child) -> None:
        with child._lock:
            pidfd, child._pidfd = child._pidfd, -1
        if pidfd < 0:
            return
        with self._lock:
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                self._poll.register(self._wake_r, _POLLIN)
                # Not "zokio-...": that prefix names a runtime's own threads.
                self._thread = threading.Thread(target=self._run, name="zokio.process.reaper",
                                                daemon=True)
                self._thread.start()
            self._pending[pidfd] = (child.pid, child._popen)
            self._poll.register(pidfd, _POLLIN)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    entry = self._pending.pop(fd, None)
                    if entry is not None:
                        self._poll.unregister(fd)
                if entry is None:
                    continue
                pid, popen = entry
                try:
                    _, status = os.waitpid(pid, 0)
                    popen.returncode = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    popen.returncode = 255
                os.close(fd)


_orphans = _OrphanReaper()


def _after_fork_in_child() -> None:
    # The reaper thread and the parent's children are the parent's.
    global _orphans
    old, _orphans = _orphans, _OrphanReaper()
    for fd in [old._wake_r, old._wake_w, *old._pending]:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)

_Stream = Union[None, int, Any]


def _child_end(spec: _Stream, readable_by_child: bool) -> tuple[Any, int]:
    """(what Popen gets, the parent's fd or -1) for one of stdin/out/err."""
    if spec == PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        if readable_by_child:
            os.set_blocking(w, False)
            return r, w
        os.set_blocking(r, False)
        return w, r
    return spec, -1


async def spawn(args: Union[str, bytes, os.PathLike, Sequence[Any]], *,
                stdin: _Stream = None, stdout: _Stream = None, stderr: _Stream = None,
                kill_on_drop: bool = False, **popen_kwargs: Any) -> Child:
    """Start a child process.  ``stdin``/``stdout``/``stderr``: ``PIPE`` (a
    zokio pipe end on the Child), ``DEVNULL``, ``None`` (inherit), an fd or
    a file object; ``stderr=STDOUT`` merges it into stdout.  Other keyword
    arguments go to ``subprocess.Popen`` (``cwd``, ``env``, ``shell``,
    ``start_new_session``, ...) except the text-mode ones: the pipes carry
    bytes.  ``kill_on_drop=True``: a Child that becomes garbage before it
    was waited for is killed (it is reaped either way)."""
    for bad in ("text", "universal_newlines", "encoding", "errors"):
        if popen_kwargs.get(bad):
            raise ValueError(f"zokio.process pipes carry bytes: {bad}= is not supported")
    if popen_kwargs.get("bufsize", -1) not in (-1, 0):
        raise ValueError("zokio.process pipes are unbuffered: bufsize= is not supported")
    popen_kwargs.pop("bufsize", None)
    ends: list[tuple[Any, int]] = []
    try:
        for spec, readable in ((stdin, True), (stdout, False), (stderr, False)):
            if spec == STDOUT and readable:
                raise ValueError("STDOUT is only valid for stderr")
            ends.append(_child_end(spec, readable))
        (c_in, p_in), (c_out, p_out), (c_err, p_err) = ends
        popen = subprocess.Popen(args, stdin=c_in, stdout=c_out, stderr=c_err, **popen_kwargs)
    except BaseException:
        for child_end, parent_fd in ends:
            if parent_fd >= 0:
                os.close(parent_fd)
                os.close(child_end)
        raise
    for child_end, parent_fd in ends:
        if parent_fd >= 0:
            os.close(child_end)
    try:
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        # Cannot happen for our own unreaped child short of fd exhaustion:
        # do not leave it unwaited.
        popen.kill()
        popen.wait()
        for fd in (p_in, p_out, p_err):
            if fd >= 0:
                os.close(fd)
        raise
    return Child(popen, pidfd,
                 PipeWriter(p_in, "stdin") if p_in >= 0 else None,
                 PipeReader(p_out, "stdout") if p_out >= 0 else None,
                 PipeReader(p_err, "stderr") if p_err >= 0 else None,
                 kill_on_drop)


async def run(args: Union[str, bytes, os.PathLike, Sequence[Any]], *,
              input: Optional[bytes] = None, capture_output: bool = False,
              timeout: Optional[float] = None, check: bool = False,
              stdin: _Stream = None, stdout: _Stream = None, stderr: _Stream = None,
              **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command to completion, like ``subprocess.run``: returns a
    ``CompletedProcess``; ``check=True`` raises ``CalledProcessError`` on a
    non-zero exit; ``timeout`` kills the child, reaps it and raises
    ``TimeoutExpired``.  Cancelled, the child is killed and reaped too."""
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output")
        stdout = stderr = PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used")
        stdin = PIPE
    child = await spawn(args, stdin=stdin, stdout=stdout, stderr=stderr, **popen_kwargs)
    try:
        async with _timeout(timeout):
            out, err = await child.communicate(input)
    except TimeoutError:
        await _kill_and_reap(child)
        raise TimeoutExpired(child.args, timeout) from None
    except BaseException:
        await _kill_and_reap(child)
        raise
    rc = child.returncode
    assert rc is not None
    if check and rc:
        raise CalledProcessError(rc, child.args, out, err)
    return CompletedProcess(child.args, rc, out, err)


async def _kill_and_reap(child: Child) -> None:
    for end in (child.stdin, child.stdout, child.stderr):
        if end is not None:
            end.close()
    child.kill()
    try:
        await child.wait()
    except BaseException:
        # Cancelled while reaping: the orphan reaper finishes the job.
        _orphans.adopt(child)
        raise
