"""Real-valued RoPE equals sam2's complex RoPE bit for bit, and memory attention built
on it exports to ONNX with dynamic memory and pointer counts (ONNX Runtime, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamseg.backends.rope import (
    ROTARY_SCOPE,
    MemoryAttentionGraph,
    RotaryEncoding,
    real_valued_rope,
    rope_tables,
)
from streamseg.model.build import build_sam2
from tests.conftest import TEST_CONFIG

NAMES = ["curr", "curr_pos", "memory", "memory_pos", "pointers", "pointers_pos"]


@pytest.fixture(scope="module")
def memory_attention() -> torch.nn.Module:
    module: torch.nn.Module = build_sam2(TEST_CONFIG, seed=0).memory_attention
    return module


def _inputs(
    frames: int, pointers: int, batch: int = 2, hw: int = 64, c: int = 64, cm: int = 32
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(frames * 100 + pointers)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return (r(hw, batch, c), r(hw, batch, c), r(frames * hw, batch, cm),
            r(frames * hw, batch, cm), r(pointers, batch, cm), r(pointers, batch, cm))  # fmt: skip


@pytest.mark.parametrize(("dim", "side", "frames"), [(32, 8, 1), (64, 16, 3), (256, 64, 2)])
def test_rotation_equals_sams_complex_rotation(dim: int, side: int, frames: int) -> None:
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    g = torch.Generator().manual_seed(dim)
    q = torch.randn(2, 1, side * side, dim, generator=g)
    k = torch.randn(2, 1, frames * side * side, dim, generator=g)
    cis = compute_axial_cis(dim, side, side)
    q_ref, k_ref = apply_rotary_enc(q, k, cis, repeat_freqs_k=True)
    rotary = RotaryEncoding(10000.0, cis.real.contiguous(), cis.imag.contiguous())
    q_real, k_real = rotary(q, k, 0)
    assert torch.equal(q_real, q_ref) and torch.equal(k_real, k_ref)
    # the traced fallback tables agree with sam2's to float32 rounding
    cos, sin = rope_tables(dim, side, 10000.0)
    assert float((cos - cis.real).abs().max()) < 1e-6
    assert float((sin - cis.imag).abs().max()) < 1e-6


@pytest.mark.parametrize(("frames", "pointers"), [(1, 2), (3, 8), (7, 32), (2, 0)])
def test_memory_attention_equals_the_complex_version(
    memory_attention: torch.nn.Module, frames: int, pointers: int
) -> None:
    graph = MemoryAttentionGraph(memory_attention).eval()
    args = _inputs(frames, pointers)
    with torch.inference_mode():
        reference = graph(*args)
        with real_valued_rope(memory_attention, side=8):
            real = graph(*args)
        again = graph(*args)
    assert torch.equal(real, reference), float((real - reference).abs().max())
    assert torch.equal(again, reference)  # the swap is undone
    assert not any(hasattr(m, ROTARY_SCOPE) for m in memory_attention.modules())


def test_onnx_export_with_dynamic_memory_length(
    memory_attention: torch.nn.Module, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    graph = MemoryAttentionGraph(memory_attention).eval()
    path = tmp_path / "memory_attention.onnx"
    tokens = {0: "tokens", 1: "batch"}
    with torch.no_grad(), real_valued_rope(memory_attention, side=8):
        torch.onnx.export(
            graph,
            _inputs(2, 4),
            str(path),
            input_names=NAMES,
            output_names=["out"],
            dynamic_axes={"curr": {1: "batch"}, "curr_pos": {1: "batch"}, "out": {1: "batch"}}
            | {name: tokens for name in NAMES[2:]},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames, pointers, batch in [(1, 2, 1), (7, 32, 3), (4, 16, 2)]:
        args = _inputs(frames, pointers, batch=batch)
        with torch.inference_mode():
            expected = graph(*args).numpy()
        (got,) = session.run(None, {n: a.numpy() for n, a in zip(NAMES, args, strict=True)})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()
