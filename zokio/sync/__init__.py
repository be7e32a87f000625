"""zokio.sync: locks, semaphores, notifications and channels that work
across worker threads (and, for the sending and notifying side, from plain
threads).  Every primitive parks its waiters on one native FIFO wait list
(native/sync/waitlist.h)."""

# ---- sync primitives: Lock, Mutex, RwLock, Semaphore, BoundedSemaphore,
# Notify, Event, Condition, Barrier (native/sync/semaphore.c, notify.c) ----
from ._locks import BoundedSemaphore, Lock, Mutex, RwLock, Semaphore
from ._notify import Barrier, Condition, Event, Notify

# ---- end of sync primitives ----

# ---- channels (zokio/sync/_channels.py, native/sync/channel.c) ----
from ._errors import ChannelClosed, Lagged, QueueEmpty, QueueFull  # noqa: E402
from ._channels import (  # noqa: E402
    BroadcastReceiver,
    BroadcastSender,
    OneshotReceiver,
    OneshotSender,
    Receiver,
    Sender,
    WatchReceiver,
    WatchSender,
    broadcast,
    channel,
    oneshot,
    unbounded_channel,
    watch,
)
# ---- end of channels ----
