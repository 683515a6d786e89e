"""Exported graphs run by ONNX Runtime (CPU) match the torch reference, graph by graph
and over a whole tracked sequence longer than the memory bank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.backends.export import export_graphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker
from tests.conftest import TEST_CONFIG, sensitise

pytest.importorskip("onnxruntime")
from streamseg.backends.onnx_graphs import OnnxGraphs


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchGraphs, OnnxGraphs, dict]:  # type: ignore[type-arg]
    model = sensitise(build_sam2(TEST_CONFIG, seed=0))
    folder = tmp_path_factory.mktemp("engines")
    manifest = export_graphs(model, folder, "test")
    return TorchGraphs(model), OnnxGraphs(folder), manifest


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    assert a.shape == b.shape
    assert float((a.float() - b.float()).abs().max()) <= tol


def test_manifest(backends: Any) -> None:
    _, _, manifest = backends
    assert manifest["precision"] == "fp32" and len(manifest["graphs"]) == 8
    assert all(len(g["sha256"]) == 64 for g in manifest["graphs"].values())


def test_each_graph_matches_torch(backends: Any) -> None:
    ref, onnx, _ = backends
    s = ref.geometry.image_size
    images = torch.randn(2, 3, s, s)
    with torch.inference_mode():
        fr, fo = ref.encode_image(images), onnx.encode_image(images)
        for a, b in zip((fr.high_res_0, fr.high_res_1, fr.embed, fr.pos),
                        (fo.high_res_0, fo.high_res_1, fo.embed, fo.pos), strict=True):  # fmt: skip
            _close(a, b)
        coords = torch.tensor([[[10.0, 20.0], [60.0, 70.0], [5.0, 5.0]]] * 2)
        labels = torch.tensor([[1, 0, 1]] * 2, dtype=torch.int32)
        prev = torch.randn(2, 1, 4 * ref.geometry.feat_size, 4 * ref.geometry.feat_size)
        for multi in (False, True):
            for mask in (None, prev):
                dr = ref.decode(
                    fr.embed, (fr.high_res_0, fr.high_res_1), coords, labels, mask, multi
                )
                do = onnx.decode(
                    fr.embed, (fr.high_res_0, fr.high_res_1), coords, labels, mask, multi
                )
                for a, b in zip((dr.low_res_logits, dr.iou, dr.obj_ptr, dr.object_score_logits),
                                (do.low_res_logits, do.iou, do.obj_ptr, do.object_score_logits),
                                strict=True):  # fmt: skip
                    _close(a, b)
        mask_in = torch.rand(2, 1, s, s)
        score = torch.tensor([[1.0], [-1.0]])
        for a, b in zip(ref.encode_memory(fr.embed, mask_in, score),
                        onnx.encode_memory(fr.embed, mask_in, score), strict=True):  # fmt: skip
            _close(a, b)
        rel = torch.tensor([1.0, 3.0, 7.0]) / 15
        _close(ref.pointer_time_embedding(rel), onnx.pointer_time_embedding(rel))


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


def test_tracker_parity_over_a_long_sequence(backends: Any, scene: list[np.ndarray]) -> None:
    ref, onnx, _ = backends
    frames = scene[:24]
    expected, got = _run(ref, frames), _run(onnx, frames)
    worst_iou, worst_diff = 1.0, 0.0
    for e, g in zip(expected, got, strict=True):
        assert set(e) == set(g)
        for k in e:
            union = np.logical_or(e[k][0], g[k][0]).sum()
            iou = 1.0 if union == 0 else np.logical_and(e[k][0], g[k][0]).sum() / union
            worst_iou = min(worst_iou, float(iou))
            worst_diff = max(worst_diff, float(np.abs(e[k][1] - g[k][1]).max()))
    print(
        f"\nonnx vs torch over 24 frames, 3 objects: worst IoU {worst_iou:.5f}, "
        f"max |dlogit| {worst_diff:.2e}"
    )
    assert worst_iou >= 0.99


def test_server_runs_on_the_onnx_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from streamseg.config import Settings
    from streamseg.server.app import create_app

    monkeypatch.setenv("STREAMSEG_ENGINES", str(tmp_path))
    settings = Settings(model="test", weights="random", backend="onnx")
    with TestClient(create_app(settings)) as client:
        assert "backend: onnx" in client.get("/v1/info").json()["model"]
        image = np.zeros((96, 128, 3), np.uint8)
        import base64
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        r = client.post(
            "/v1/segment",
            json={"image_base64": base64.b64encode(buf.getvalue()).decode(),
                  "prompts": [{"box": [10, 10, 60, 60]}]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
    assert any(tmp_path.glob("test-128-fp32-*/manifest.json"))
