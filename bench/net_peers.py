"""The peers' servers for bench/bench_net.py: asyncio and uvloop, protocol API and streams API.

    python bench/net_peers.py --loop uvloop --api protocol --kind echo --port 0
    python bench/net_peers.py --loop asyncio --api streams --kind http --port 0

Like the zokio examples they stand beside, each prints ``port N`` on stdout
once it listens, raises the soft descriptor limit to the hard one, and exits
with status 0 on SIGINT or SIGTERM.

* echo, streams: one task per connection, ``await reader.read(65536)`` then
  ``writer.write`` + ``await writer.drain()`` — the await-based loop of
  examples/echo_server.py.
* echo, protocol: ``data_received`` writes the bytes straight back
  (``transport.write``), pausing reading while the transport's buffer is
  over its high-water mark.
* http: the request heads are parsed and answered by the very functions of
  examples/http_server.py (``parse_head``, ``route``, its ``HttpError``), so
  the per-request work in Python is the same as zokio's; only the
  connection loop differs, written in each API's own idiom with the same
  rules: every complete request in one read is answered with one write, an
  error answer closes the connection, and the connection closes after
  ``--idle-timeout`` seconds without a byte (streams: ``asyncio.timeout``
  around each read, as zokio's example does with ``zokio.timeout``;
  protocol: one ``loop.call_later`` handle per connection, moved at each
  ``data_received``).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))

READ_SIZE = 65536


# ------------------------------------------------------------------ echo


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


async def echo_streams(reader, writer):
    read, write, drain = reader.read, writer.write, writer.drain
    try:
        while data := await read(READ_SIZE):
            write(data)
            await drain()
    except OSError:
        pass
    finally:
        writer.close()


# ------------------------------------------------------------------ http


def http_protocol_factory(hs, limits):
    parse_head, route, HttpError = hs.parse_head, hs.route, hs.HttpError
    max_head, max_body, idle = limits

    class HttpProtocol(asyncio.Protocol):
        __slots__ = ("transport", "buf", "timer", "loop")

        def connection_made(self, transport):
            self.transport = transport
            self.buf = b""
            self.loop = asyncio.get_running_loop()
            self.timer = self.loop.call_later(idle, transport.close)

        def connection_lost(self, exc):
            self.timer.cancel()

        def data_received(self, data):
            self.timer.cancel()
            self.timer = self.loop.call_later(idle, self.transport.close)
            buf = self.buf
            buf = buf + data if buf else data
            out = []
            pos = 0
            done = False
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
                        break
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
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            if error is not None or done:
                self.timer.cancel()
                self.transport.close()
                return
            self.buf = buf[pos:] if pos < len(buf) else b""

    return HttpProtocol


def http_streams_handler(hs, limits):
    parse_head, route, HttpError = hs.parse_head, hs.route, hs.HttpError
    max_head, max_body, idle = limits

    async def handle(reader, writer):
        read, write, drain, timeout = reader.read, writer.write, writer.drain, asyncio.timeout
        buf = b""
        try:
            while True:
                try:
                    async with timeout(idle):
                        data = await read(READ_SIZE)
                except TimeoutError:
                    return
                if not data:
                    return
                buf = buf + data if buf else data
                out = []
                pos = 0
                done = False
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
                            break
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
                    write(out[0] if len(out) == 1 else b"".join(out))
                    await drain()
                if error is not None or done:
                    return
                buf = buf[pos:] if pos < len(buf) else b""
        except OSError:
            pass
        finally:
            writer.close()

    return handle


# ------------------------------------------------------------------ main


async def serve(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "http":
        import http_server as hs  # examples/http_server.py: the same parser and routes

        hs.LOOPS_PER_US = args.loops_per_us or hs.calibrate()
        limits = (args.max_head, args.max_body, args.idle_timeout)
    if args.api == "protocol":
        factory = EchoProtocol if args.kind == "echo" else http_protocol_factory(hs, limits)
        server = await loop.create_server(factory, args.host, args.port, backlog=1024)
    else:
        handler = echo_streams if args.kind == "echo" else http_streams_handler(hs, limits)
        server = await asyncio.start_server(handler, args.host, args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    async with server:
        await stop.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--api", choices=("protocol", "streams"), default="protocol")
    p.add_argument("--kind", choices=("echo", "http"), default="echo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--max-head", type=int, default=8192)
    p.add_argument("--max-body", type=int, default=1 << 20)
    p.add_argument("--loops-per-us", type=float, default=None)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.loop == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
