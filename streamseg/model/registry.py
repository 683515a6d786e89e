"""SAM 2.1 variants: the sam2 package's config, the official checkpoint and its size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


class UnknownVariantError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelVariant:
    name: str
    config: str  # hydra yaml, relative to its package
    config_package: Literal["sam2", "streamseg"]
    checkpoint_file: str | None
    # Published sha256 of the checkpoint. None: no hash could be pinned from a source
    # when this release was made; the downloader then pins the first download (see
    # weights.py) and `STREAMSEG_SHA256_<NAME>` can supply the expected value.
    sha256: str | None
    image_size: int
    description: str

    @property
    def checkpoint_url(self) -> str | None:
        if self.checkpoint_file is None:
            return None
        return f"{OFFICIAL_BASE_URL}/{self.checkpoint_file}"

    def config_path(self) -> Path:
        if self.config_package == "sam2":
            import sam2

            root = Path(sam2.__file__).resolve().parent
        else:
            root = Path(__file__).resolve().parents[1]
        return root / self.config


VARIANTS: dict[str, ModelVariant] = {
    v.name: v
    for v in (
        ModelVariant(
            "tiny",
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            "sam2",
            "sam2.1_hiera_tiny.pt",
            None,
            1024,
            "SAM 2.1 Hiera-T (39M params)",
        ),
        ModelVariant(
            "small",
            "configs/sam2.1/sam2.1_hiera_s.yaml",
            "sam2",
            "sam2.1_hiera_small.pt",
            None,
            1024,
            "SAM 2.1 Hiera-S (46M params)",
        ),
        ModelVariant(
            "base_plus",
            "configs/sam2.1/sam2.1_hiera_b+.yaml",
            "sam2",
            "sam2.1_hiera_base_plus.pt",
            None,
            1024,
            "SAM 2.1 Hiera-B+ (81M params)",
        ),
        ModelVariant(
            "large",
            "configs/sam2.1/sam2.1_hiera_l.yaml",
            "sam2",
            "sam2.1_hiera_large.pt",
            None,
            1024,
            "SAM 2.1 Hiera-L (224M params)",
        ),
        ModelVariant(
            "test",
            "model/configs/sam2.1_hiera_test.yaml",
            "streamseg",
            None,
            None,
            128,
            "reduced SAM 2.1 architecture for fast CPU tests (random weights only)",
        ),
    )
}


def get_variant(name: str) -> ModelVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(
            f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}"
        ) from None
