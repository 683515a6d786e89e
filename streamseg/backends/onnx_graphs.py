"""ONNX Runtime backend: runs the exported graphs (see export.py) behind `SamGraphs`.

CPU here; on GPU hosts pass providers such as `["TensorrtExecutionProvider",
"CUDAExecutionProvider", "CPUExecutionProvider"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import DecoderOutput, ImageFeatures
from streamseg.backends.export import decoder_name
from streamseg.backends.exported import ExportedGraphs


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.int32:
        return t.detach().cpu().numpy()
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


Providers = Sequence[str | tuple[str, dict[str, Any]]]


class OnnxGraphs(ExportedGraphs):
    """`providers`: one list for every graph, or a function of the graph name (GPU hosts
    give each graph its own TensorRT shape profile)."""

    def __init__(
        self,
        folder: Path,
        providers: Providers | Callable[[str], Providers] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        super().__init__(folder, torch.device("cpu"))
        choose = providers if callable(providers) else (lambda _name: providers)
        self._sessions = {
            name: ort.InferenceSession(str(folder / entry["file"]), providers=list(choose(name)))
            for name, entry in self.manifest["graphs"].items()
        }

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._sessions[name].run(None, {k: _np(v) for k, v in inputs.items()})
        return [torch.from_numpy(o) for o in outputs]

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        hr0, hr1, embed, pos = self._run("image_encoder", images=images)
        return ImageFeatures(hr0, hr1, embed, pos[:1])

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> DecoderOutput:
        feeds = self.decoder_feeds(pix_feat, high_res, point_coords, point_labels, mask_logits)
        low, iou, ptr, score = self._run(decoder_name(multimask, mask_logits is not None), **feeds)
        return DecoderOutput(low, iou, ptr, score)

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        feeds = self.attention_feeds(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens)
        (out,) = self._run("memory_attention", **feeds)
        return out

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pos = self._run(
            "memory_encoder",
            pix_feat=pix_feat,
            mask_for_mem=mask_for_mem,
            score_logits=object_score_logits,
        )
        return feats, pos[:1]

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        (pos,) = self._run("pointer_pos", rel_pos=rel_pos)
        return pos
