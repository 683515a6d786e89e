"""Exported graphs (FP32 and FP16) run by ONNX Runtime on CPU against the torch
reference: graph by graph, and over a tracked sequence longer than the memory bank.

Measured on the `test` config (random weights, sensitised embeddings): FP32 within
1.5e-6 of torch on every graph; FP16 within 3e-3 on outputs of magnitude up to 8, and
tracker IoU >= 0.996 (ONNX Runtime CPU computes FP16 nodes in FP32 between FP16
roundings, so TensorRT's FP16 kernels will differ somewhat more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.backends.export import (
    GRAPH_NAMES,
    Fp16Policy,
    convert_to_fp16,
    export_precisions,
    onnx_scope,
)
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from tests.conftest import TEST_CONFIG, sensitise

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from streamseg.backends.onnx_graphs import OnnxGraphs  # noqa: E402

FP16_TOLERANCE = 1e-2  # relative to max(1, |reference|); measured worst is 9.5e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = sensitise(build_sam2(TEST_CONFIG, seed=0))
    root = tmp_path_factory.mktemp("engines")
    folders = {"fp32": root / "fp32", "fp16": root / "fp16"}
    manifests = export_precisions(model, "test", folders)
    return {
        "torch": TorchGraphs(model),
        "fp32": OnnxGraphs(folders["fp32"]),
        "fp16": OnnxGraphs(folders["fp16"]),
        "folders": folders,
        "manifests": manifests,
    }


def _worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs diff, max abs diff relative to max(1, |reference|))."""
    diff = rel = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, (x.shape, y.shape)
        d = float((x.float() - y.float()).abs().max())
        diff, rel = max(diff, d), max(rel, d / max(1.0, float(x.abs().max())))
    return diff, rel


def _graph_outputs(graphs: Any, geo: Any) -> dict[str, list[torch.Tensor]]:
    """Every graph on fixed inputs: batch 2, three points, both mask variants, several
    memory and pointer counts (the dynamic axes)."""
    g = torch.Generator().manual_seed(0)
    s, h, cm = geo.image_size, geo.feat_size, geo.mem_dim
    hw, splits = h * h, geo.hidden_dim // geo.mem_dim
    out: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        f = graphs.encode_image(torch.randn(2, 3, s, s, generator=g))
        out["image_encoder"] = [f.high_res_0, f.high_res_1, f.embed, f.pos]
        coords = torch.tensor([[[10.0, 20.0], [60.0, 70.0], [5.0, 5.0]]] * 2)
        labels = torch.tensor([[1, 0, 1]] * 2, dtype=torch.int32)
        prev = torch.randn(2, 1, 4 * h, 4 * h, generator=g)
        for multi in (False, True):
            for mask in (None, prev):
                for pts in ((coords, labels), (None, None)):
                    d = graphs.decode(f.embed, (f.high_res_0, f.high_res_1), *pts, mask, multi)
                    key = f"decoder multi={multi} mask={mask is not None} pts={pts[0] is not None}"
                    out[key] = [d.low_res_logits, d.iou, d.obj_ptr, d.object_score_logits]
        curr = f.embed.flatten(2).permute(2, 0, 1)
        pos = f.pos.flatten(2).permute(2, 0, 1).expand(-1, 2, -1)
        for frames, ptrs in ((1, 1), (7, 16), (10, 19)):
            n = frames * hw + ptrs * splits
            mem, mem_pos = torch.randn(n, 2, cm, generator=g), torch.randn(n, 2, cm, generator=g)
            key = f"memory_attention frames={frames} pointers={ptrs}"
            out[key] = [graphs.attend_memory(curr, pos, mem, mem_pos, ptrs * splits)]
        mask_in = torch.rand(2, 1, s, s, generator=g) * 20 - 10
        out["memory_encoder"] = list(
            graphs.encode_memory(f.embed, mask_in, torch.tensor([[1.0], [-1.0]]))
        )
        out["pointer_pos"] = [graphs.pointer_time_embedding(torch.tensor([1.0, 3.0, 7.0]) / 15)]
    return out


def test_manifests(exported: dict[str, Any]) -> None:
    for precision in ("fp32", "fp16"):
        folder, manifest = exported["folders"][precision], exported["manifests"][precision]
        assert manifest == json.loads((folder / "manifest.json").read_text())
        assert manifest["model"] == "test" and manifest["precision"] == precision
        assert manifest["opset"] == 17 and "TorchScript" in manifest["exporter"]
        assert set(manifest["graphs"]) == set(GRAPH_NAMES)
        for name, entry in manifest["graphs"].items():
            data = (folder / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert all(v["dtype"] in ("float32", "int32") for v in entry["inputs"].values())
            assert all(v["dtype"] == "float32" for v in entry["outputs"].values())
            expected = "fp32" if precision == "fp32" or name == "pointer_pos" else "fp16"
            assert entry["precision"] == expected
        inputs = manifest["graphs"]["memory_attention"]["inputs"]
        assert inputs["memory"]["shape"][:2] == ["memory", "batch"]
        assert inputs["pointers"]["shape"][:2] == ["pointers", "batch"]
        assert manifest["graphs"]["decoder_multi_nomask"]["inputs"]["coords"]["shape"] == [
            "batch", "points", 2]  # fmt: skip
    assert "fp32_islands" in exported["manifests"]["fp16"]
    assert "fp32_islands" not in exported["manifests"]["fp32"]


def _types_of(model: Any) -> tuple[Any, dict[str, int]]:
    """The graph and the element type of every tensor in it."""
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types |= {t.name: t.data_type for t in g.initializer}
    return g, types


def _types(path: Path) -> tuple[Any, dict[str, int]]:
    return _types_of(onnx.load(str(path)))


def test_fp16_graphs_keep_their_fp32_islands(exported: dict[str, Any]) -> None:
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    g, types = _types(exported["folders"]["fp16"] / "memory_attention.onnx")
    ops = {n.op_type for n in g.node}
    assert "LayerNormalization" in ops and "Softmax" in ops
    for node in g.node:
        inserted = node.name.endswith(("__cast16", "__cast32", "__out"))
        if node.op_type in ("LayerNormalization", "Softmax") or (
            "/rotary/" in node.name and not inserted
        ):
            assert all(types[o] != F16 for o in node.output), node.name
        if node.op_type == "MatMul" and "rotary" not in node.name:
            assert types[node.output[0]] == F16, node.name  # the heavy work is FP16
    inits = {t.name: t for t in g.initializer}
    weights = [inits[i] for n in g.node if n.op_type == "MatMul" for i in n.input if i in inits]
    assert weights and all(t.data_type == F16 for t in weights)  # stored as FP16
    g, types = _types(exported["folders"]["fp16"] / "decoder_multi_nomask.onnx")
    producer = {o: n for n in g.node for o in n.output}
    heads = [n for n in g.node if "iou_prediction_head" in n.name or "obj_score_head" in n.name]
    assert heads and all(types[o] == F32 for n in heads for o in n.output)
    node = producer["low_res"]  # walk back to the matmul that makes the mask logits
    while node.op_type != "MatMul":
        assert all(types[o] == F32 for o in node.output), node.name
        node = producer[next(i for i in node.input if types.get(i) in (F32, F16))]
    assert types[node.output[0]] == F32


def test_each_graph_matches_torch(exported: dict[str, Any]) -> None:
    geo = exported["torch"].geometry
    ref = _graph_outputs(exported["torch"], geo)
    fp32 = _graph_outputs(exported["fp32"], geo)
    fp16 = _graph_outputs(exported["fp16"], geo)
    lines = []
    for name in ref:
        d32, _ = _worst(ref[name], fp32[name])
        d16, r16 = _worst(ref[name], fp16[name])
        lines.append(f"{name:55} fp32 {d32:.1e}  fp16 {d16:.1e} (rel {r16:.1e})")
        assert d32 <= 1e-4, name
        assert r16 <= FP16_TOLERANCE, name
    print("\n" + "\n".join(lines))


def _run(graphs: Any, frames: list[np.ndarray]) -> list[dict[int, tuple[np.ndarray, np.ndarray]]]:
    tracker = StreamTracker(graphs)
    out = []
    for t, frame in enumerate(frames):
        result = tracker.step(frame, seq=t)
        if t == 0:
            a = tracker.add_prompt(1, points=[[20, 35]], labels=[1]).result
            b = tracker.add_prompt(2, box=[86, 28, 115, 52]).result
            out.append({1: (a.mask, a.low_res_logits), 2: (b.mask, b.low_res_logits)})
            continue
        if t == 10:
            tracker.add_prompt(3, points=[[30, 80]], labels=[1])
        out.append({tr.track_id: (tr.mask, tr.low_res_logits) for tr in result.tracks})
    return out


def _parity(expected: list[Any], got: list[Any]) -> tuple[float, float]:
    worst_iou, worst_diff = 1.0, 0.0
    for e, g in zip(expected, got, strict=True):
        assert set(e) == set(g)
        for k in e:
            union = np.logical_or(e[k][0], g[k][0]).sum()
            iou = 1.0 if union == 0 else np.logical_and(e[k][0], g[k][0]).sum() / union
            worst_iou = min(worst_iou, float(iou))
            worst_diff = max(worst_diff, float(np.abs(e[k][1] - g[k][1]).max()))
    return worst_iou, worst_diff


def test_tracker_parity_over_a_long_sequence(
    exported: dict[str, Any], scene: list[np.ndarray]
) -> None:
    frames = scene[:30]  # the test config's bank holds 7 frames
    assert len(frames) > 3 * exported["torch"].geometry.num_maskmem
    expected = _run(exported["torch"], frames)
    iou32, diff32 = _parity(expected, _run(exported["fp32"], frames))
    iou16, diff16 = _parity(expected, _run(exported["fp16"], frames))
    print(f"\nonnx vs torch over {len(frames)} frames, 3 objects (one added at frame 10): "
          f"fp32 worst IoU {iou32:.5f}, max |dlogit| {diff32:.2e}; "
          f"fp16 worst IoU {iou16:.5f}, max |dlogit| {diff16:.2e}")  # fmt: skip
    assert iou32 >= 0.99
    assert iou16 >= 0.95


def test_outputs_are_reused_shapes_learned(exported: dict[str, Any]) -> None:
    graphs: OnnxGraphs = exported["fp32"]
    geo = graphs.geometry
    images = torch.randn(1, 3, geo.image_size, geo.image_size)
    first = graphs.encode_image(images)
    session = graphs._sessions["image_encoder"]
    assert ((1, 3, geo.image_size, geo.image_size),) in session.shapes
    second = graphs.encode_image(images)  # preallocated outputs this time
    assert torch.equal(first.embed, second.embed) and torch.equal(first.pos, second.pos)
    assert graphs.providers("image_encoder") == ["CPUExecutionProvider"]


def _tiny_model() -> Any:
    """Conv -> LayerNorm -> Softmax -> MatMul, built directly as ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/body/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "flat"], ["r"], name="/body/Reshape"),
        helper.make_node("LayerNormalization", ["r", "g", "b"], ["n"], name="/body/LN", axis=-1),
        helper.make_node("Softmax", ["n"], ["p"], name="/body/Softmax", axis=-1),
        helper.make_node("MatMul", ["p", "m"], ["h"], name="/body/MatMul"),
        helper.make_node("Relu", ["h"], ["a"], name="/head/Relu"),
        helper.make_node("MatMul", ["a", "m2"], ["y"], name="/head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("w", 3, 2, 3, 3), numpy_helper.from_array(np.array([0, 3, 16], np.int64), "flat"),
         init("g", 16), init("b", 16), init("m", 16, 8), init("m2", 8, 4)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_conversion_on_a_small_graph() -> None:
    model = _tiny_model()
    converted = convert_to_fp16(model, Fp16Policy(fp32_outputs=("y",)))
    _, types = _types_of(converted)
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    by_name = {n.name: n for n in converted.graph.node}
    assert types[by_name["/body/Conv"].output[0]] == F16
    assert types[by_name["/body/LN"].output[0]] == F32  # FP32 island by op type
    assert types[by_name["/body/Softmax"].output[0]] == F32
    assert types[by_name["/body/MatMul"].output[0]] == F16
    assert types[by_name["/head/MatMul"].output[0]] == F32  # tail of an FP32 output
    assert types[by_name["/head/Relu"].output[0]] == F16  # the walk stops at the matmul
    assert types["y"] == F32 and types["x"] == F32
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 4)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, converted)
    ]
    (a,), (b,) = (s.run(None, {"x": x}) for s in run)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-2 * max(1.0, np.abs(a).max())


def test_fp16_conversion_refuses_unknown_ops() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="HardSwish"):
        convert_to_fp16(model, Fp16Policy())


def test_onnx_scope_names() -> None:
    assert onnx_scope("sam_mask_decoder.iou_prediction_head") == (
        "/sam_mask_decoder/iou_prediction_head/"
    )
    assert onnx_scope("memory_encoder.mask_downsampler.encoder.1") == (
        "/memory_encoder/mask_downsampler/encoder/encoder.1/"
    )
    assert onnx_scope("memory_attention.layers.0.self_attn.rotary") == (
        "/memory_attention/layers/layers.0/self_attn/rotary/"
    )


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamseg.assembly import add_export_args, export_main

    parser = argparse.ArgumentParser()
    add_export_args(parser)
    args = parser.parse_args(
        ["--model", "test", "--weights", "random", "--precision", "fp32", "--out", str(tmp_path)]
    )
    assert export_main(args) == 0
    manifests = list(tmp_path.glob("test/128-fp32-*/manifest.json"))
    assert len(manifests) == 1
    assert str(manifests[0].parent) in capsys.readouterr().out
    bad = parser.parse_args(["--model", "nope", "--weights", "random", "--out", str(tmp_path)])
    assert export_main(bad) == 2


def test_server_runs_on_the_onnx_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from streamseg.config import Settings
    from streamseg.server.app import create_app
    from tests.auth_helpers import AUTH, TOKEN

    monkeypatch.setenv("STREAMSEG_ENGINES", str(tmp_path))
    settings = Settings(model="test", weights="random", backend="onnx", token=TOKEN)
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1", headers=AUTH) as client:
        assert "backend: onnx" in client.get("/v1/info").json()["model"]
        buf = io.BytesIO()
        Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(buf, format="PNG")
        r = client.post(
            "/v1/segment",
            json={"image_base64": base64.b64encode(buf.getvalue()).decode(),
                  "prompts": [{"box": [10, 10, 60, 60]}]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
    assert any(tmp_path.glob("test/128-fp32-*/manifest.json"))
