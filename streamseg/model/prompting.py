"""Shared by the tracker and the single-image segmenter: how a frame and a prompt
become model inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from streamseg.model.errors import InvalidPromptError, OutOfFrameError
from streamseg.model.transfer import to_device

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
BOX_LABELS = (2, 3)  # SAM encodes a box as two corner points with these labels
_NORM: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def inference_context(device: torch.device, autocast_dtype: str | None) -> contextlib.ExitStack:
    """No autograd, and CUDA autocast with `autocast_dtype` ("bfloat16"/"float16")
    when the model is on a GPU; the same for stream steps and REST segmentation."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if autocast_dtype is not None and device.type == "cuda":
        stack.enter_context(torch.autocast("cuda", dtype=getattr(torch, autocast_dtype)))
    return stack


def preprocess_image(image: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalised [1, 3, S, S] on `device`.

    Resized exactly as Meta's video predictor loads frames (PIL's `resize`: bicubic,
    antialiased when shrinking, rounded to uint8), so masks equal the reference's on
    camera-shaped frames too; OpenCV's bilinear resize flips random-weight masks there.
    """
    if device not in _NORM:
        _NORM[device] = (
            torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1),
        )
    mean, std = _NORM[device]
    pil = Image.fromarray(np.ascontiguousarray(image))
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    x = to_device(torch.from_numpy(resized.copy()), device).permute(2, 0, 1)[None].float() / 255.0
    return (x - mean) / std


def prompt_tensors(
    points: Sequence[Sequence[float]] | np.ndarray | None,
    labels: Sequence[int] | np.ndarray | None,
    box: Sequence[float] | np.ndarray | None,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a prompt against the frame it names; boxes become SAM's corner points."""
    if (points is None) != (labels is None):
        raise InvalidPromptError("points and labels must be given together")
    if points is None and box is None:
        raise InvalidPromptError("a prompt needs points (with labels) and/or a box")
    coords = np.zeros((0, 2), dtype=np.float32)
    lab = np.zeros((0,), dtype=np.int32)
    if points is not None and labels is not None:
        try:
            coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            lab = np.asarray(labels).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise InvalidPromptError(f"points must be [[x, y], ...]: {exc}") from None
        if len(coords) != len(lab):
            raise InvalidPromptError(f"{len(coords)} points but {len(lab)} labels")
        if len(coords) == 0 and box is None:
            raise InvalidPromptError("a prompt needs at least one point or a box")
        if not np.isin(lab, (0, 1)).all():
            raise InvalidPromptError("labels must be 1 (positive) or 0 (negative)")
        lab = lab.astype(np.int32)
    if box is not None:
        try:
            b = np.asarray(box, dtype=np.float32).reshape(4)
        except (ValueError, TypeError):
            raise InvalidPromptError("box must be [x0, y0, x1, y1]") from None
        if not (b[0] < b[2] and b[1] < b[3]):
            raise InvalidPromptError(f"box must have x0 < x1 and y0 < y1, got {b.tolist()}")
        coords = np.concatenate([b.reshape(2, 2), coords])
        lab = np.concatenate([np.array(BOX_LABELS, dtype=np.int32), lab])
    if not np.isfinite(coords).all():
        raise InvalidPromptError("coordinates must be finite numbers")
    outside = (
        (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        x, y = coords[i]
        corners = 2 if box is not None else 0  # a box is coords[0:2]
        what = (
            f"box corner ({x:g}, {y:g})" if i < corners else f"points[{i - corners}] ({x:g}, {y:g})"
        )
        raise OutOfFrameError(
            f"{what} lies outside the {width}x{height} frame it refers to "
            f"(x in [0, {width}], y in [0, {height}])"
        )
    return torch.from_numpy(coords), torch.from_numpy(lab)
