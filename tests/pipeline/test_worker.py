"""The inference thread with real trackers: latest-frame semantics, jobs, batching."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.media.frame import Frame
from streamseg.media.synthetic import moving_scene
from streamseg.model.build import build_sam2
from streamseg.model.errors import InvalidPromptError
from streamseg.model.tracker import StreamTracker
from streamseg.pipeline.stream import StreamResult, StreamSession
from streamseg.pipeline.worker import InferenceWorker, WorkerBusyError
from tests.conftest import TEST_CONFIG


@pytest.fixture(scope="module")
def graphs() -> TorchGraphs:
    return TorchGraphs(build_sam2(TEST_CONFIG, seed=0))


def _frame(seq: int, image: np.ndarray) -> Frame:
    now = time.time()
    return Frame(seq, image, now, "receive", now)


async def test_fast_source_drops_old_frames_and_results_arrive_in_order(
    graphs: TorchGraphs,
) -> None:
    loop = asyncio.get_running_loop()
    worker = InferenceWorker(graphs)
    worker.start()
    streams = [StreamSession(StreamTracker(graphs), loop) for _ in range(2)]
    results: dict[str, list[StreamResult]] = {s.id: [] for s in streams}
    for s in streams:
        worker.attach(s)
        s.add_sink(results[s.id].append)
    frames = moving_scene(20)
    first = streams[0]
    first.submit_frame(_frame(0, frames[0]))
    while not results[first.id]:
        await asyncio.sleep(0.01)
    outcome = await worker.submit(lambda: first.tracker.add_prompt(1, box=[10, 20, 40, 50]))
    assert outcome.created

    def produce() -> None:
        for seq in range(1, 300):
            for s in streams:
                s.submit_frame(_frame(seq, frames[seq % 20]))
            time.sleep(0.001)

    producer = threading.Thread(target=produce)
    producer.start()
    await asyncio.to_thread(producer.join)
    await asyncio.sleep(0.5)
    worker.stop()
    for s in streams:
        seqs = [r.frame.seq for r in results[s.id]]
        assert seqs == sorted(set(seqs))
        c = s.counters
        assert c.dropped > 0 and c.received == (300 if s is first else 299)
        assert c.processed + c.dropped == c.received
        for r in results[s.id]:
            assert r.frame.recv_ts <= r.infer_start <= r.infer_end
    assert [t.track_id for t in results[first.id][-1].result.tracks] == [1]
    assert worker.batches < worker.steps  # both streams were encoded together


async def test_job_errors_reach_the_caller_and_queue_is_bounded(graphs: TorchGraphs) -> None:
    loop = asyncio.get_running_loop()
    worker = InferenceWorker(graphs, max_jobs=2)
    stream = StreamSession(StreamTracker(graphs), loop)
    worker.attach(stream)
    stream.submit_frame(_frame(0, moving_scene(1)[0]))
    gate = threading.Event()
    blocked = [worker.submit(gate.wait), worker.submit(lambda: None)]
    with pytest.raises(WorkerBusyError):
        worker.submit(lambda: None)
    worker.start()
    gate.set()
    await asyncio.gather(*blocked)
    with pytest.raises(InvalidPromptError):
        await worker.submit(lambda: stream.tracker.add_prompt(1, box=[5, 5, 1, 1]))
    worker.stop()
    assert not worker.alive


async def test_a_rejected_frame_is_not_encoded_and_does_not_stop_others(
    graphs: TorchGraphs,
) -> None:
    loop = asyncio.get_running_loop()
    worker = InferenceWorker(graphs)
    good, bad = (
        StreamSession(StreamTracker(graphs), loop),
        StreamSession(StreamTracker(graphs), loop),
    )
    results: list[StreamResult] = []
    for s in (good, bad):
        worker.attach(s)
    good.add_sink(results.append)
    image = moving_scene(1)[0]
    bad.submit_frame(_frame(5, image))
    bad.tracker.step(image, seq=9)  # the bad stream's next frame now has an old seq
    good.submit_frame(_frame(0, image))
    worker.start()
    deadline = loop.time() + 10
    while not results and loop.time() < deadline:
        await asyncio.sleep(0.02)
    worker.stop()
    assert [r.frame.seq for r in results] == [0]
    assert worker.frames_encoded == 1  # the rejected frame never reached the encoder
    assert bad.counters.errors == 1 and "seq must increase" in (bad.counters.last_error or "")


def _nice_of(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


async def test_the_inference_thread_runs_at_lower_priority(graphs: TorchGraphs) -> None:
    """Its OpenMP helpers, started by it for torch, inherit the lower priority too."""
    before = set(os.listdir("/proc/self/task"))
    worker = InferenceWorker(graphs, nice=7)
    worker.start()
    try:
        tracker = StreamTracker(graphs)
        await worker.submit(lambda: tracker.step(moving_scene(1)[0], 0))
        assert worker._thread is not None and worker._thread.native_id is not None
        assert _nice_of(worker._thread.native_id) == 7
        helpers = {int(t) for t in set(os.listdir("/proc/self/task")) - before}
        helpers.discard(worker._thread.native_id)
        if torch.get_num_threads() > 1:
            assert any(_nice_of(t) == 7 for t in helpers)
    finally:
        worker.stop()
