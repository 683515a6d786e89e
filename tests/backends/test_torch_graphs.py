"""The torch backend's channels-last image encoder (on by default on CUDA only): the
same features and masks as the contiguous path, exercised here on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from tests.conftest import TEST_CONFIG, sensitise


def _graphs(channels_last: bool | None) -> TorchGraphs:
    return TorchGraphs(sensitise(build_sam2(TEST_CONFIG, seed=0)), channels_last=channels_last)


def test_channels_last_is_a_cuda_default_only() -> None:
    graphs = _graphs(None)
    assert not graphs.channels_last
    conv = graphs.model.image_encoder.trunk.patch_embed.proj.weight
    assert conv.is_contiguous()


def test_channels_last_encoder_gives_the_contiguous_features(scene: list[np.ndarray]) -> None:
    plain, nhwc = _graphs(False), _graphs(True)
    conv = nhwc.model.image_encoder.trunk.patch_embed.proj.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = torch.cat([StreamTracker(plain).preprocess(f) for f in scene[:2]])
    with torch.inference_mode():
        want, got = plain.encode_image(images), nhwc.encode_image(images)
    assert got.high_res_0.is_contiguous(memory_format=torch.channels_last)
    for name in ("high_res_0", "high_res_1", "embed", "pos"):
        assert torch.allclose(getattr(want, name), getattr(got, name), atol=1e-5), name
    # One frame of a batch is kept without a copy of the whole batch, in either layout.
    one = got.select(1)
    assert one.high_res_0.untyped_storage().nbytes() == one.high_res_0.nbytes
    assert torch.allclose(one.high_res_0, want.high_res_0[1:2], atol=1e-5)


def test_channels_last_tracking_gives_the_same_masks(scene: list[np.ndarray]) -> None:
    trackers = [StreamTracker(_graphs(flag)) for flag in (False, True)]
    for seq, frame in enumerate(scene[:6]):
        results = [tracker.step(frame, seq) for tracker in trackers]
        if seq == 0:
            for tracker in trackers:
                tracker.add_prompt(1, points=[[40, 40]], labels=[1])
                tracker.add_prompt(2, box=[60, 20, 110, 70])
        for a, b in zip(*(r.tracks for r in results), strict=True):
            assert np.abs(a.low_res_logits - b.low_res_logits).max() < 1e-4
            assert np.array_equal(a.mask, b.mask)
