"""Real-valued RoPE equals sam2's complex RoPE, and memory attention built on it
exports to ONNX with a dynamic memory length (checked with ONNX Runtime on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamseg.backends.rope import MemoryAttentionGraph, real_valued_rope
from streamseg.model.build import build_sam2
from tests.conftest import TEST_CONFIG


@pytest.fixture(scope="module")
def memory_attention() -> torch.nn.Module:
    return build_sam2(TEST_CONFIG, seed=0).memory_attention


def _inputs(frames: int, pointers: int, hw: int = 64, c: int = 64, cm: int = 32, batch: int = 2):
    g = torch.Generator().manual_seed(frames * 100 + pointers)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return (r(hw, batch, c), r(hw, batch, c), r(frames * hw, batch, cm), r(frames * hw, batch, cm),
            r(pointers, batch, cm), r(pointers, batch, cm))  # fmt: skip


@pytest.mark.parametrize(("frames", "pointers"), [(1, 2), (3, 8), (7, 32)])
def test_real_rope_equals_complex(
    memory_attention: torch.nn.Module, frames: int, pointers: int
) -> None:
    graph = MemoryAttentionGraph(memory_attention).eval()
    args = _inputs(frames, pointers)
    with torch.inference_mode():
        reference = graph(*args)
        with real_valued_rope(memory_attention):
            real = graph(*args)
        again = graph(*args)
    assert torch.allclose(real, reference, atol=1e-5), (real - reference).abs().max()
    assert torch.equal(again, reference)  # the swap is undone


def test_onnx_export_with_dynamic_memory_length(
    memory_attention: torch.nn.Module, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    graph = MemoryAttentionGraph(memory_attention).eval()
    path = tmp_path / "memory_attention.onnx"
    names = ["curr", "curr_pos", "memory", "memory_pos", "pointers", "pointers_pos"]
    with torch.no_grad(), real_valued_rope(memory_attention):
        torch.onnx.export(
            graph,
            _inputs(2, 4),
            str(path),
            input_names=names,
            output_names=["out"],
            dynamic_axes={
                "curr": {1: "batch"},
                "curr_pos": {1: "batch"},
                "memory": {0: "memory", 1: "batch"},
                "memory_pos": {0: "memory", 1: "batch"},
                "pointers": {0: "pointers", 1: "batch"},
                "pointers_pos": {0: "pointers", 1: "batch"},
                "out": {1: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames, pointers, batch in [(1, 2, 1), (7, 32, 3), (4, 16, 2)]:
        args = _inputs(frames, pointers, batch=batch)
        with torch.inference_mode():
            expected = graph(*args).numpy()
        (got,) = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()
