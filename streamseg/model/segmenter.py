"""Single-image segmentation (SAM 2's image mode) on the same graphs as the tracker:
encode once, then decode any number of prompts against the cached embedding."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from streamseg.backends.base import ImageFeatures, SamGraphs
from streamseg.model.prompting import inference_context, preprocess_image, prompt_tensors
from streamseg.model.transfer import to_device, to_host
from streamseg.protocol.masks import mask_bbox


@dataclass(frozen=True, slots=True)
class ImagePrompt:
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class ImageEmbedding:
    features: ImageFeatures
    width: int
    height: int
    encoder_s: float

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


@dataclass(frozen=True, slots=True)
class SegmentMask:
    mask: np.ndarray  # [H, W] bool
    score: float  # predicted IoU
    object_score: float
    bbox: tuple[int, int, int, int] | None
    area: int


class ImageSegmenter:
    """`autocast_dtype`: CUDA autocast, as the server's trackers run (`--dtype`)."""

    def __init__(self, graphs: SamGraphs, autocast_dtype: str | None = None) -> None:
        self.graphs = graphs
        self.autocast_dtype = autocast_dtype

    def encode(self, image: np.ndarray) -> ImageEmbedding:
        start = time.perf_counter()
        with inference_context(self.graphs.device, self.autocast_dtype):
            x = preprocess_image(image, self.graphs.geometry.image_size, self.graphs.device)
            features = self.graphs.encode_image(x)
        h, w = image.shape[:2]
        return ImageEmbedding(features, w, h, time.perf_counter() - start)

    def segment(
        self, embedding: ImageEmbedding, prompts: Sequence[ImagePrompt]
    ) -> tuple[list[SegmentMask], float]:
        """One mask per prompt; prompts with equal point counts decode as one batch.
        Raises InvalidPromptError (naming the prompt) before any model work."""
        w, h = embedding.width, embedding.height
        size = self.graphs.geometry.image_size
        scale = torch.tensor([size / w, size / h])
        inputs = []
        for i, p in enumerate(prompts):
            try:
                coords, labels = prompt_tensors(
                    list(p.points) or None, list(p.labels) or None, p.box, w, h
                )
            except ValueError as exc:
                raise type(exc)(f"prompt {i}: {exc}") from None
            inputs.append((coords * scale, labels))
        start = time.perf_counter()
        if not inputs:
            return [], 0.0
        groups: dict[int, list[int]] = {}
        for i, (_, labels) in enumerate(inputs):
            groups.setdefault(len(labels), []).append(i)
        feats = embedding.features
        order: list[int] = []
        masks, scores = [], []
        with inference_context(self.graphs.device, self.autocast_dtype):
            pix_one = feats.embed + self.graphs.no_memory_embedding().permute(0, 2, 1)[..., None]
            for count, members in groups.items():
                batch = len(members)
                fb = feats.expand(batch)
                dec = self.graphs.decode(
                    pix_one.expand(batch, -1, -1, -1),
                    (fb.high_res_0, fb.high_res_1),
                    to_device(torch.stack([inputs[i][0] for i in members]), self.graphs.device),
                    to_device(torch.stack([inputs[i][1] for i in members]), self.graphs.device),
                    None,
                    self.graphs.uses_multimask(True, count),
                )
                full = F.interpolate(
                    dec.low_res_logits, size=(h, w), mode="bilinear", align_corners=False
                )
                masks.append(full[:, 0] > 0)
                probs = torch.sigmoid(dec.object_score_logits[:, 0].float())
                scores.append(torch.stack([dec.iou.reshape(-1).float(), probs], dim=1))
                order.extend(members)
            # Every prompt's mask and scores reach the host in one copy.
            host_masks, host_scores = to_host(torch.cat(masks), torch.cat(scores))
        results: list[SegmentMask | None] = [None] * len(inputs)
        for k, i in enumerate(order):
            results[i] = SegmentMask(
                mask=host_masks[k],
                score=float(host_scores[k, 0]),
                object_score=float(host_scores[k, 1]),
                bbox=mask_bbox(host_masks[k]),
                area=int(np.count_nonzero(host_masks[k])),
            )
        return [r for r in results if r is not None], time.perf_counter() - start
