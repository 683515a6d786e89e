"""No hidden host-device synchronisation in a step: one copy to the host per frame for
all tracks, the stage clock read once, no per-object scalar reads.

On the CPU nothing synchronises, so the tests count what would on a GPU: Python-level
reads of tensor values (`.item()`, `float()`, `bool()`, `.cpu()`, `.numpy()`,
`.tolist()`) and, through a dispatch mode, the aten operators whose CUDA kernels wait
for the device (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, tensor-count
`repeat_interleave`, scalar reads inside library code). With CUDA, a step also runs
under `torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model import segmenter as segmenter_module
from streamseg.model import tracker as tracker_module
from streamseg.model.build import build_sam2
from streamseg.model.segmenter import ImagePrompt, ImageSegmenter
from streamseg.model.stages import StageClock
from streamseg.model.tracker import StreamTracker
from streamseg.model.transfer import to_host
from streamseg.pipeline.worker import select_device
from tests.conftest import TEST_CONFIG

# aten operators that read device memory on the host (a CUDA synchronisation).
SYNCING_OPS = {"item", "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select",
               "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "equal",
               "allclose"}  # fmt: skip
READS = ("cpu", "numpy", "tolist", "item", "__bool__", "__float__", "__int__")


class _SyncingOps(TorchDispatchMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        counted_repeat = name == "repeat_interleave" and isinstance(
            args[-1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor
        )
        masked = name.startswith(("index", "_index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ())
        )
        if name in SYNCING_OPS or masked or (counted_repeat and kwargs.get("output_size") is None):
            self.counts[f"aten.{name}"] += 1
        return func(*args, **kwargs)


class SyncCounter:
    """Counts `to_host` calls and every host read of tensor values outside them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self._inside = 0
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._reading(name, original))
        for module in (tracker_module, segmenter_module):
            monkeypatch.setattr(module, "to_host", self._to_host)
        resolve = StageClock.resolve
        monkeypatch.setattr(StageClock, "resolve", self._counted("clock.resolve", resolve))

    def _reading(self, name: str, original: Any) -> Any:
        def read(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._inside:
                self.counts[f"Tensor.{name}"] += 1
            return original(t, *args, **kwargs)

        return read

    def _counted(self, name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return original(*args, **kwargs)

        return call

    def _to_host(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        self.counts["to_host"] += 1
        self._inside += 1
        try:
            return to_host(*tensors)
        finally:
            self._inside -= 1

    @contextlib.contextmanager
    def watching(self) -> Iterator[Counter[str]]:
        self.counts.clear()
        with _SyncingOps(self.counts):
            yield self.counts


@pytest.fixture
def tracker(scene: list[np.ndarray]) -> StreamTracker:
    """Two tracks from frame 0 and one from frame 2: two memory layouts, two batches."""
    tracker = StreamTracker(TorchGraphs(build_sam2(TEST_CONFIG, seed=0)))
    tracker.step(scene[0], seq=0)
    for track_id, point in enumerate(([30, 30], [90, 40]), start=1):
        tracker.add_prompt(track_id, points=[point], labels=[1])
    tracker.step(scene[1], seq=1)
    tracker.step(scene[2], seq=2)
    tracker.add_prompt(3, points=[[60, 70]], labels=[1])
    return tracker


def test_to_host_round_trips_several_dtypes_in_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: calls.append(1) or original(t))
    masks = torch.rand(3, 5, 7) > 0.5
    logits = torch.randn(3, 4, 4)
    scores = torch.randn(3, 2)
    got = to_host(masks, logits, scores)
    assert len(calls) == 1
    for host, tensor in zip(got, (masks, logits, scores), strict=True):
        assert host.dtype == tensor.numpy().dtype and np.array_equal(host, tensor.numpy())


def test_the_counter_sees_what_would_synchronise(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = SyncCounter(monkeypatch)
    t = torch.randn(6)
    with counter.watching() as counts, torch.inference_mode():
        _ = float(t[0]), bool(t[1] > 0), t.tolist(), t[t > 0]
        t.repeat_interleave(t.long().abs() + 1)
        t.repeat_interleave(2)  # a Python int count: no read of device memory
    assert counts["Tensor.__float__"] == counts["Tensor.__bool__"] == 1
    assert counts["Tensor.tolist"] == 1
    assert counts["aten.index"] + counts["aten.nonzero"] >= 1  # boolean indexing
    assert counts["aten.repeat_interleave"] == 1


def test_a_step_with_three_tracks_in_two_batches_syncs_once(
    monkeypatch: pytest.MonkeyPatch, tracker: StreamTracker, scene: list[np.ndarray]
) -> None:
    layouts = {t.memory.layout(3).shape for t in tracker._tracks.values()}
    assert len(layouts) == 2  # the newer track has fewer memories
    counter = SyncCounter(monkeypatch)
    with counter.watching() as counts:
        result = tracker.step(scene[3], seq=3)
    assert len(result.tracks) == 3
    assert counts == {"to_host": 1, "clock.resolve": 1}


def test_a_prompt_on_the_newest_frame_syncs_once(
    monkeypatch: pytest.MonkeyPatch, tracker: StreamTracker
) -> None:
    counter = SyncCounter(monkeypatch)
    with counter.watching() as counts:
        tracker.add_prompt(4, box=[10, 10, 50, 50])
    assert counts == {"to_host": 1, "clock.resolve": 1}


def test_frames_encoded_as_a_batch_sync_once_each(
    monkeypatch: pytest.MonkeyPatch, tracker: StreamTracker, scene: list[np.ndarray]
) -> None:
    """The worker's path: one encoder batch for several streams, then a step each."""
    other = StreamTracker(tracker.graphs)
    other.step(scene[0], seq=0)
    other.add_prompt(1, points=[[40, 40]], labels=[1])
    counter = SyncCounter(monkeypatch)
    with counter.watching() as counts:
        clock = StageClock(tracker_module.StageTimes(), tracker.graphs.device)
        with tracker.inference():
            with clock.stage("preprocess"):
                images = torch.cat([tracker.preprocess(scene[3]), other.preprocess(scene[1])])
            with clock.stage("encoder"):
                features = tracker.graphs.encode_image(images)
        for i, (stream, seq) in enumerate(((tracker, 3), (other, 1))):
            stream.step_encoded(features.select(i), seq, 128, 96, clock, 2)
    assert counts == {"to_host": 2, "clock.resolve": 4}  # each step's, and the batch's


def test_segmenting_prompts_of_several_sizes_syncs_once(
    monkeypatch: pytest.MonkeyPatch, scene: list[np.ndarray]
) -> None:
    segmenter = ImageSegmenter(TorchGraphs(build_sam2(TEST_CONFIG, seed=0)))
    embedding = segmenter.encode(scene[0])
    prompts = [ImagePrompt(points=((30.0, 30.0),), labels=(1,)),
               ImagePrompt(box=(10.0, 10.0, 60.0, 60.0)),
               ImagePrompt(points=((90.0, 40.0),), labels=(1,))]  # fmt: skip
    counter = SyncCounter(monkeypatch)
    with counter.watching() as counts:
        masks, _ = segmenter.segment(embedding, prompts)
    assert counts == {"to_host": 1}
    # Results come back in prompt order although prompts decode grouped by size.
    alone = [segmenter.segment(embedding, [p])[0][0] for p in prompts]
    for got, want in zip(masks, alone, strict=True):
        assert np.array_equal(got.mask, want.mask) and got.score == pytest.approx(want.score)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_step_runs_under_sync_debug_mode_error(scene: list[np.ndarray]) -> None:
    tracker = StreamTracker(TorchGraphs(build_sam2(TEST_CONFIG, seed=0, device="cuda")))
    tracker.step(scene[0], seq=0)
    for track_id, point in enumerate(([30, 30], [90, 40]), start=1):
        tracker.add_prompt(track_id, points=[point], labels=[1])
    tracker.step(scene[1], seq=1)  # first-use allocations happen outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = tracker.step(scene[2], seq=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(result.tracks) == 2


def test_the_worker_selects_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    select_device(torch.device("cpu"))
    select_device(torch.device("cuda:1"))
    assert chosen == [torch.device("cuda:1")]
