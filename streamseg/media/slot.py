"""One-slot mailboxes between threads and the event loop.

Policy `latest`: a new item replaces an unread one, and the replaced item counts as
a drop. This is how every hand-off in streamseg stays bounded: a slow consumer sees
fewer, fresher items instead of a growing backlog, and the drop counters say how many
it missed.

A `WorkSignal` lets one thread (the inference worker) sleep until any of many slots
has news, then scan them with `take_nowait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]


class SlotClosed(Exception):
    """The slot was closed while (or before) an async consumer waited on it."""


class WorkSignal:
    """Wakes one consumer thread when any slot bound to it receives an item.

    Auto-reset with memory: `wait` consumes the notification, and one that arrives
    while the consumer is busy scanning is kept, so a put can never slip between the
    scan and the next `wait` unnoticed. Spurious wake-ups (nothing new) are possible
    and harmless.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified; True when there may be fresh work, False on timeout or
        once the signal is closed (the consumer should stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed, timeout)
            fired = self._pending and not self._closed
            self._pending = False
            return fired

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Empty:
    pass


_EMPTY: Final = _Empty()


class LatestSlot(Generic[T]):
    """Capacity 1, policy `latest`: keep the newest item, drop the unread older one.

    Any thread may `put`. Threads consume with `take`/`take_nowait`; coroutines with
    `take_async`, which is woken from other threads through `call_soon_threadsafe` on
    the waiting coroutine's own loop (bound when it first waits), never by polling.
    `on_drop` receives each replaced item (for metrics); it runs on the producer's
    thread outside the lock, so it must be quick and must not raise. Do not put None:
    `take`/`take_nowait` use None to mean "nothing".
    """

    policy: Final = "latest"

    def __init__(
        self,
        on_drop: Callable[[T], None] | None = None,
        *,
        signal: WorkSignal | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._item: T | _Empty = _EMPTY
        self._closed = False
        self._on_drop = on_drop
        self._signal = signal
        self._waiters: list[_Waiter] = []
        self.puts = 0
        self.takes = 0
        self.drops = 0
        self.version = 0  # counts puts; a consumer compares it to tell whether work is fresh

    @property
    def has_item(self) -> bool:
        return self._item is not _EMPTY

    @property
    def closed(self) -> bool:
        return self._closed

    def bind_signal(self, signal: WorkSignal | None) -> None:
        """Notify `signal` on every put and on close (at once if an item is waiting)."""
        with self._cond:
            self._signal = signal
            pending = self._item is not _EMPTY or self._closed
        if signal is not None and pending:
            signal.notify()

    def put(self, item: T) -> bool:
        """Store `item` from any thread; True when it replaced an unread item (a drop).
        After `close` this does nothing and returns False."""
        with self._cond:
            if self._closed:
                return False
            dropped = self._item
            self._item = item
            self.puts += 1
            self.version += 1
            replaced = not isinstance(dropped, _Empty)
            if replaced:
                self.drops += 1
            waiters, signal = self._notify_locked()
        self._wake_all(waiters, signal)
        if self._on_drop is not None and not isinstance(dropped, _Empty):
            self._on_drop(dropped)
        return replaced

    def take_nowait(self) -> T | None:
        with self._cond:
            return self._take_locked()

    def take(self, timeout: float | None = None) -> T | None:
        """Block a thread until an item arrives; None on timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not _EMPTY or self._closed, timeout)
            return self._take_locked()

    async def take_async(self) -> T:
        """Wait on the running event loop for an item; raises SlotClosed once closed."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                item = self._item
                if not isinstance(item, _Empty):
                    self._item = _EMPTY
                    self.takes += 1
                    return item
                if self._closed:
                    raise SlotClosed
                waiter: _Waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await waiter[1]
            finally:
                # A cancelled wait must not leave its future behind until the next put.
                with self._cond, contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def close(self) -> None:
        """Discard any unread item and wake every waiter; later puts are ignored."""
        with self._cond:
            self._closed = True
            self._item = _EMPTY
            waiters, signal = self._notify_locked()
        self._wake_all(waiters, signal)

    def _notify_locked(self) -> tuple[list[Any], WorkSignal | None]:
        """Wake blocked threads; hand back the async waiters and signal to wake outside."""
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        return waiters, self._signal

    @staticmethod
    def _wake_all(waiters: list[Any], signal: WorkSignal | None) -> None:
        _wake(waiters)
        if signal is not None:
            signal.notify()

    def _take_locked(self) -> T | None:
        item = self._item
        if isinstance(item, _Empty):
            return None
        self._item = _EMPTY
        self.takes += 1
        return item


def _wake(waiters: list[_Waiter]) -> None:
    if not waiters:
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, future in waiters:
        if loop is running:
            _resolve(future)  # already on that loop: skip the self-pipe write
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
