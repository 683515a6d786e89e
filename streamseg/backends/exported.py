"""What every backend that runs exported graphs shares: the manifest, the small
constants, the head settings, and how tracker inputs map onto graph inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import HeadSettings, ModelGeometry


class ExportedGraphs:
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
