"""An accepting task that moves between workers.

On io_uring each worker's port keeps its own multishot ACCEPT for a
listener, and a connection that arrives there with nobody waiting is queued
by that port.  The acceptor may be on another worker by then (stolen while
its own worker was busy).  Nothing a port queued may be stranded: an accept
anywhere gets it.  On epoll the kernel's backlog is shared by every worker,
and the same tests hold."""
from __future__ import annotations

import socket
import threading
import time

import pytest

import zokio
from zokio import net

from _net_fixtures import no_fd_leak  # noqa: F401  (autouse: no fd left open)


def _hog(seconds):
    """A task that holds its worker in one long poll."""
    async def hog():
        time.sleep(seconds)
    return hog()


async def _move_off(thread_id, attempts=200):
    """Get the calling task onto another worker than `thread_id`: park a hog
    on this worker and yield behind it, so that the idle worker steals us."""
    for _ in range(attempts):
        if threading.get_ident() != thread_id:
            return True
        zokio.spawn(_hog(0.05))
        await zokio.yield_now()
    return threading.get_ident() != thread_id


@pytest.mark.timeout(120)
def test_connections_queued_on_the_acceptors_old_worker_reach_it(make_runtime):
    """The acceptor takes one connection on worker X (X's port keeps
    accepting for it), moves to worker Y and accepts again.  Every client
    that connects after the move is accepted, wherever its connection was
    queued, over many rounds."""
    rt = make_runtime(2)
    moved_rounds = 0

    async def round_trip(listener, port, clients_after_move):
        nonlocal moved_rounds
        first = socket.create_connection(("127.0.0.1", port))
        clients = [first]
        accepted = []
        try:
            async with zokio.timeout(10):
                s, _ = await listener.accept()
            accepted.append(s)
            here = threading.get_ident()
            if await _move_off(here):
                moved_rounds += 1
            for _ in range(clients_after_move):
                clients.append(socket.create_connection(("127.0.0.1", port)))
            async with zokio.timeout(10):
                for _ in range(clients_after_move):
                    s, _ = await listener.accept()
                    accepted.append(s)
            # Each accepted stream is one of ours: a byte goes end to end.
            for i, s in enumerate(accepted):
                await s.write_all(b"%d\n" % i)
            got = sorted(int(c.recv(16)) for c in clients)
            assert got == list(range(len(clients)))
        finally:
            for s in accepted:
                s.close()
            for c in clients:
                c.close()

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            for r in range(20):
                await round_trip(listener, port, 1 + r % 4)

    rt.block_on(main())
    # The scheduler decides who steals; most rounds must have moved for
    # the test to have tested anything.
    assert moved_rounds >= 10, moved_rounds


@pytest.mark.timeout(120)
def test_an_acceptor_moving_between_busy_workers_accepts_every_connection_once(make_runtime):
    """Clients on the runtime connect while the one acceptor keeps moving:
    every few accepts it leaves a hog on its worker and yields behind it.
    Each connection is accepted exactly once (a byte from each client
    arrives on exactly one accepted stream)."""
    rt = make_runtime(2)
    total = 300
    moves = 0

    async def acceptor(listener, out):
        nonlocal moves
        while len(out) < total:
            async with zokio.timeout(20):
                s, _ = await listener.accept()
            out.append(s)
            if len(out) % 7 == 0 and await _move_off(threading.get_ident(), attempts=5):
                moves += 1

    async def main():
        async with net.TcpListener.bind("127.0.0.1", 0) as listener:
            port = listener.local_address[1]
            out = []
            h = zokio.spawn(acceptor(listener, out))
            clients = []
            try:
                for i in range(total):
                    clients.append(await net.TcpStream.connect("127.0.0.1", port))
                    if i % 50 == 0:
                        await zokio.sleep(0.005)
                await h
                for i, c in enumerate(clients):
                    await c.write_all(b"%04d" % i)
                seen = sorted([int(await s.read_exact(4)) for s in out])
                assert seen == list(range(total))
            finally:
                for s in out:
                    s.close()
                for c in clients:
                    c.close()

    rt.block_on(main())
    assert moves >= 5, moves


@pytest.mark.timeout(60)
def test_closing_a_listener_closes_connections_taken_in_for_nobody(make_runtime):
    """The acceptor takes one connection on worker X, so X's port keeps
    accepting for the listener; it moves away and the listener is closed
    while clients that nobody accepted are connected.  Whatever the ports
    took in for them is closed with the listener: each client sees the
    connection end, and no fd is left open in this process (autouse check)."""
    rt = make_runtime(2)

    async def main():
        listener = net.TcpListener.bind("127.0.0.1", 0)
        port = listener.local_address[1]
        first = socket.create_connection(("127.0.0.1", port))
        s, _ = await listener.accept()
        await _move_off(threading.get_ident())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        await zokio.sleep(0.05)  # taken in by a port's multishot ACCEPT, or in the backlog
        listener.close()
        await zokio.sleep(0.05)  # the ports let go at their next pass
        s.close()
        return first, clients

    first, clients = rt.block_on(main())
    try:
        for c in clients:
            c.settimeout(5)
            try:
                assert c.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in clients + [first]:
            c.close()
