from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamseg.media.slot import LatestSlot, SlotClosed


def test_latest_wins_and_drops_are_counted() -> None:
    dropped: list[int] = []
    slot: LatestSlot[int] = LatestSlot(on_drop=dropped.append)
    seen: list[int] = []

    def consumer() -> None:
        while (item := slot.take(timeout=1.0)) is not None:
            seen.append(item)
            time.sleep(0.001)

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(1000):
        slot.put(i)
    time.sleep(0.05)
    slot.close()
    thread.join()
    assert seen == sorted(seen) and seen[-1] == 999
    assert slot.drops == len(dropped) == slot.puts - slot.takes
    assert slot.drops > 0


async def test_put_from_thread_wakes_async_waiter() -> None:
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.put, args=("x",)).start()
    assert await asyncio.wait_for(slot.take_async(), 2) == "x"


async def test_close_wakes_async_waiter() -> None:
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.close).start()
    with pytest.raises(SlotClosed):
        await asyncio.wait_for(slot.take_async(), 2)
    assert slot.put("late") is False


def test_blocked_consumer_uses_no_cpu() -> None:
    slot: LatestSlot[int] = LatestSlot()
    start = time.process_time()
    assert slot.take(timeout=0.5) is None
    assert time.process_time() - start < 0.05
