"""zokio.net: TCP, UDP and Unix sockets on the completion port.

Every read, write, accept and connect is one op on the worker's completion
port (io_uring, or epoll emulating completions).  See docs/api.md for the
classes, their errors and the cancel-safety of each method.
"""
from ._ops import (
    BusyResourceError,
    ClosedResourceError,
    IncompleteReadError,
    LimitOverrunError,
)
from ._resolve import lookup_host
from ._tcp import TcpListener, TcpStream
from ._udp import UdpSocket
from ._unix import UnixListener, UnixStream

__all__ = [
    "BusyResourceError",
    "ClosedResourceError",
    "IncompleteReadError",
    "LimitOverrunError",
    "TcpListener",
    "TcpStream",
    "UdpSocket",
    "UnixListener",
    "UnixStream",
    "lookup_host",
]
