"""A TCP echo server on zokio.net: one task per connection, read + write_all.

    python examples/echo_server.py --threads 2 --port 25000

Prints ``port N`` (the bound port; ``--port 0`` picks a free one) on stdout
once it listens.  Ctrl-C or SIGTERM stops it: every connection task is
cancelled, its stream closed, and the process exits with status 0.
"""
from __future__ import annotations

import argparse
import resource
import signal
import socket
import sys

import zokio
from zokio.net import TcpListener, UnixStream


async def echo(stream) -> None:
    try:
        async with stream:
            read, write_all = stream.read, stream.write_all
            while data := await read(65536):
                await write_all(data)
    except OSError:
        pass  # the peer reset the connection: nothing to answer


async def accept_loop(listener) -> None:
    spawn = zokio.spawn
    async for stream, _address in listener:
        spawn(echo(stream))


async def serve(host: str, port: int, stop_signal: socket.socket) -> None:
    async with TcpListener.bind(host, port) as listener:
        print(f"port {listener.local_address[1]}", flush=True)
        acceptor = zokio.spawn(accept_loop(listener))
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25000)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: one per CPU)")
    args = p.parse_args(argv)
    raise_fd_limit()
    receive, send = stop_signal_sockets()
    rt = zokio.Runtime(threads=args.threads)
    try:
        rt.block_on(serve(args.host, args.port, receive))
    finally:
        rt.shutdown(timeout=10)
        signal.set_wakeup_fd(-1)
        send.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
