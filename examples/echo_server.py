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
import sys

import zokio
from zokio.net import TcpListener


async def echo(stream) -> None:
    try:
        async with stream:
            read, write_all = stream.read, stream.write_all
            while data := await read(65536):
                await write_all(data)
    except OSError:
        pass  # the peer reset the connection: nothing to answer


async def serve(host: str, port: int) -> None:
    async with TcpListener.bind(host, port) as listener:
        print(f"port {listener.local_address[1]}", flush=True)
        spawn = zokio.spawn
        async for stream, _address in listener:
            spawn(echo(stream))


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
    # SIGTERM stops the server the way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rt = zokio.Runtime(threads=args.threads)
    try:
        rt.block_on(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        rt.shutdown(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
