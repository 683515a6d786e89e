"""Build SAM 2 networks from the sam2 package's configs (or ours), with real or
seeded random weights. Networks only: wrapping one in a backend happens above this
layer (streamseg/assembly.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The settings Meta's `build_sam2_video_predictor` applies for inference.
INFERENCE_OVERRIDES: dict[str, Any] = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
}
PREDICTOR_TARGET = "sam2.sam2_video_predictor.SAM2VideoPredictor"


class ModelBuildError(RuntimeError):
    pass


def _require_sam2() -> None:
    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise ModelBuildError(
            "the `sam2` package is missing; install it with scripts/setup.sh "
            "(it is installed with --no-deps to avoid a CUDA torchvision download)"
        ) from exc


def build_sam2(
    config_path: Path,
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpoint: Path | None = None,
    reference_predictor: bool = False,
    predictor_options: dict[str, Any] | None = None,
) -> Any:
    """Instantiate the network described by a sam2 hydra yaml.

    Without a checkpoint the weights are sam2's own initialisation under
    `torch.manual_seed(seed)`, so the same seed gives the same network.
    `reference_predictor=True` builds Meta's `SAM2VideoPredictor` (for parity tests
    and the benchmark's reference column) with hole filling off, because its CUDA
    extension is not part of a CPU install.
    """
    _require_sam2()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not config_path.is_file():
        raise ModelBuildError(f"model config not found: {config_path}")
    cfg = OmegaConf.load(config_path)
    overrides: dict[str, Any] = dict(INFERENCE_OVERRIDES)
    if image_size is not None:
        if image_size % 32 != 0 or image_size < 64:
            raise ModelBuildError(
                f"image_size must be a multiple of 32 and >= 64, got {image_size}"
            )
        overrides["image_size"] = image_size
    if reference_predictor:
        overrides["_target_"] = PREDICTOR_TARGET
        overrides["fill_hole_area"] = 0
        overrides.update(predictor_options or {})
    cfg = OmegaConf.merge(cfg, {"model": overrides})
    OmegaConf.resolve(cfg)
    torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is None:
        _make_objects_visible(model)
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelBuildError(
                f"checkpoint {checkpoint} does not match the config: "
                f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
    return model.to(device).eval()


RANDOM_OBJECT_SCORE_BIAS = 8.0


def _make_objects_visible(model: Any) -> None:
    """Random weights predict every object as absent, which turns every mask into a
    constant and would make smoke runs and parity tests trivially pass. Shifting the
    object-score head's output bias keeps objects present; the masks stay random."""
    head = model.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.bias.add_(RANDOM_OBJECT_SCORE_BIAS)


@dataclass(frozen=True, slots=True)
class Network:
    """A built network plus what a user must be told about it."""

    variant: str
    weights_label: str
    image_size: int
    device: torch.device
    module: Any


def build_network(
    variant_name: str,
    *,
    weights: str = "official",
    image_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> Network:
    """Resolve a registry variant and a weights spec ("official", "random", a path)."""
    from streamseg.model.registry import get_variant
    from streamseg.model.weights import ensure_checkpoint, resolve_weights

    variant = get_variant(variant_name)
    choice = resolve_weights(weights, variant)
    checkpoint = choice.path
    if choice.kind == "official":
        checkpoint = ensure_checkpoint(variant, progress=progress)
    size = image_size or variant.image_size
    if torch.device(device).type == "cuda":
        # TF32 tensor cores for the FP32 matmuls left outside autocast (Ampere and later).
        torch.set_float32_matmul_precision("high")
    module = build_sam2(
        variant.config_path(), image_size=size, device=device, seed=seed, checkpoint=checkpoint
    )
    return Network(variant.name, choice.label, size, torch.device(device), module)
