"""The inference thread's scheduler with real streams and the real (test-config) model:
interval inference (DeepStream's `interval`), skips counted apart from drops, and the
longest-waiting stream served first."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.media.frame import Frame
from streamseg.media.synthetic import moving_scene
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from streamseg.pipeline.stream import MAX_INTERVAL, StreamResult, StreamSession
from streamseg.pipeline.worker import InferenceWorker
from streamseg.server.metrics import Metrics
from tests.conftest import TEST_CONFIG


@pytest.fixture(scope="module")
def graphs() -> TorchGraphs:
    return TorchGraphs(build_sam2(TEST_CONFIG, seed=0))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return moving_scene(20)


def _frame(seq: int, image: np.ndarray) -> Frame:
    now = time.time()
    return Frame(seq, image, now, "receive", now)


def _settled(streams: list[StreamSession]) -> bool:
    """Every received frame is accounted for: processed, skipped, dropped or refused."""
    return all(
        not s.has_frame
        and s.counters.processed + s.counters.skipped + s.counters.dropped + s.counters.errors
        == s.counters.received
        for s in streams
    )


async def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_interval_runs_every_nth_frame_and_counts_skips_apart_from_drops(
    graphs: TorchGraphs, frames: list[np.ndarray]
) -> None:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    worker = InferenceWorker(graphs)
    streams = []
    for interval in (1, 3):
        s = StreamSession(
            StreamTracker(graphs),
            loop,
            interval=interval,
            on_drop=metrics.count_drop,
            on_skip=metrics.count_skip,
        )
        metrics.open_stream(s.id)
        streams.append(s)
    every, third = streams
    results: dict[str, list[StreamResult]] = {s.id: [] for s in streams}
    seen: dict[str, list[int]] = {s.id: [] for s in streams}  # the source-rate path
    for s in streams:
        worker.attach(s)
        s.add_sink(results[s.id].append)
        s.add_frame_sink(lambda f, sid=s.id: seen[sid].append(f.seq))
    worker.start()
    try:
        for seq in range(30):  # the model keeps up: each frame settles before the next
            for s in streams:
                s.submit_frame(_frame(seq, frames[seq % len(frames)]))
            await _until(lambda: _settled(streams))
        await _until(lambda: all(len(results[s.id]) == s.counters.processed for s in streams))
    finally:
        worker.stop()
    assert [r.frame.seq for r in results[every.id]] == list(range(30))
    assert [r.frame.seq for r in results[third.id]] == list(range(0, 30, 3))
    assert (third.counters.processed, third.counters.skipped, third.counters.dropped) == (10, 20, 0)
    assert (every.counters.skipped, every.counters.dropped) == (0, 0)
    # Skipped frames still reach the frame sinks (masks are carried forward onto them).
    assert seen[third.id] == list(range(30))
    text = metrics.render().decode()
    assert f'streamseg_frames_skipped_total{{reason="interval",stream="{third.id}"}} 20.0' in text
    assert f'stream="{every.id}"' not in text.split("streamseg_frames_skipped")[-1]
    assert "streamseg_frames_dropped_total{" not in text
    metrics.forget_stream(third.id)
    assert third.id not in metrics.render().decode()


async def test_the_stream_waiting_longest_is_served_first(
    graphs: TorchGraphs, frames: list[np.ndarray]
) -> None:
    """One frame per batch; the frames arrive while the worker is busy, in the order
    B, C, A (attached A, B, C). A's newer frame replaces its first one (a drop) but A
    has been waiting since the first, so the order stays B, C, A."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    worker = InferenceWorker(graphs, max_batch=1, on_step=lambda out: order.append(out.stream_id))
    a, b, c = (StreamSession(StreamTracker(graphs), loop, interval=n) for n in (1, 1, 2))
    for s in (a, b, c):
        worker.attach(s)
    worker.start()
    try:
        c.submit_frame(_frame(0, frames[0]))  # C's first frame is always due
        await _until(lambda: c.counters.processed == 1)
        order.clear()
        gate = threading.Event()
        busy = worker.submit(gate.wait)
        await asyncio.sleep(0.05)  # the worker is now inside the job
        b.submit_frame(_frame(0, frames[0]))
        c.submit_frame(_frame(1, frames[1]))  # 1 frame since its model frame: skipped
        assert not c.has_frame and c.counters.skipped == 1
        c.submit_frame(_frame(2, frames[2]))  # 2 frames: due
        a.submit_frame(_frame(0, frames[0]))
        a.submit_frame(_frame(1, frames[1]))  # replaces A's unread frame: a drop
        assert a.counters.dropped == 1 and c.has_frame
        gate.set()
        await busy
        await _until(lambda: _settled([a, b, c]) and len(order) == 3)
    finally:
        worker.stop()
    assert order == [b.id, c.id, a.id]


async def test_streams_with_different_intervals_share_a_saturated_model(
    graphs: TorchGraphs, frames: list[np.ndarray]
) -> None:
    """Frames arrive far faster than the model steps: no stream starves, the two
    interval-1 streams get about the same share, and the interval-4 stream never runs
    two model frames fewer than 4 frames apart."""
    loop = asyncio.get_running_loop()
    worker = InferenceWorker(graphs, max_batch=1)
    streams = [StreamSession(StreamTracker(graphs), loop, interval=n) for n in (1, 1, 4)]
    results: dict[str, list[int]] = {s.id: [] for s in streams}
    for s in streams:
        worker.attach(s)
        s.add_sink(lambda out, sid=s.id: results[sid].append(out.frame.seq))
    stop = threading.Event()

    def produce() -> None:
        seq = 0
        while not stop.is_set():
            for s in streams:
                s.submit_frame(_frame(seq, frames[seq % len(frames)]))
            seq += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    worker.start()
    producer.start()
    try:
        await _until(lambda: all(s.counters.processed >= 8 for s in streams), timeout=120)
    finally:
        stop.set()
        await asyncio.to_thread(producer.join)
        worker.stop()
    first, second, sparse = streams
    share = first.counters.processed / second.counters.processed
    assert 0.6 < share < 1.6, share
    gaps = np.diff(results[sparse.id])
    assert gaps.min() >= 4, gaps
    assert sparse.counters.skipped > 0 and sparse.counters.dropped > 0  # both, apart
    for s in streams:
        c = s.counters
        waiting = 1 if s.has_frame else 0
        assert c.processed + c.dropped + c.skipped + waiting == c.received


def test_interval_must_be_within_limits(graphs: TorchGraphs) -> None:
    loop = asyncio.new_event_loop()
    try:
        for bad in (0, -1, MAX_INTERVAL + 1, True):
            with pytest.raises(ValueError, match="interval"):
                StreamSession(StreamTracker(graphs), loop, interval=bad)
        assert StreamSession(StreamTracker(graphs), loop, interval=MAX_INTERVAL).interval == 30
    finally:
        loop.close()
