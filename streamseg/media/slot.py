"""One-slot mailboxes between threads and the event loop.

Policy `latest`: a new item replaces an unread one, and the replaced item counts as
a drop. This is how every hand-off in streamseg stays bounded: a slow consumer sees
fewer, fresher items instead of a growing backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotClosed(Exception):
    pass


class LatestSlot(Generic[T]):
    policy = "latest"

    def __init__(self, on_drop: Callable[[T], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has = False
        self._closed = False
        self._on_drop = on_drop
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.puts = 0
        self.takes = 0
        self.drops = 0
        self.version = 0

    @property
    def has_item(self) -> bool:
        return self._has

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> bool:
        """Store `item` from any thread; True when it replaced an unread item."""
        with self._cond:
            if self._closed:
                return False
            dropped = self._item if self._has else None
            replaced = self._has
            self._item, self._has = item, True
            self.puts += 1
            self.version += 1
            if replaced:
                self.drops += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        self._wake(waiters)
        if replaced and self._on_drop is not None:
            self._on_drop(dropped)  # type: ignore[arg-type]
        return replaced

    def take_nowait(self) -> T | None:
        with self._cond:
            return self._take_locked()

    def take(self, timeout: float | None = None) -> T | None:
        """Block a thread until an item arrives (None on timeout or close)."""
        with self._cond:
            self._cond.wait_for(lambda: self._has or self._closed, timeout)
            return self._take_locked()

    async def take_async(self) -> T:
        """Wait on the event loop; woken from any thread without polling."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._has:
                    item = self._take_locked()
                    assert item is not None or self._item is None
                    return item  # type: ignore[return-value]
                if self._closed:
                    raise SlotClosed
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item, self._has = None, False
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        self._wake(waiters)

    def _take_locked(self) -> T | None:
        if not self._has:
            return None
        item, self._item, self._has = self._item, None, False
        self.takes += 1
        return item

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
