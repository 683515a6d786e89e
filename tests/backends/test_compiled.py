"""The torch backend compiled by inductor: same masks as eager, and a fixed set of
graphs however the memory layouts and batches change while tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamseg.assembly import load_model
from streamseg.backends.compiled import CompiledTorchGraphs, compile_graphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from tests.conftest import TEST_CONFIG, sensitise

POINTS = ([30, 30], [90, 40], [60, 70])


def _graphs() -> TorchGraphs:
    return TorchGraphs(sensitise(build_sam2(TEST_CONFIG, seed=0)))


@pytest.fixture(scope="module")
def compiled() -> CompiledTorchGraphs:
    # Compiled code is cached per function, not per instance: a graph another test
    # compiled for this config would be reused and not counted here.
    torch._dynamo.reset()
    graphs = CompiledTorchGraphs(sensitise(build_sam2(TEST_CONFIG, seed=0)))
    graphs.warm_up(max_batch=2)
    return graphs


@pytest.mark.slow
def test_warm_up_compiles_one_static_and_one_dynamic_graph_per_part(
    compiled: CompiledTorchGraphs,
) -> None:
    assert compiled.compiles == {"image_encoder": 2, "memory_attention": 2}
    assert compiled.compile_s > 0


@pytest.mark.slow
def test_tracking_matches_eager_without_recompiling(
    compiled: CompiledTorchGraphs, scene: list[np.ndarray]
) -> None:
    before = dict(compiled.compiles)
    eager, ours = StreamTracker(_graphs()), StreamTracker(compiled)
    worst = 0.0
    for seq, frame in enumerate(scene[:14]):
        results = [tracker.step(frame, seq) for tracker in (eager, ours)]
        prompts: list[tuple[int, list[int]]] = []
        if seq == 0:
            prompts = list(enumerate(POINTS, start=1))
        elif seq == 7:  # a correction: this track's memory layout differs from the others'
            prompts = [(2, [50, 50])]
        for track_id, point in prompts:
            for tracker in (eager, ours):
                tracker.add_prompt(track_id, points=[point], labels=[1])
        for a, b in zip(*(r.tracks for r in results), strict=True):
            worst = max(worst, float(np.abs(a.low_res_logits - b.low_res_logits).max()))
    assert ours.track_ids == [1, 2, 3]
    assert worst < 1e-3
    assert compiled.compiles == before  # 1-7 memories, 1-15 pointers, groups of 1 and 2


@pytest.mark.slow
def test_a_batch_of_images_matches_eager(
    compiled: CompiledTorchGraphs, scene: list[np.ndarray]
) -> None:
    eager = _graphs()
    before = dict(compiled.compiles)
    for batch in (3, 2):
        with torch.inference_mode():  # as the worker does (tensors made outside differ)
            images = torch.cat([StreamTracker(eager).preprocess(f) for f in scene[:batch]])
            want, got = eager.encode_image(images), compiled.encode_image(images)
        for name in ("high_res_0", "high_res_1", "embed", "pos"):
            assert torch.allclose(getattr(want, name), getattr(got, name), atol=1e-4), name
    assert compiled.compiles == before


def test_unknown_parts_are_refused() -> None:
    model = build_sam2(TEST_CONFIG, seed=0)
    with pytest.raises(ValueError, match="compile parts"):
        CompiledTorchGraphs(model, parts=("decoder",))
    with pytest.raises(ValueError, match="compile parts"):
        CompiledTorchGraphs(model, parts=())


def test_compile_wraps_torch_graphs_and_keeps_other_backends() -> None:
    graphs = TorchGraphs(build_sam2(TEST_CONFIG, seed=0), channels_last=True)
    wrapped = compile_graphs(graphs)
    assert isinstance(wrapped, CompiledTorchGraphs) and wrapped.model is graphs.model
    assert wrapped.channels_last and wrapped.compiles == {}  # compiled on first use
    assert compile_graphs(wrapped) is wrapped


def test_compile_with_an_exported_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="torch backend"):
        load_model("test", weights="random", backend="onnx", compile=True)


@pytest.mark.slow
def test_instances_share_compiled_code_but_not_weights(
    compiled: CompiledTorchGraphs, scene: list[np.ndarray]
) -> None:
    """Weights are graph inputs, not constants folded in: a second model of the same
    shapes reuses the compiled code and still gets its own features."""
    other_model = build_sam2(TEST_CONFIG, seed=5)
    other, eager = CompiledTorchGraphs(other_model), TorchGraphs(other_model)
    with torch.inference_mode():
        images = StreamTracker(eager).preprocess(scene[0])
        want, got = eager.encode_image(images), other.encode_image(images)
        mine = compiled.encode_image(images)
    assert other.compiles == {}
    assert torch.allclose(want.embed, got.embed, atol=1e-4)
    assert not torch.allclose(mine.embed, got.embed, atol=1e-2)
