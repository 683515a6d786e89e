"""Shared fixtures: small real SAM 2 networks (random weights) and generated video."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from streamseg.media.synthetic import moving_scene
from tests.auth_helpers import TOKEN

# Authentication is on in every test server: servers and clients read this token.
os.environ["STREAMSEG_TOKEN"] = TOKEN

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "streamseg" / "model" / "configs" / "sam2.1_hiera_test.yaml"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def scene() -> list[np.ndarray]:
    return moving_scene(40)


def sensitise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Re-draw SAM 2's small learned embeddings (temporal memory encodings, no-memory
    and no-object embeddings) at unit scale. sam2 initialises them with std 0.02, so
    with random weights the memory pathway barely moves the masks and an
    orchestration bug (wrong temporal slot, dropped pointers) would go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    names = (
        "maskmem_tpos_enc",
        "no_mem_embed",
        "no_mem_pos_enc",
        "no_obj_ptr",
        "no_obj_embed_spatial",
    )
    with torch.no_grad():
        for name in names:
            param = getattr(model, name, None)
            if isinstance(param, torch.nn.Parameter):
                param.copy_(torch.randn(param.shape, generator=gen))
    return model
