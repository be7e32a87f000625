"""Name resolution: ``lookup_host`` runs getaddrinfo on the blocking pool."""
from __future__ import annotations

import socket
from typing import Any, Optional

from .._api import spawn_blocking


def _numeric(host: str, port: int, family: int) -> Optional[list[tuple[int, Any]]]:
    """The address of a numeric host without a resolver call, or None."""
    if family in (0, socket.AF_INET):
        try:
            socket.inet_pton(socket.AF_INET, host)
            return [(socket.AF_INET, (host, port))]
        except OSError:
            pass
    if family in (0, socket.AF_INET6) and ":" in host and "%" not in host:
        try:
            socket.inet_pton(socket.AF_INET6, host)
            return [(socket.AF_INET6, (host, port, 0, 0))]
        except OSError:
            pass
    return None


async def lookup_host(host: Optional[str], port: int, *, family: int = 0,
                      type: int = socket.SOCK_STREAM, flags: int = 0) -> list[tuple[int, Any]]:
    """Resolve ``host`` (a name or a numeric address) and ``port``.

    Returns ``[(family, address), ...]`` in the resolver's order, each
    address in the ``socket`` module's form for its family, without
    duplicates.  Numeric hosts are answered at once; names go to
    ``socket.getaddrinfo`` on the blocking pool (``zokio.spawn_blocking``),
    so a slow resolver never blocks a worker.  Failure raises
    ``socket.gaierror`` (an ``OSError``) naming the host.
    """
    if isinstance(host, bytes):
        host = host.decode("idna")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, not {type_name(port)}")
    if host is not None:
        quick = _numeric(host, port, family)
        if quick is not None:
            return quick
    try:
        infos = await spawn_blocking(socket.getaddrinfo, host, port, family, type, 0, flags)
    except socket.gaierror as e:
        raise socket.gaierror(e.errno, f"{e.strerror} (resolving {host!r})") from None
    out: list[tuple[int, Any]] = []
    for fam, _type, _proto, _canon, addr in infos:
        item = (int(fam), addr)
        if item not in out:
            out.append(item)
    return out


def type_name(x: Any) -> str:
    return x.__class__.__name__
