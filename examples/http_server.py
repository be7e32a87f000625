"""An HTTP/1.1 server written in Python on zokio.net.

    python examples/http_server.py --threads 2 --port 8080

Routes:

* ``GET /``           -> ``Hello, world!``
* ``GET /work?us=N``  -> N microseconds of pure-Python CPU work, then a short
  answer (the loop count per microsecond is calibrated at start-up, or given
  with ``--loops-per-us`` so that several servers do the same work);
* ``POST /echo``      -> the request body;
* anything else       -> 404 (405 for ``/`` with another method).

HTTP/1.1 as a client expects it: persistent connections (HTTP/1.0 only with
``Connection: keep-alive``), pipelined requests answered in order (every
complete request in one read is answered with one write), ``Content-Length``
request bodies, ``400`` for a malformed request, ``431`` when the head is
larger than ``--max-head`` bytes, ``413`` when the body is larger than
``--max-body`` bytes, ``501`` for ``Transfer-Encoding`` bodies.  A connection
on which no byte arrives for ``--idle-timeout`` seconds is closed
(``zokio.timeout`` around each read).  After an error answer the server shuts
its write side down and drains what the client still sends for a moment
before closing, so the client reads the answer instead of a reset.

Prints ``port N`` on stdout once it listens (``--port 0`` picks a free port).
Ctrl-C or SIGTERM stops it; the exit status is then 0.  The soft descriptor
limit is raised to the hard one at start-up, for 10,000+ connections.
"""
from __future__ import annotations

import argparse
import resource
import signal
import socket
import sys
import time

import zokio
from zokio.net import TcpListener, UnixStream

READ_SIZE = 65536

# ------------------------------------------------------------------ answers

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Content Too Large", 431: b"Request Header Fields Too Large",
           501: b"Not Implemented"}


def response(status: int, body: bytes, connection: bytes | None = None) -> bytes:
    """A whole answer: status line, Content-Length, Content-Type, body."""
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n" % (
        status, REASONS[status], len(body))
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    return head + b"\r\n" + body


HELLO_BODY = b"Hello, world!\n"
HELLO = response(200, HELLO_BODY)
HELLO_CLOSE = response(200, HELLO_BODY, b"close")
HELLO_KEEP_ALIVE = response(200, HELLO_BODY, b"keep-alive")  # to an HTTP/1.0 client


class HttpError(Exception):
    """A request the server answers with an error status and then closes."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status

    def answer(self) -> bytes:
        return response(self.status, str(self).encode() + b"\n", b"close")


# ------------------------------------------------------------------ parsing


def parse_head(head: bytes, max_body: int) -> tuple[bytes, bytes, bool, int, bytes | None]:
    """Parse a request head (without its final blank line).

    Returns (method, target, keep_alive, content_length, connection header to
    echo or None); raises HttpError for what the server refuses.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        keep, echo_conn = True, None
    elif version == b"HTTP/1.0":
        keep, echo_conn = False, None
    else:
        raise HttpError(400, "unsupported HTTP version")
    if not method.isalpha() or not method.isupper():
        raise HttpError(400, "malformed method")
    if target[:1] != b"/":
        if target[:7].lower() == b"http://" and target.count(b"/") >= 3:  # absolute form
            target = b"/" + target.split(b"/", 3)[3]
        elif not (target == b"*" and method == b"OPTIONS"):
            raise HttpError(400, "malformed request target")
    length = -1
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1] in b" \t" or name[0] in b" \t":
            # no colon, empty name, whitespace around the name (or obsolete line folding)
            raise HttpError(400, "malformed header line")
        lname = name.lower()
        if lname == b"content-length":
            value = value.strip()
            if not value.isdigit():
                raise HttpError(400, "malformed Content-Length")
            n = int(value)
            if length >= 0 and n != length:
                raise HttpError(400, "conflicting Content-Length headers")
            length = n
        elif lname == b"connection":
            value = value.lower()
            if b"close" in value:
                keep, echo_conn = False, None
            elif b"keep-alive" in value and version == b"HTTP/1.0":
                keep, echo_conn = True, b"keep-alive"
        elif lname == b"transfer-encoding":
            raise HttpError(501, "Transfer-Encoding request bodies are not supported")
    if length > max_body:
        raise HttpError(413, f"request body over {max_body} bytes")
    return method, target, keep, (length if length > 0 else 0), echo_conn


# ------------------------------------------------------------------ routes

LOOPS_PER_US = 1.0  # set by calibrate() or --loops-per-us


def spin(loops: int) -> int:
    """Pure-Python CPU work: the interpreter runs every iteration."""
    x = 0
    for i in range(loops):
        x += i
    return x


def calibrate() -> float:
    """Loop iterations of spin() per microsecond on this machine: the fastest of
    many short tries, so that a busy machine's preemptions are left out."""
    n = 20_000
    best = float("inf")
    for _ in range(50):
        t0 = time.perf_counter()
        spin(n)
        best = min(best, time.perf_counter() - t0)
    return n / (best * 1e6)


def work(target: bytes, keep: bool, echo_conn: bytes | None) -> bytes:
    _, _, query = target.partition(b"?")
    us = None
    for item in query.split(b"&"):
        key, _, val = item.partition(b"=")
        if key == b"us":
            if not val.isdigit() or int(val) > 10_000_000:
                raise HttpError(400, "us must be an integer from 0 to 10000000")
            us = int(val)
    if us is None:
        raise HttpError(400, "missing us=N")
    spin(int(us * LOOPS_PER_US))
    return response(200, b"worked %d us\n" % us, b"close" if not keep else echo_conn)


def route(method: bytes, target: bytes, body: bytes, keep: bool, echo_conn: bytes | None) -> bytes:
    if target == b"/":
        if method == b"GET":
            if keep:
                return HELLO if echo_conn is None else HELLO_KEEP_ALIVE
            return HELLO_CLOSE
        return response(405, b"only GET here\n", None if keep else b"close")
    conn = echo_conn if keep else b"close"
    if target == b"/work" or target.startswith(b"/work?"):
        if method != b"GET":
            return response(405, b"only GET here\n", conn)
        return work(target, keep, echo_conn)
    if target == b"/echo":
        if method != b"POST":
            return response(405, b"only POST here\n", conn)
        return response(200, body, conn)
    return response(404, b"no such route\n", conn)


# ------------------------------------------------------------------ connections


class Limits:
    def __init__(self, max_head: int, max_body: int, idle: float):
        self.max_head, self.max_body, self.idle = max_head, max_body, idle


async def linger_close(stream) -> None:
    """After an error answer: stop sending, drain the client's bytes for a moment,
    so that closing with unread data does not reset the answer away."""
    try:
        await stream.shutdown()
        async with zokio.timeout(1.0):
            drained = 0
            while drained < 1 << 20:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                drained += len(data)
    except (OSError, TimeoutError):
        pass


async def handle(stream, limits: Limits) -> None:
    read, write_all, timeout = stream.read, stream.write_all, zokio.timeout
    max_head, max_body, idle = limits.max_head, limits.max_body, limits.idle
    buf = b""  # bytes received and not yet consumed by a request
    try:
        async with stream:
            while True:
                try:
                    async with timeout(idle):
                        data = await read(READ_SIZE)
                except TimeoutError:
                    return  # idle connection: close it
                if not data:
                    return  # the client closed
                buf = buf + data if buf else data
                # Answer every complete request in the buffer, in order, in one write.
                out = []
                pos = 0
                done = False  # close after writing `out`
                error = None
                while True:
                    end = buf.find(b"\r\n\r\n", pos)
                    if end < 0:  # no complete head yet
                        if len(buf) - pos > max_head:
                            error = HttpError(431, f"request head over {max_head} bytes")
                        break
                    if end - pos > max_head:
                        error = HttpError(431, f"request head over {max_head} bytes")
                        break
                    try:
                        method, target, keep, length, echo_conn = parse_head(buf[pos:end], max_body)
                    except HttpError as e:
                        error = e
                        break
                    start = end + 4
                    if length:
                        if len(buf) - start < length:
                            break  # the body is still arriving: read more, then parse again
                        body = buf[start:start + length]
                        pos = start + length
                    else:
                        body = b""
                        pos = start
                    try:
                        out.append(route(method, target, body, keep, echo_conn))
                    except HttpError as e:
                        error = e
                        break
                    if not keep:
                        done = True
                        break
                if error is not None:
                    out.append(error.answer())
                if out:
                    await write_all(out[0] if len(out) == 1 else b"".join(out))
                if error is not None:
                    await linger_close(stream)
                    return
                if done:
                    return
                buf = buf[pos:] if pos < len(buf) else b""
    except OSError:
        pass  # reset by the client, or the stream was closed under us


async def accept_loop(listener, limits: Limits) -> None:
    spawn = zokio.spawn
    async for stream, _address in listener:
        spawn(handle(stream, limits))


async def serve(host: str, port: int, limits: Limits, stop_signal: socket.socket) -> None:
    async with TcpListener.bind(host, port) as listener:
        print(f"port {listener.local_address[1]}", flush=True)
        acceptor = zokio.spawn(accept_loop(listener, limits))
        async with UnixStream.from_socket(stop_signal) as stop:
            await stop.read(1)  # SIGINT or SIGTERM arrived
        acceptor.cancel()


def stop_signal_sockets() -> tuple[socket.socket, socket.socket]:
    """Two connected sockets; the first becomes readable when SIGINT or SIGTERM arrives.

    The interpreter's C-level handler writes the signal number to the wakeup
    fd at once, whichever thread it interrupts; a task reading the other end
    then ends the server.  (Letting KeyboardInterrupt out of the main thread's
    wait in block_on is not enough on the free-threaded 3.13 build: with
    other threads attached, the waiting main thread may not be woken to run
    the Python handler.)"""
    receive, send = socket.socketpair()
    send.setblocking(False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    return receive, send


def raise_fd_limit() -> None:
    """Many connections need many descriptors: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    global LOOPS_PER_US
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: one per CPU)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--max-head", type=int, default=8192, help="bytes (default 8192)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="bytes (default 1 MiB)")
    p.add_argument("--loops-per-us", type=float, default=None,
                   help="iterations of the /work loop per microsecond (default: calibrate)")
    args = p.parse_args(argv)
    LOOPS_PER_US = args.loops_per_us or calibrate()
    print(f"/work loop: {LOOPS_PER_US:.2f} iterations per us", file=sys.stderr, flush=True)
    raise_fd_limit()
    limits = Limits(args.max_head, args.max_body, args.idle_timeout)
    receive, send = stop_signal_sockets()
    rt = zokio.Runtime(threads=args.threads)
    try:
        rt.block_on(serve(args.host, args.port, limits, receive))
    finally:
        rt.shutdown(timeout=10)
        signal.set_wakeup_fd(-1)
        send.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
