"""What of the TensorRT path can be checked without a GPU."""

from __future__ import annotations

import importlib.util

import pytest

from streamseg.backends.base import ModelGeometry
from streamseg.backends.trt_build import (
    Profile,
    TensorRTUnavailableError,
    batch_profile,
    memory_attention_profile,
    plan_cache_key,
    require_tensorrt,
)

TINY = ModelGeometry(
    image_size=1024, hidden_dim=256, mem_dim=64, num_maskmem=7, max_obj_ptrs=16, feat_size=64
)


def test_memory_attention_profile_covers_the_bank() -> None:
    p = memory_attention_profile(TINY, max_cond_frames=4, max_objects=16)
    lo, opt, hi = p.shapes["memory"]
    assert lo == (4096, 1, 64)  # one prompted frame
    assert opt == (7 * 4096, 1, 64)  # steady state: 1 prompted + 6 recent
    assert hi == ((4 + 6) * 4096, 16, 64)  # every capped prompted frame + 6 recent
    lo, opt, hi = p.shapes["pointers"]
    assert (lo[0], opt[0], hi[0]) == (4, 16 * 4, (4 + 15) * 4)  # 256/64 = 4 tokens each
    assert p.shapes["curr"][2] == (4096, 16, 256)
    for shapes in p.shapes.values():
        assert all(a <= b <= c for a, b, c in zip(*shapes, strict=True))


def test_batch_profile_for_decoders() -> None:
    p = batch_profile({"pix_feat": (256, 64, 64), "coords": (1, 2), "labels": (1,)}, 8, points=2)
    assert p.shapes["pix_feat"] == ((1, 256, 64, 64), (1, 256, 64, 64), (8, 256, 64, 64))
    assert p.shapes["coords"] == ((1, 1, 2), (1, 2, 2), (8, 32, 2))


def test_plan_cache_key_changes_with_every_ingredient() -> None:
    prof = memory_attention_profile(TINY, 4, 16)
    base = ("a" * 64, "10.13.0", "NVIDIA H100", (9, 0), "fp16", prof)
    keys = {plan_cache_key(*base)}
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "11.0.0", *base[2:]),
        (*base[:2], "NVIDIA L4", *base[3:]),
        (*base[:3], (8, 9), *base[4:]),
        (*base[:4], "fp32", prof),
        (*base[:5], memory_attention_profile(TINY, 4, 8)),
    ]
    for v in variants:
        keys.add(plan_cache_key(*v))  # type: ignore[arg-type]
    assert len(keys) == 7
    assert plan_cache_key(*base) == plan_cache_key(*base)


def test_profile_json_round_trip() -> None:
    p = Profile({"x": ((1, 2), (3, 4), (5, 6))})
    assert p.as_json() == {"x": [[1, 2], [3, 4], [5, 6]]}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_clear_error_without_tensorrt() -> None:
    with pytest.raises(TensorRTUnavailableError, match="NVIDIA's index"):
        require_tensorrt()


def test_every_exported_graph_has_a_profile() -> None:
    from streamseg.backends.export import DECODER_VARIANTS, decoder_name
    from streamseg.backends.trt_build import graph_profiles

    names = set(graph_profiles(TINY, 4, 16))
    expected = {"image_encoder", "memory_attention", "memory_encoder", "pointer_pos"}
    expected |= {decoder_name(m, k) for m, k in DECODER_VARIANTS}
    assert names == expected


def test_build_engine_command_explains_missing_tensorrt(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT present")
    from streamseg.cli import main

    (tmp_path / "manifest.json").write_text(
        '{"geometry": {"image_size": 128, "hidden_dim": 64, "mem_dim": 32, "num_maskmem": 7,'
        ' "max_obj_ptrs": 16, "feat_size": 8}, "graphs": {"pointer_pos": {"file": "p.onnx"}}}'
    )
    (tmp_path / "p.onnx").write_bytes(b"x")
    assert main(["build-engine", str(tmp_path)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


def test_buffer_pool_reuses_steady_shapes() -> None:
    import torch

    from streamseg.backends.tensorrt_graphs import BufferPool, signature

    pool = BufferPool(torch.device("cpu"))
    a = pool.get("x", (2, 3), torch.float32)
    assert pool.get("x", (2, 3), torch.float32) is a and pool.allocations == 1
    assert pool.get("x", (4, 3), torch.float32) is not a and pool.allocations == 2
    assert pool.get("x", (4, 3), torch.float16).dtype == torch.float16
    s1 = signature({"b": torch.zeros(1, 2), "a": torch.zeros(3)})
    assert s1 == (("a", (3,)), ("b", (1, 2)))
    assert s1 != signature({"b": torch.zeros(1, 3), "a": torch.zeros(3)})


def test_tensorrt_backend_explains_itself_without_tensorrt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT present")
    from streamseg.backends.select import make_graphs
    from streamseg.model.build import build_sam2
    from tests.conftest import TEST_CONFIG

    with pytest.raises(TensorRTUnavailableError, match="not installed"):
        make_graphs("tensorrt", build_sam2(TEST_CONFIG), "test", engines=tmp_path)
    assert type(make_graphs("auto", build_sam2(TEST_CONFIG), "test")).__name__ == "TorchGraphs"


def test_onnxruntime_tensorrt_provider_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streamseg.backends.trt_build import ort_tensorrt_options

    p = Profile({"b": ((1, 2), (3, 4), (5, 6)), "a": ((1,), (2,), (3,))})
    options = ort_tensorrt_options(p, tmp_path, fp16=True)
    assert options["trt_profile_min_shapes"] == "a:1,b:1x2"
    assert options["trt_profile_opt_shapes"] == "a:2,b:3x4"
    assert options["trt_profile_max_shapes"] == "a:3,b:5x6"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)
