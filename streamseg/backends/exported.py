"""What every backend that runs exported graphs shares: the manifest, the small
constants, the head settings, and how tracker inputs map onto graph inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import (
    DecoderOutput,
    HeadSettings,
    ImageFeatures,
    ModelGeometry,
)
from streamseg.backends.export import decoder_name


class ExportedGraphs:
    """Subclasses supply `_run(graph_name, **inputs)`; everything else is shared.

    `max_objects` / `max_images`: the largest batch the graphs were built for (a
    TensorRT plan's profile). A larger batch is run in chunks and joined, so callers
    (tracker, segmenter) never need to know the limits. None: no limit."""

    max_objects: int | None = None
    max_images: int | None = None

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.folder = folder
        self.device = device
        self.manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        self.geometry = ModelGeometry(**self.manifest["geometry"])
        self.heads = HeadSettings(**self.manifest["settings"])
        constants = np.load(folder / "constants.npz")
        self._no_mem = torch.from_numpy(constants["no_mem_embed"]).to(device)
        self._tpos = torch.from_numpy(constants["maskmem_tpos_enc"]).to(device)

    @staticmethod
    def geometry_of(folder: Path) -> ModelGeometry:
        return ModelGeometry(**json.loads((folder / "manifest.json").read_text())["geometry"])

    def no_memory_embedding(self) -> torch.Tensor:
        return self._no_mem

    def memory_time_embedding(self) -> torch.Tensor:
        return self._tpos

    def uses_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        return self.heads.uses_multimask(is_init_cond_frame, num_points)

    def mask_for_memory(self, high_res_logits: torch.Tensor, from_points: bool) -> torch.Tensor:
        return self.heads.mask_for_memory(high_res_logits, from_points)

    def decoder_feeds(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """No points means SAM's padding point (label -1), as `_forward_sam_heads` does."""
        batch = pix_feat.shape[0]
        if point_coords is None or point_labels is None:
            point_coords = torch.zeros(batch, 1, 2, device=pix_feat.device)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32, device=pix_feat.device)
        feeds = {"pix_feat": pix_feat, "hr0": high_res[0], "hr1": high_res[1],
                 "coords": point_coords, "labels": point_labels.to(torch.int32)}  # fmt: skip
        if mask_logits is not None:
            feeds["mask"] = mask_logits
        return feeds

    @staticmethod
    def attention_feeds(
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> dict[str, torch.Tensor]:
        """The graph takes spatial memories and pointer tokens separately (both dynamic)."""
        split = memory.shape[0] - num_obj_ptr_tokens
        return {"curr": curr, "curr_pos": curr_pos, "memory": memory[:split],
                "memory_pos": memory_pos[:split], "pointers": memory[split:],
                "pointers_pos": memory_pos[split:]}  # fmt: skip

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _run_batched(
        self, name: str, limit: int | None, inputs: dict[str, torch.Tensor], axis: int = 0
    ) -> list[torch.Tensor]:
        """`_run`, in chunks of at most `limit` along the batch axis (the same axis in
        every input and output of these graphs)."""
        batch = next(iter(inputs.values())).shape[axis]
        if limit is None or batch <= limit:
            return self._run(name, **inputs)
        parts = [
            self._run(
                name, **{k: v.narrow(axis, i, min(limit, batch - i)) for k, v in inputs.items()}
            )
            for i in range(0, batch, limit)
        ]
        return [torch.cat(outs, dim=axis) for outs in zip(*parts, strict=True)]

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        hr0, hr1, embed, pos = self._run_batched(
            "image_encoder", self.max_images, {"images": images}
        )
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
        name = decoder_name(multimask, mask_logits is not None)
        low, iou, ptr, score = self._run_batched(name, self.max_objects, feeds)
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
        (out,) = self._run_batched("memory_attention", self.max_objects, feeds, axis=1)
        return out

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pos = self._run_batched(
            "memory_encoder",
            self.max_objects,
            {
                "pix_feat": pix_feat,
                "mask_for_mem": mask_for_mem,
                "score_logits": object_score_logits,
            },
        )
        return feats, pos[:1]

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        (pos,) = self._run("pointer_pos", rel_pos=rel_pos)
        return pos
