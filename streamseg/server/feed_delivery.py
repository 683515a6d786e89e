"""How a websocket mask feed hands messages to the kernel so latest-only holds for any
client, not only ones that drain their socket in a background task.

A one-slot mailbox per client only helps while the message before has not left: the
kernel's socket buffers (hundreds of KB on loopback) otherwise take every send at once
and the mailbox never engages (../shared/FACTS.md, "Websockets: latest-only needs the
kernel's cooperation"). So the feed

- sets `TCP_NOTSENT_LOWAT` on the connection: the kernel takes new bytes only while
  less than `NOTSENT_LOWAT` of what it holds is unsent, the rest waits in the
  transport's user-space buffer, where the server can see it;
- takes the next (newest) item from the mailbox only once that buffer is empty
  (`drained`): a client that reads slowly gets fewer, newer messages.

What the client's own kernel and library already received is out of the server's
reach: a client that reads once a second gets fresh results only by asking for each
one (`?delivery=pull`, `{"type": "next"}`), counted by `Credits` (docs/ROBOTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from streamseg.media.slot import LatestSlot

log = logging.getLogger(__name__)
DELIVERIES = ("push", "pull")
# Unsent bytes the kernel may hold per feed: a fraction of one mask message, so what
# waits is in user space, where `drained` sees it.
NOTSENT_LOWAT = 16 * 1024
# How often a backed-up transport is checked for having drained (only while it is).
DRAIN_POLL_S = 0.005
# `next` requests a pull client may have outstanding; more are refused with `busy`.
MAX_PENDING_NEXT = 4
T = TypeVar("T")


class Transport(Protocol):
    def get_write_buffer_size(self) -> int: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def is_closing(self) -> bool: ...


def limit_unsent(transport: Transport) -> bool:
    """Set `TCP_NOTSENT_LOWAT` on the transport's socket; False where it cannot be
    (not TCP, not Linux), in which case kernel buffers still absorb a backlog."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, NOTSENT_LOWAT)
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("TCP_NOTSENT_LOWAT not set: %s", exc)
        return False
    return True


async def drained(transport: Transport | None, timeout: float) -> bool:
    """Wait until the transport's write buffer is empty (everything handed to the
    kernel); False when it is not within `timeout` (the client stopped reading). A
    transport that is closing counts as drained: the send that follows fails."""
    if transport is None or transport.is_closing() or transport.get_write_buffer_size() == 0:
        return True
    deadline = time.monotonic() + timeout
    while transport.get_write_buffer_size() > 0 and not transport.is_closing():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(DRAIN_POLL_S)
    return True


class Credits:
    """Frame messages a pull client asked for (`next`) and has not had yet; bounded by
    `limit` (a `grant` beyond it is refused). Event-loop only."""

    def __init__(self, limit: int = MAX_PENDING_NEXT) -> None:
        self.limit = limit
        self.pending = 0
        self.closed = False
        self._event = asyncio.Event()

    def grant(self) -> bool:
        if self.pending >= self.limit:
            return False
        self.pending += 1
        self._event.set()
        return True

    async def take(self) -> bool:
        """Wait for one request; False once closed."""
        while self.pending == 0 and not self.closed:
            self._event.clear()
            await self._event.wait()
        if self.closed:
            return False
        self.pending -= 1
        return True

    def close(self) -> None:
        self.closed = True
        self._event.set()


class ClosingSlot(LatestSlot[T], Generic[T]):
    """A `LatestSlot` that also says when it is closed (the stream was deleted, the
    server stops), so a sender waiting for a pull request rather than on the slot
    notices. `on_close` runs on `loop`, whatever thread closes the slot."""

    def __init__(
        self,
        on_drop: Callable[[T], None] | None,
        on_close: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(on_drop)
        self._on_close, self._loop = on_close, loop

    def close(self) -> None:
        super().close()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._on_close)
