"""The exceptions of zokio.sync's channels."""
from __future__ import annotations

from typing import Any

__all__ = ["ChannelClosed", "QueueFull", "QueueEmpty", "Lagged"]


class ChannelClosed(Exception):
    """The other side of a channel is gone.

    Raised by a send when the receiver was closed or dropped (``item`` is
    the item that was not sent, also for a sender that was waiting on a full
    channel when the receiver went away), and by a receive once every sender
    is gone and nothing is left to receive (``item`` is None)."""

    item: Any = None


class QueueFull(Exception):
    """``try_send`` on a full bounded channel; ``item`` is the item not sent."""

    item: Any = None


class QueueEmpty(Exception):
    """``try_recv`` on an empty channel whose senders are still alive."""


class Lagged(Exception):
    """A broadcast receiver fell more than ``capacity`` messages behind:
    ``missed`` messages were overwritten before it read them.  Raised once;
    the next receive continues from the oldest message still retained."""

    def __init__(self, missed: int) -> None:
        super().__init__(f"receiver lagged behind by {missed} messages")
        self.missed = missed

    def __reduce__(self):
        return (type(self), (self.missed,))
