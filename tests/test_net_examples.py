"""examples/echo_server.py and examples/http_server.py, run as servers and driven over loopback.

Each test starts the example in a subprocess of the interpreter running the
suite (so both interpreters are covered), with the suite's ZOKIO_BACKEND
(so both completion ports are), on 127.0.0.1 port 0; the example prints the
port it bound.  Plain blocking sockets with timeouts are the clients.
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
IO_TIMEOUT = 15.0


class Server:
    def __init__(self, tmp_path, name: str, *args: str):
        self.errpath = tmp_path / f"{name}.stderr"
        self.errf = open(self.errpath, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, name), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.errf, cwd=tmp_path, env=dict(os.environ))
        line = self.proc.stdout.readline().decode()
        assert line.startswith("port "), f"no port line: {line!r}\n{self.stderr()}"
        self.port = int(line.split()[1])

    def stderr(self) -> str:
        if not self.errf.closed:
            self.errf.flush()
        return self.errpath.read_text(errors="replace")

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        s.settimeout(IO_TIMEOUT)
        return s

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.errf.close()


@pytest.fixture
def start(tmp_path):
    servers = []

    def _start(name: str, *args: str) -> Server:
        s = Server(tmp_path, name, *args)
        servers.append(s)
        return s

    yield _start
    for s in servers:
        s.kill()


def recv_exact(s: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = s.recv(min(n - got, 1 << 20))
        assert b, f"EOF after {got} of {n} bytes"
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_response(f) -> tuple[int, dict, bytes] | None:
    """One HTTP response from a binary file over the socket; None at EOF."""
    status = f.readline()
    if not status:
        return None
    version, code, _reason = status.rstrip(b"\r\n").split(b" ", 2)
    assert version == b"HTTP/1.1", status
    headers = {}
    while True:
        line = f.readline()
        assert line, "EOF inside a response head"
        if line == b"\r\n":
            break
        k, v = line.split(b":", 1)
        headers[k.strip().lower().decode()] = v.strip().decode()
    body = f.read(int(headers["content-length"]))
    return int(code), headers, body


def at_eof(s: socket.socket) -> bool:
    """True when the server has closed (EOF or reset), waiting up to IO_TIMEOUT."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


# ------------------------------------------------------------------ echo


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_echo_round_trips(start, threads):
    srv = start("echo_server.py", "--threads", threads)
    conns = [srv.connect() for _ in range(20)]
    for size in (1, 1000, 65536, 1 << 20):
        for i, c in enumerate(conns[:4] if size > 65536 else conns):
            data = bytes((i + j) % 251 for j in range(size))
            c.sendall(data)
            assert recv_exact(c, size) == data
    # all connections at once: send on each, then read each back
    for i, c in enumerate(conns):
        c.sendall(b"conn %d" % i)
    for i, c in enumerate(conns):
        assert recv_exact(c, len(b"conn %d" % i)) == b"conn %d" % i
    # a client that half-closes gets its bytes back, then EOF
    c = conns[0]
    c.sendall(b"last words")
    c.shutdown(socket.SHUT_WR)
    assert recv_exact(c, 10) == b"last words"
    assert at_eof(c)
    for c in conns:
        c.close()


@pytest.mark.timeout(60)
def test_echo_releases_descriptors(start):
    srv = start("echo_server.py", "--threads", "2")
    c = srv.connect()  # let the server finish starting up
    c.sendall(b"x")
    assert recv_exact(c, 1) == b"x"
    c.close()
    time.sleep(0.2)
    base = srv.fds()
    conns = [srv.connect() for _ in range(50)]
    for c in conns:
        c.sendall(b"ping")
        assert recv_exact(c, 4) == b"ping"
    assert srv.fds() >= base + 50
    for i, c in enumerate(conns):
        if i % 2:  # half of them reset instead of closing cleanly
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    deadline = time.monotonic() + 10
    while srv.fds() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.fds() <= base
    assert srv.stop() == 0
    assert "Traceback" not in srv.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["echo_server.py", "http_server.py"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_clean_shutdown(start, name, sig):
    srv = start(name, "--threads", "2")
    c = srv.connect()
    if name == "echo_server.py":
        c.sendall(b"hi")
        assert recv_exact(c, 2) == b"hi"
    else:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(c.makefile("rb"))[0] == 200
    assert srv.stop(sig) == 0  # with a connection still open, its task parked in read
    assert at_eof(c)
    err = srv.stderr()
    assert "Traceback" not in err, err
    c.close()


# ------------------------------------------------------------------ http


@pytest.fixture
def http(start):
    return start("http_server.py", "--threads", "2", "--idle-timeout", "30",
                 "--max-head", "8192", "--max-body", "1048576")


@pytest.mark.timeout(60)
def test_http_keep_alive(http):
    c = http.connect()
    f = c.makefile("rb")
    for _ in range(5):
        c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        code, headers, body = read_response(f)
        assert (code, body) == (200, b"Hello, world!\n")
        assert headers.get("connection") != "close"
    # the same connection still serves other routes
    c.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(f)[0] == 404
    c.sendall(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert read_response(f)[0] == 405
    c.close()


@pytest.mark.timeout(60)
def test_http_connection_close_and_http10(http):
    c = http.connect()
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    code, headers, body = read_response(c.makefile("rb"))
    assert code == 200 and headers["connection"] == "close"
    assert at_eof(c)
    c.close()
    # HTTP/1.0: one request per connection unless the client asks for keep-alive
    c = http.connect()
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert read_response(c.makefile("rb"))[0] == 200
    assert at_eof(c)
    c.close()
    c = http.connect()
    f = c.makefile("rb")
    for _ in range(2):
        c.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        code, headers, _ = read_response(f)
        assert code == 200 and headers["connection"] == "keep-alive"
    c.close()


@pytest.mark.timeout(60)
def test_http_pipelining_answers_in_order(http):
    c = http.connect()
    f = c.makefile("rb")
    reqs = [b"GET /work?us=5 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\nfirst!!",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /missing HTTP/1.1\r\n\r\n",
            b"POST /echo HTTP/1.1\r\ncontent-length: 6\r\n\r\nsecond",
            b"GET /work?us=1 HTTP/1.1\r\n\r\n"]
    c.sendall(b"".join(reqs))  # all in one write
    got = [read_response(f) for _ in reqs]
    assert [(code, body) for code, _, body in got] == [
        (200, b"worked 5 us\n"), (200, b"first!!"), (200, b"Hello, world!\n"),
        (404, b"no such route\n"), (200, b"second"), (200, b"worked 1 us\n")]
    # a pipeline split at awkward places: inside a head, inside a body
    blob = b"".join(reqs[:3]) * 20
    for i in range(0, len(blob), 37):
        c.sendall(blob[i:i + 37])
    got = [read_response(f) for _ in range(60)]
    assert [body for _, _, body in got] == [b"worked 5 us\n", b"first!!", b"Hello, world!\n"] * 20
    c.close()


@pytest.mark.timeout(60)
def test_http_request_body(http):
    c = http.connect()
    f = c.makefile("rb")
    body = os.urandom(300_000)
    c.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 50_000):
        c.sendall(body[i:i + 50_000])
        time.sleep(0.01)
    code, _, got = read_response(f)
    assert code == 200 and got == body
    c.sendall(b"GET / HTTP/1.1\r\n\r\n")  # the connection is still in step
    assert read_response(f)[2] == b"Hello, world!\n"
    c.close()


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET nopath HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nName : space before colon\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: line\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /work?us=lots HTTP/1.1\r\n\r\n",
    b"GET /work HTTP/1.1\r\n\r\n",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("req", MALFORMED, ids=range(len(MALFORMED)))
def test_http_malformed_gets_400_and_close(http, req):
    c = http.connect()
    f = c.makefile("rb")
    c.sendall(b"GET / HTTP/1.1\r\n\r\n" + req)  # a good request first: answered, then the 400
    assert read_response(f)[0] == 200
    code, headers, _ = read_response(f)
    assert code == 400 and headers["connection"] == "close"
    assert read_response(f) is None  # and the server closes
    c.close()


@pytest.mark.timeout(60)
def test_http_oversized_head_431(http):
    c = http.connect()
    f = c.makefile("rb")
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    c.sendall(big)
    code, headers, _ = read_response(f)
    assert code == 431 and headers["connection"] == "close"
    assert read_response(f) is None
    c.close()
    # a head that never ends: refused once it passes the limit
    c = http.connect()
    f = c.makefile("rb")
    c.sendall(b"GET / HTTP/1.1\r\n")
    for _ in range(12):
        c.sendall(b"X-Header: " + b"b" * 1000 + b"\r\n")
    code, _, _ = read_response(f)
    assert code == 431
    c.close()
    # just under the limit is fine
    c = http.connect()
    c.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 7000 + b"\r\n\r\n")
    assert read_response(c.makefile("rb"))[0] == 200
    c.close()


@pytest.mark.timeout(60)
def test_http_oversized_body_413(http):
    c = http.connect()
    f = c.makefile("rb")
    c.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (2 << 20) + b"x" * 100_000)
    code, headers, _ = read_response(f)
    assert code == 413 and headers["connection"] == "close"
    assert read_response(f) is None
    c.close()
    c = http.connect()  # exactly at the limit is accepted
    body = b"y" * (1 << 20)
    c.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    code, _, got = read_response(c.makefile("rb"))
    assert code == 200 and got == body
    c.close()


@pytest.mark.timeout(60)
def test_http_transfer_encoding_501(http):
    c = http.connect()
    c.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    f = c.makefile("rb")
    assert read_response(f)[0] == 501
    assert read_response(f) is None
    c.close()


@pytest.mark.timeout(60)
def test_http_work_route(http):
    c = http.connect()
    f = c.makefile("rb")
    for us in (0, 1, 200, 5000):
        c.sendall(b"GET /work?us=%d HTTP/1.1\r\n\r\n" % us)
        code, _, body = read_response(f)
        assert (code, body) == (200, b"worked %d us\n" % us)
    c.sendall(b"GET /work?x=1&us=7 HTTP/1.1\r\n\r\n")
    assert read_response(f)[2] == b"worked 7 us\n"
    c.close()


@pytest.mark.timeout(60)
def test_http_idle_timeout_closes(start):
    srv = start("http_server.py", "--threads", "2", "--idle-timeout", "1.5")
    idle = srv.connect()
    busy = srv.connect()
    f = busy.makefile("rb")
    t0 = time.monotonic()
    # the busy connection sends a request every 0.2 s: never idle for 1.5 s
    while time.monotonic() - t0 < 3.0:
        busy.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert read_response(f)[0] == 200
        time.sleep(0.2)
    assert at_eof(idle)  # closed by the server, long before IO_TIMEOUT
    waited = time.monotonic() - t0
    assert waited < IO_TIMEOUT - 1
    # a half-sent request counts as idle too
    part = srv.connect()
    part.sendall(b"GET / HTTP/1.1\r\nHost:")
    assert at_eof(part)
    assert read_response(f) is None  # and the busy one, idle since, is closed as well
    for s in (idle, busy, part):
        s.close()


@pytest.mark.timeout(120)
def test_http_many_keep_alive_connections(start):
    """10,000 concurrent keep-alive connections (fewer when this process may not
    open that many descriptors): each is served twice, the second time while
    all of them are open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = int(os.environ.get("ZOKIO_TEST_HTTP_CONNS", "10000"))
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard - 100)
    if soft < want + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want + 100) if hard != resource.RLIM_INFINITY
                                                    else want + 100, hard))
    try:
        srv = start("http_server.py", "--threads", "2")
        conns = []
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        want_resp = (b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Type: text/plain\r\n\r\n"
                     b"Hello, world!\n")
        for _ in range(want):
            c = srv.connect()
            c.sendall(req)
            assert recv_exact(c, len(want_resp)) == want_resp
            conns.append(c)
        for c in conns:  # all sent first, then all read: every task is busy at once
            c.sendall(req)
        for c in conns:
            assert recv_exact(c, len(want_resp)) == want_resp
        for c in conns:
            c.close()
        assert srv.stop() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
