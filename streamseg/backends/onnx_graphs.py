"""ONNX Runtime backend: runs the exported graphs (see export.py) behind `SamGraphs`.

CPU here; on GPU hosts pass providers such as `["TensorrtExecutionProvider",
"CUDAExecutionProvider", "CPUExecutionProvider"]`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import DecoderOutput, HeadSettings, ImageFeatures, ModelGeometry
from streamseg.backends.export import decoder_name


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxGraphs:
    def __init__(self, folder: Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.folder = folder
        self.manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        self.geometry = ModelGeometry(**self.manifest["geometry"])
        self.device = torch.device("cpu")
        self.heads = HeadSettings(**self.manifest["settings"])
        options = ort.SessionOptions()
        self._sessions = {
            name: ort.InferenceSession(str(folder / entry["file"]), options, list(providers))
            for name, entry in self.manifest["graphs"].items()
        }
        constants = np.load(folder / "constants.npz")
        self._no_mem = torch.from_numpy(constants["no_mem_embed"])
        self._tpos = torch.from_numpy(constants["maskmem_tpos_enc"])

    def _run(self, name: str, **inputs: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._sessions[name].run(None, inputs)
        return outputs

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        hr0, hr1, embed, pos = self._run("image_encoder", images=_np(images))
        t = torch.from_numpy
        return ImageFeatures(t(hr0), t(hr1), t(embed), t(pos)[:1])

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> DecoderOutput:
        batch = pix_feat.shape[0]
        if point_coords is None or point_labels is None:
            point_coords = torch.zeros(batch, 1, 2)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32)
        inputs = {
            "pix_feat": _np(pix_feat),
            "hr0": _np(high_res[0]),
            "hr1": _np(high_res[1]),
            "coords": _np(point_coords),
            "labels": point_labels.to("cpu", torch.int32).numpy(),
        }
        if mask_logits is not None:
            inputs["mask"] = _np(mask_logits)
        name = decoder_name(multimask, mask_logits is not None)
        low, iou, ptr, score = (torch.from_numpy(a) for a in self._run(name, **inputs))
        return DecoderOutput(low, iou, ptr, score)

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        split = memory.shape[0] - num_obj_ptr_tokens
        (out,) = self._run(
            "memory_attention",
            curr=_np(curr),
            curr_pos=_np(curr_pos),
            memory=_np(memory[:split]),
            memory_pos=_np(memory_pos[:split]),
            pointers=_np(memory[split:]),
            pointers_pos=_np(memory_pos[split:]),
        )
        return torch.from_numpy(out)

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pos = self._run(
            "memory_encoder",
            pix_feat=_np(pix_feat),
            mask_for_mem=_np(mask_for_mem),
            score_logits=_np(object_score_logits),
        )
        return torch.from_numpy(feats), torch.from_numpy(pos)[:1]

    def no_memory_embedding(self) -> torch.Tensor:
        return self._no_mem

    def memory_time_embedding(self) -> torch.Tensor:
        return self._tpos

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        (pos,) = self._run("pointer_pos", rel_pos=_np(rel_pos))
        return torch.from_numpy(pos)

    def uses_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        return self.heads.uses_multimask(is_init_cond_frame, num_points)

    def mask_for_memory(self, high_res_logits: torch.Tensor, from_points: bool) -> torch.Tensor:
        return self.heads.mask_for_memory(high_res_logits, from_points)
