"""Export the graphs the tracker runs (see `SamGraphs`) to ONNX, with a manifest.

Graphs: image encoder; prompt encoder + mask decoder + object pointer (four variants:
multimask or not, with or without a previous-mask input; points are a dynamic axis);
memory attention (real-valued RoPE, dynamic memory and pointer counts); memory
encoder; the object pointers' temporal encoding. Small constants (no-memory
embedding, memory temporal encodings, mask-for-memory settings) go to `constants.npz`
and `manifest.json`. FP32 only for now.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import HeadSettings
from streamseg.backends.rope import MemoryAttentionGraph, real_valued_rope
from streamseg.backends.torch_graphs import TorchGraphs

OPSET = 17
DECODER_VARIANTS = [(multi, mask) for multi in (False, True) for mask in (False, True)]


def decoder_name(multimask: bool, with_mask: bool) -> str:
    return f"decoder_{'multi' if multimask else 'single'}_{'mask' if with_mask else 'nomask'}"


class _ImageEncoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.graphs.encode_image(images)
        return f.high_res_0, f.high_res_1, f.embed, f.pos


class _Decoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs, multimask: bool, with_mask: bool) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs, self.multimask, self.with_mask = graphs, multimask, with_mask

    def forward(self, pix_feat: torch.Tensor, hr0: torch.Tensor, hr1: torch.Tensor,
                coords: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
        d = self.graphs.decode(
            pix_feat, (hr0, hr1), coords, labels, mask if self.with_mask else None, self.multimask
        )
        return d.low_res_logits, d.iou, d.obj_ptr, d.object_score_logits


class _MemoryEncoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graphs.encode_memory(pix_feat, mask_for_mem, score_logits)


class _PointerPos(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(self, rel_pos: torch.Tensor) -> torch.Tensor:
        return self.graphs.pointer_time_embedding(rel_pos)


def _export(module: torch.nn.Module, args: tuple[Any, ...], path: Path, inputs: list[str],
            outputs: list[str], axes: dict[str, dict[int, str]]) -> None:  # fmt: skip
    torch.onnx.export(
        module, args, str(path), input_names=inputs, output_names=outputs,
        dynamic_axes=axes, opset_version=OPSET, dynamo=False,
    )  # fmt: skip


def export_graphs(model: Any, out_dir: Path, model_name: str) -> dict[str, Any]:
    """Write every graph and the manifest into `out_dir`; returns the manifest."""
    graphs = TorchGraphs(model)
    geo = graphs.geometry
    out_dir.mkdir(parents=True, exist_ok=True)
    s, h, c, cm = geo.image_size, geo.feat_size, geo.hidden_dim, geo.mem_dim
    b = {0: "batch"}
    with torch.no_grad():
        _export(_ImageEncoder(graphs).eval(), (torch.randn(1, 3, s, s),),
                out_dir / "image_encoder.onnx", ["images"], ["hr0", "hr1", "embed", "pos"],
                {"images": b, "hr0": b, "hr1": b, "embed": b})  # fmt: skip
        feats = (torch.randn(1, c, h, h), torch.randn(1, c // 8, 4 * h, 4 * h),
                 torch.randn(1, c // 4, 2 * h, 2 * h))  # fmt: skip
        for multimask, with_mask in DECODER_VARIANTS:
            args: tuple[Any, ...] = (*feats, torch.rand(1, 2, 2) * s,
                                     torch.tensor([[1, 0]], dtype=torch.int32))  # fmt: skip
            names = ["pix_feat", "hr0", "hr1", "coords", "labels"]
            axes = {n: b for n in names} | {"coords": {0: "batch", 1: "points"},
                                            "labels": {0: "batch", 1: "points"}}  # fmt: skip
            if with_mask:
                args = (*args, torch.randn(1, 1, 4 * h, 4 * h))
                names.append("mask")
                axes["mask"] = b
            outs = ["low_res", "iou", "obj_ptr", "score_logits"]
            _export(_Decoder(graphs, multimask, with_mask).eval(), args,
                    out_dir / f"{decoder_name(multimask, with_mask)}.onnx", names, outs,
                    axes | {o: b for o in outs})  # fmt: skip
        attention = MemoryAttentionGraph(model.memory_attention).eval()
        with real_valued_rope(model.memory_attention):
            names = ["curr", "curr_pos", "memory", "memory_pos", "pointers", "pointers_pos"]
            _export(attention, (torch.randn(h * h, 1, c), torch.randn(h * h, 1, c),
                                torch.randn(2 * h * h, 1, cm), torch.randn(2 * h * h, 1, cm),
                                torch.randn(4, 1, cm), torch.randn(4, 1, cm)),
                    out_dir / "memory_attention.onnx", names, ["out"],
                    {"curr": {1: "batch"}, "curr_pos": {1: "batch"},
                     "memory": {0: "memory", 1: "batch"}, "memory_pos": {0: "memory", 1: "batch"},
                     "pointers": {0: "pointers", 1: "batch"},
                     "pointers_pos": {0: "pointers", 1: "batch"}, "out": {1: "batch"}})  # fmt: skip
        _export(_MemoryEncoder(graphs).eval(),
                (feats[0], torch.rand(1, 1, s, s), torch.ones(1, 1)),
                out_dir / "memory_encoder.onnx", ["pix_feat", "mask_for_mem", "score_logits"],
                ["maskmem", "maskmem_pos"],
                {"pix_feat": b, "mask_for_mem": b, "score_logits": b, "maskmem": b})  # fmt: skip
        _export(_PointerPos(graphs).eval(), (torch.rand(5),), out_dir / "pointer_pos.onnx",
                ["rel_pos"], ["pos"], {"rel_pos": {0: "k"}, "pos": {0: "k"}})  # fmt: skip
        np.savez(
            out_dir / "constants.npz",
            no_mem_embed=graphs.no_memory_embedding().numpy(),
            maskmem_tpos_enc=graphs.memory_time_embedding().numpy(),
        )
    manifest: dict[str, Any] = {
        "model": model_name,
        "precision": "fp32",
        "opset": OPSET,
        "exporter": "torch.onnx (TorchScript)",
        "torch": torch.__version__,
        "geometry": {k: getattr(geo, k) for k in geo.__slots__},
        "settings": {f: getattr(graphs.heads, f) for f in HeadSettings.__slots__},
        "graphs": {
            p.stem: {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(out_dir.glob("*.onnx"))
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
