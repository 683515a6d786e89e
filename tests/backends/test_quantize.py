"""INT8 graphs (`--backend onnx --precision int8`): what is quantized, the cache, which
combinations are refused, and tracking parity against torch FP32 on the test config.

Measured here (test config, sensitised, 30 frames, 3 objects): per-graph relative
error 1.3% (image encoder) and 0.7% (memory attention), logit correlation >= 0.9998,
mask IoU >= 0.977 free-running.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.backends.select import check_precision, export_folder, make_graphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.bench.backend import REFERENCE, track_in_lockstep
from streamseg.bench.drift import RecordingGraphs, replay, stepped_copy
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from tests.conftest import TEST_CONFIG, sensitise

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from streamseg.backends.onnx_graphs import OnnxGraphs  # noqa: E402
from streamseg.backends.quantize import INT8_GRAPHS, RECIPE  # noqa: E402

GRAPH_ERROR_BOUND = 0.05  # mean relative error of a graph's outputs on tracking inputs
CORRELATION_BOUND = 0.99  # low-res mask logits, every frame and object


@pytest.fixture(scope="module")
def model() -> Any:
    return sensitise(build_sam2(TEST_CONFIG, seed=0))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def int8(model: Any, engines: Path) -> OnnxGraphs:
    graphs = make_graphs("onnx", model, "test", engines, precision="int8")
    assert isinstance(graphs, OnnxGraphs)
    return graphs


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_the_chosen_graphs_are_quantized_and_nothing_else(int8: OnnxGraphs) -> None:
    manifest = json.loads((int8.folder / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["quantization"]["recipe"] == RECIPE
    for name, entry in manifest["graphs"].items():
        ops = _ops(int8.folder / entry["file"])
        if name in INT8_GRAPHS:
            assert entry["precision"] == "int8"
            assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0, name
            # attention products (no constant weight) stay FP32
            assert ops["MatMul"] > 0, name
        else:
            assert entry["precision"] == "fp32"
            assert ops["MatMulInteger"] == 0, name
        # convolutions and table lookups (RoPE's cos/sin) are never quantized
        assert ops["ConvInteger"] == 0 and ops["DequantizeLinear"] == 0, name
    assert int8.providers("image_encoder") == ["CPUExecutionProvider"]


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_quantized_export_is_cached_and_requantized_only_for_a_new_recipe(
    model: Any, engines: Path, int8: OnnxGraphs
) -> None:
    fp32 = export_folder(model, "test", "fp32", engines)
    assert int8.folder == export_folder(model, "test", "int8", engines)
    assert int8.folder.name.split("-")[:2] == [str(model.image_size), "int8"]
    before, fp32_before = _stamps(int8.folder), _stamps(fp32)
    make_graphs("onnx", model, "test", engines, precision="int8")
    assert _stamps(int8.folder) == before  # reused: nothing written again
    assert _stamps(fp32) == fp32_before  # and the FP32 source not exported again

    manifest_path = int8.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["quantization"]["recipe"] = RECIPE - 1
    manifest_path.write_text(json.dumps(manifest))
    make_graphs("onnx", model, "test", engines, precision="int8")
    after = _stamps(int8.folder)
    assert after["image_encoder.onnx"] != before["image_encoder.onnx"]  # quantized again
    assert json.loads(manifest_path.read_text())["quantization"]["recipe"] == RECIPE
    assert _stamps(fp32) == fp32_before  # from the FP32 export already there


@pytest.mark.parametrize(
    ("backend", "precision", "device", "reason"),
    [
        ("torch", "int8", "cpu", "needs --backend onnx"),
        ("auto", "int8", "cpu", "needs --backend onnx"),
        ("tensorrt", "fp16", "cuda", "needs --backend onnx"),
        ("onnx", "int8", "cuda", "runs on the CPU only"),
        ("onnx", "int8", "cuda:1", "runs on the CPU only"),
        ("onnx", "int4", "cpu", "precision must be one of fp32, fp16, int8"),
    ],
)
def test_precisions_a_backend_cannot_run_are_refused(
    backend: str, precision: str, device: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        check_precision(backend, precision, device)


def test_valid_precisions_pass() -> None:
    for precision in (None, "fp32", "fp16", "int8"):
        check_precision("onnx", precision, "cpu")
    check_precision("torch", None, "cuda")
    check_precision("onnx", "fp16", "cuda")


def test_load_model_refuses_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamseg import assembly

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the network was built before the precision was checked")

    monkeypatch.setattr(assembly, "build_network", never)
    with pytest.raises(ValueError, match="needs --backend onnx"):
        assembly.load_model("test", weights="random", backend="torch", precision="int8")


def test_serve_refuses_int8_off_the_cpu_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    from streamseg.cli import main

    rc = main(["serve", "--model", "test", "--weights", "random", "--backend", "onnx",
               "--precision", "int8", "--device", "cuda"])  # fmt: skip
    assert rc == 2
    assert "--precision int8 runs on the CPU only" in capsys.readouterr().err
    assert main(["serve", "--model", "test", "--precision", "int8"]) == 2  # torch backend
    assert "needs --backend onnx" in capsys.readouterr().err


def test_int8_tracks_like_torch_fp32(model: Any, int8: OnnxGraphs, scene: list[np.ndarray]) -> None:
    """20 frames (the bank holds 7), the three shapes prompted with boxes on frame 0."""
    graphs = {REFERENCE: TorchGraphs(model), "onnx int8": int8}
    _, drift = track_in_lockstep(graphs, scene[:20], objects=3)
    report = drift["onnx int8"].summary()
    print(f"\nint8 vs torch fp32 (test config): {report}")
    errors = report["graph_relative_error"]
    assert errors["encode_image"]["max"] > 1e-4  # really quantized
    assert max(e["max"] for e in errors.values()) <= GRAPH_ERROR_BOUND
    assert errors["decode"]["max"] <= 1e-4  # an FP32 graph: only its inputs could differ
    assert report["one_step"]["corr_min"] >= CORRELATION_BOUND
    assert report["free_running"]["corr_min"] >= CORRELATION_BOUND
    assert report["free_running"]["iou_min"] >= 0.95
    assert report["free_running"]["samples"] == 20 * 3


def test_a_copy_on_the_same_graphs_steps_exactly_like_the_reference(
    model: Any, scene: list[np.ndarray]
) -> None:
    """The one-step view is only meaningful if copying the state loses nothing."""
    recorder = RecordingGraphs(TorchGraphs(model))
    tracker = StreamTracker(recorder.as_graphs())
    tracker.step(scene[0], seq=0)
    tracker.add_prompt(1, box=[14, 22, 38, 48])
    for t in range(1, 6):
        copy = stepped_copy(tracker, recorder, recorder.inner)
        assert copy.graphs is recorder.inner
        expected = tracker.step(scene[t], seq=t).tracks[0]
        got = copy.step(scene[t], seq=t).tracks[0]
        assert np.array_equal(expected.low_res_logits, got.low_res_logits), t
    with torch.inference_mode():
        assert replay(recorder.calls, recorder.inner) == {
            name: 0.0 for name in ("encode_image", "attend_memory", "decode", "encode_memory")
        }


def test_export_command_writes_the_int8_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamseg.cli import main

    assert main(["export", "--model", "test", "--weights", "random", "--precision", "int8",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    label, folder = capsys.readouterr().out.strip().split(": ")
    assert label == "int8" and Path(folder).parent == tmp_path / "test"
    assert json.loads((Path(folder) / "manifest.json").read_text())["precision"] == "int8"
    assert list((tmp_path / "test").glob("128-fp32-*/manifest.json"))  # its FP32 source
