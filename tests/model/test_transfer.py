"""No hidden host-device synchronisation in a step: one copy to the host per frame for
all tracks, the stage clock read once, no per-object scalar reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.stages import StageClock
from streamseg.model.tracker import StreamTracker
from streamseg.model.transfer import to_host
from streamseg.pipeline.worker import select_device
from tests.conftest import TEST_CONFIG


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


class _Counts:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cpu = self.item = self.resolve = 0
        cpu, item, resolve = torch.Tensor.cpu, torch.Tensor.item, StageClock.resolve

        def count_cpu(t: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            self.cpu += 1
            return cpu(t, *a, **k)

        def count_item(t: torch.Tensor) -> Any:
            self.item += 1
            return item(t)

        def count_resolve(clock: StageClock) -> Any:
            self.resolve += 1
            return resolve(clock)

        monkeypatch.setattr(torch.Tensor, "cpu", count_cpu)
        monkeypatch.setattr(torch.Tensor, "item", count_item)
        monkeypatch.setattr(torch.Tensor, "__float__", lambda t: float(count_item(t)))
        monkeypatch.setattr(StageClock, "resolve", count_resolve)


def test_a_step_with_three_tracks_syncs_once(
    monkeypatch: pytest.MonkeyPatch, scene: list[np.ndarray]
) -> None:
    tracker = StreamTracker(TorchGraphs(build_sam2(TEST_CONFIG, seed=0)))
    tracker.step(scene[0], seq=0)
    for track_id, point in enumerate(([30, 30], [90, 40], [60, 70]), start=1):
        tracker.add_prompt(track_id, points=[point], labels=[1])
    counts = _Counts(monkeypatch)
    result = tracker.step(scene[1], seq=1)
    assert len(result.tracks) == 3
    assert (counts.cpu, counts.item, counts.resolve) == (1, 0, 1)


def test_the_worker_selects_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    select_device(torch.device("cpu"))
    select_device(torch.device("cuda:1"))
    assert chosen == [torch.device("cuda:1")]
