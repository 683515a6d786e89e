from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from streamseg.media.slot import LatestSlot, SlotClosed, WorkSignal

# A waiting consumer should burn next to no CPU; generous for a shared machine.
IDLE_CPU_S = 0.05


def test_latest_policy_counts_every_drop_when_producer_outruns_consumer() -> None:
    dropped: list[int] = []
    slot: LatestSlot[int] = LatestSlot(on_drop=dropped.append)
    seen: list[int] = []
    done = threading.Event()

    def consumer() -> None:
        while not done.is_set():
            item = slot.take(timeout=0.01)
            if item is not None:
                seen.append(item)
                time.sleep(0.001)

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(1000):
        slot.put(i)
        if i % 100 == 0:
            time.sleep(0.002)
    done.set()
    thread.join()
    leftover = [item] if (item := slot.take_nowait()) is not None else []
    slot.close()

    assert slot.policy == "latest"
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert slot.puts == slot.version == 1000
    assert slot.drops == slot.puts - slot.takes == 1000 - len(seen) - len(leftover)
    assert slot.drops > 0 and len(dropped) == slot.drops
    # Every item is accounted for exactly once: taken, dropped, or left in the slot.
    assert sorted(seen + dropped + leftover) == list(range(1000))
    assert (seen + leftover)[-1] == 999


def test_put_reports_a_replaced_item() -> None:
    slot: LatestSlot[str] = LatestSlot()
    assert not slot.has_item
    assert slot.put("a") is False
    assert slot.has_item
    assert slot.put("b") is True
    assert slot.take_nowait() == "b"
    assert slot.take_nowait() is None
    assert (slot.puts, slot.takes, slot.drops, slot.version) == (2, 1, 1, 2)


async def test_put_from_thread_wakes_async_waiter() -> None:
    slot: LatestSlot[str] = LatestSlot()
    put_at: list[float] = []

    def produce() -> None:
        put_at.append(time.perf_counter())
        slot.put("x")

    threading.Timer(0.05, produce).start()
    assert await asyncio.wait_for(slot.take_async(), 2) == "x"
    woken_after = time.perf_counter() - put_at[0]
    assert woken_after < 1.0  # woken by the put, not by a timeout; typically well under 1 ms


async def test_put_on_the_loop_wakes_waiter_on_same_loop() -> None:
    slot: LatestSlot[int] = LatestSlot()
    waiter = asyncio.ensure_future(slot.take_async())
    await asyncio.sleep(0)
    slot.put(5)
    assert await asyncio.wait_for(waiter, 1) == 5


async def test_close_wakes_all_waiters() -> None:
    slot: LatestSlot[str] = LatestSlot()
    thread_results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: thread_results.append(slot.take(timeout=5)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    waiters = [asyncio.ensure_future(slot.take_async()) for _ in range(2)]
    await asyncio.sleep(0.05)
    threading.Timer(0.02, slot.close).start()
    for waiter in waiters:
        with pytest.raises(SlotClosed):
            await asyncio.wait_for(waiter, 2)
    for thread in threads:
        thread.join(2)
    assert thread_results == [None, None]
    assert slot.closed
    assert slot.put("late") is False
    assert (slot.puts, slot.has_item) == (0, False)
    with pytest.raises(SlotClosed):
        await slot.take_async()


def test_blocked_thread_consumer_uses_no_cpu() -> None:
    slot: LatestSlot[int] = LatestSlot()
    start = time.process_time()
    assert slot.take(timeout=0.5) is None
    assert time.process_time() - start < IDLE_CPU_S


async def test_waiting_coroutine_uses_no_cpu_and_cancels_cleanly() -> None:
    slot: LatestSlot[int] = LatestSlot()
    start = time.process_time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slot.take_async(), 0.5)
    assert time.process_time() - start < IDLE_CPU_S
    assert slot._waiters == []  # the cancelled wait left nothing behind
    slot.put(1)
    assert await asyncio.wait_for(slot.take_async(), 1) == 1


def test_work_signal_remembers_a_notify_and_times_out() -> None:
    signal = WorkSignal()
    signal.notify()
    assert signal.wait(0) is True
    start = time.process_time()
    assert signal.wait(0.3) is False
    assert time.process_time() - start < IDLE_CPU_S
    signal.close()
    assert signal.closed
    assert signal.wait() is False


def test_bind_signal_notifies_for_an_item_already_waiting() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    signal = WorkSignal()
    slot.bind_signal(signal)
    assert signal.wait(0) is True
    slot.close()
    assert signal.wait(0) is True  # a closed slot is news too: the worker can forget it


def test_one_thread_serves_three_slots_through_a_work_signal() -> None:
    signal = WorkSignal()
    slots: list[LatestSlot[int]] = [LatestSlot(signal=signal) for _ in range(3)]
    seen: list[list[int]] = [[] for _ in slots]
    per_producer = 300

    def worker() -> None:
        while signal.wait():
            for slot, log in zip(slots, seen, strict=True):
                item = slot.take_nowait()
                if item is not None:
                    log.append(item)
                    time.sleep(0.0005)  # a "model step" slower than the producers

    def producer(slot: LatestSlot[int], pause: float) -> None:
        for i in range(per_producer):
            slot.put(i)
            time.sleep(pause)

    thread = threading.Thread(target=worker)
    thread.start()
    producers = [
        threading.Thread(target=producer, args=(slot, pause))
        for slot, pause in zip(slots, (0.0, 0.0002, 0.002), strict=True)
    ]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    deadline = time.monotonic() + 5
    while any(not log or log[-1] != per_producer - 1 for log in seen):
        assert time.monotonic() < deadline, [log[-1:] for log in seen]
        time.sleep(0.01)
    signal.close()
    thread.join(2)
    assert not thread.is_alive()
    for slot, log in zip(slots, seen, strict=True):
        assert all(a < b for a, b in itertools.pairwise(log))
        assert slot.drops == per_producer - len(log) and not slot.has_item
