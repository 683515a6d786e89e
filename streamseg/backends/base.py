"""The four SAM 2 graphs as one small interface, so the streaming tracker's
orchestration is identical whichever runtime executes them (torch, ONNX Runtime,
TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True, slots=True)
class ModelGeometry:
    """Shape facts the orchestration needs; fixed once a model is built."""

    image_size: int
    hidden_dim: int
    mem_dim: int
    num_maskmem: int
    max_obj_ptrs: int
    feat_size: int  # side of the lowest-resolution feature map (image_size / 16)

    @property
    def low_res_size(self) -> int:
        return self.feat_size * 4


@dataclass(frozen=True, slots=True)
class HeadSettings:
    """The config flags the orchestration glue needs (from the model or a manifest)."""

    multimask_output_in_sam: bool
    multimask_output_for_tracking: bool
    multimask_min_pt_num: int
    multimask_max_pt_num: int
    binarize_mask_from_pts_for_mem_enc: bool
    sigmoid_scale_for_mem_enc: float
    sigmoid_bias_for_mem_enc: float

    @classmethod
    def of(cls, model: Any) -> HeadSettings:
        return cls(**{f: getattr(model, f) for f in cls.__slots__})

    def uses_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        return bool(
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_points <= self.multimask_max_pt_num
        )

    def mask_for_memory(self, high_res_logits: torch.Tensor, from_points: bool) -> torch.Tensor:
        """Binarised (prompted frames) or sigmoid mask, then Meta's scale and bias."""
        if from_points and self.binarize_mask_from_pts_for_mem_enc:
            mask = (high_res_logits > 0).float()
        else:
            mask = torch.sigmoid(high_res_logits)
        return mask * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc


@dataclass(frozen=True, slots=True)
class ImageFeatures:
    """Backbone outputs for a batch of images, already projected for the decoder."""

    high_res_0: torch.Tensor  # [B, C/8, 4h, 4w]
    high_res_1: torch.Tensor  # [B, C/4, 2h, 2w]
    embed: torch.Tensor  # [B, C, h, w]
    pos: torch.Tensor  # [1, C, h, w], identical for every image

    @property
    def batch(self) -> int:
        return int(self.embed.shape[0])

    def select(self, index: int) -> ImageFeatures:
        """One image's features as compact tensors: a view would keep the whole batch
        alive for as long as a stream's history holds the frame."""
        sl = slice(index, index + 1)
        return ImageFeatures(
            _compact(self.high_res_0[sl]),
            _compact(self.high_res_1[sl]),
            _compact(self.embed[sl]),
            _compact(self.pos[:1]),
        )

    def expand(self, batch: int) -> ImageFeatures:
        """View one image's features as a batch of `batch` tracks (no copy)."""
        return ImageFeatures(
            self.high_res_0.expand(batch, -1, -1, -1),
            self.high_res_1.expand(batch, -1, -1, -1),
            self.embed.expand(batch, -1, -1, -1),
            self.pos,
        )

    @property
    def nbytes(self) -> int:
        return sum(
            t.element_size() * t.nelement() for t in (self.high_res_0, self.high_res_1, self.embed)
        )


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when it owns its storage, else a copy holding only its elements
    (channels-last counts as dense: the CUDA image encoder's features are)."""
    dense = t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    if t.untyped_storage().nbytes() == t.element_size() * t.nelement() and dense:
        return t
    return t.clone(memory_format=torch.contiguous_format)


@dataclass(frozen=True, slots=True)
class DecoderOutput:
    low_res_logits: torch.Tensor  # [B, 1, 4h, 4w] float32, the selected mask
    iou: torch.Tensor  # [B] predicted IoU of the selected mask
    obj_ptr: torch.Tensor  # [B, C]
    object_score_logits: torch.Tensor  # [B, 1]
    # [B, 1, S, S] logits upsampled to the model input size, when the backend has them
    # anyway (saves the tracker an interpolation before the memory encoder).
    high_res_logits: torch.Tensor | None = None


class SamGraphs(Protocol):
    """What a backend must run. Tensors in and out are torch tensors on `device`."""

    geometry: ModelGeometry
    device: torch.device

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """`images`: [B, 3, S, S] normalised float32."""
        ...

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> DecoderOutput:
        """Prompt encoder + mask decoder + object pointer. Coordinates in model pixels."""
        ...

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        """[HW, B, C] image tokens conditioned on [M, B, Cm] memory tokens."""
        ...

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maskmem_features [B, Cm, h, w], maskmem_pos [1, Cm, h, w])."""
        ...

    def no_memory_embedding(self) -> torch.Tensor:
        """[1, 1, C] added to image tokens on a frame that starts a track."""
        ...

    def memory_time_embedding(self) -> torch.Tensor:
        """[num_maskmem, 1, 1, Cm] temporal encodings of memory slots."""
        ...

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        """[K] relative frame distances (already normalised) -> [K, Cm]."""
        ...

    def uses_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool: ...

    def mask_for_memory(self, high_res_logits: torch.Tensor, from_points: bool) -> torch.Tensor:
        """Turn mask logits into the memory encoder's input (binarise or scaled sigmoid)."""
        ...
