"""Reference backend: runs the four graphs with the `sam2` PyTorch modules.

On CUDA the image encoder runs in channels-last memory format: its convolutions then
take cuDNN's NHWC kernels, the layout tensor cores use under bf16/fp16 autocast. On
the CPU it stays contiguous FP32.
"""

from __future__ import annotations

from typing import Any

import torch

from streamseg.backends.base import DecoderOutput, HeadSettings, ImageFeatures, ModelGeometry

EncoderOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class TorchGraphs:
    """Wraps a built `SAM2Base`; every method maps onto one of its submodules.

    `channels_last`: run the image encoder in channels-last memory format (default: on
    CUDA only). The switch is device-agnostic so CPU tests exercise the same path."""

    def __init__(self, model: Any, *, channels_last: bool | None = None) -> None:
        self.model = model
        self.device = torch.device(model.device)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            model.image_encoder.to(memory_format=torch.channels_last)
            model.sam_mask_decoder.conv_s0.to(memory_format=torch.channels_last)
            model.sam_mask_decoder.conv_s1.to(memory_format=torch.channels_last)
        self.geometry = ModelGeometry(
            image_size=int(model.image_size),
            hidden_dim=int(model.hidden_dim),
            mem_dim=int(model.mem_dim),
            num_maskmem=int(model.num_maskmem),
            max_obj_ptrs=int(model.max_obj_ptrs_in_encoder),
            feat_size=int(model.image_size) // int(model.backbone_stride),
        )
        self.heads = HeadSettings.of(model)
        if not (model.use_high_res_features_in_sam and model.use_obj_ptrs_in_encoder):
            raise ValueError("streamseg needs a SAM 2 config with high-res features and pointers")
        if model.memory_temporal_stride_for_eval != 1 or model.non_overlap_masks_for_mem_enc:
            raise ValueError("memory stride != 1 and non-overlap memory masks are not supported")

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        high_res_0, high_res_1, embed, pos = self.run_image_encoder(images)
        return ImageFeatures(high_res_0=high_res_0, high_res_1=high_res_1, embed=embed, pos=pos)

    def run_image_encoder(self, images: torch.Tensor) -> EncoderOutputs:
        """The image encoder as a function of tensors only (what `torch.compile` wraps)."""
        out = self.model.forward_image(images)
        fpn = out["backbone_fpn"]
        return fpn[0], fpn[1], fpn[2], out["vision_pos_enc"][-1][:1]

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> DecoderOutput:
        point_inputs = None
        if point_coords is not None and point_labels is not None:
            point_inputs = {"point_coords": point_coords, "point_labels": point_labels}
        _, _, ious, low_res, high_res_best, obj_ptr, score_logits = self.model._forward_sam_heads(
            backbone_features=pix_feat,
            point_inputs=point_inputs,
            mask_inputs=mask_logits,
            high_res_features=list(high_res),
            multimask_output=multimask,
        )
        iou = ious.max(dim=-1).values if multimask else ious[:, 0]
        return DecoderOutput(
            low_res.float(), iou.float(), obj_ptr, score_logits.float(), high_res_best.float()
        )

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        out: torch.Tensor = self.model.memory_attention(
            curr=[curr],
            curr_pos=[curr_pos],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return out

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        feats: torch.Tensor = out["vision_features"]
        pos: torch.Tensor = out["vision_pos_enc"][-1][:1]
        no_obj = self.model.no_obj_embed_spatial
        if no_obj is not None:
            absent = 1.0 - (object_score_logits > 0).float()
            feats = feats + absent[..., None, None] * no_obj[..., None, None]
        return feats, pos

    def no_memory_embedding(self) -> torch.Tensor:
        emb: torch.Tensor = self.model.no_mem_embed
        return emb

    def memory_time_embedding(self) -> torch.Tensor:
        emb: torch.Tensor = self.model.maskmem_tpos_enc
        return emb

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        from sam2.modeling.sam2_utils import get_1d_sine_pe

        model = self.model
        if not model.add_tpos_enc_to_obj_ptrs:
            return rel_pos.new_zeros(rel_pos.shape[0], self.geometry.mem_dim)
        dim = self.geometry.hidden_dim if model.proj_tpos_enc_in_obj_ptrs else self.geometry.mem_dim
        pe: torch.Tensor = model.obj_ptr_tpos_proj(get_1d_sine_pe(rel_pos, dim=dim))
        return pe

    def uses_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        return self.heads.uses_multimask(is_init_cond_frame, num_points)

    def mask_for_memory(self, high_res_logits: torch.Tensor, from_points: bool) -> torch.Tensor:
        return self.heads.mask_for_memory(high_res_logits, from_points)
