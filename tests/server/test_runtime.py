"""Speed-aware start: a CPU gets a usable default size, and the server says what to expect."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from streamseg.backends.compiled import CompiledTorchGraphs
from streamseg.model.registry import get_variant
from streamseg.server.background import running_server
from streamseg.server.runtime import CPU_IMAGE_SIZE, cpu_default_image_size, what_to_expect
from tests.auth_helpers import AUTH


def test_cpu_default_image_size() -> None:
    assert cpu_default_image_size("tiny", "cpu") == CPU_IMAGE_SIZE < get_variant("tiny").image_size
    assert cpu_default_image_size("tiny", "cuda") is None
    assert cpu_default_image_size("test", "cpu") == min(get_variant("test").image_size, 512)


def test_what_to_expect_names_model_fps_and_mask_age() -> None:
    line = what_to_expect("sam2.1 tiny @ 512px", 0.8)
    assert "800 ms" in line and "1.2 model fps" in line and "camera's rate" in line


def test_info_reports_the_measured_model_step() -> None:
    with running_server() as (url, runtime):
        info = httpx.get(f"{url}/v1/info", headers=AUTH).json()
    assert runtime.model_step_s is not None
    assert info["model_step_ms"] == round(1000 * runtime.model_step_s, 1) > 0


@pytest.mark.slow
def test_compile_compiles_every_graph_variant_before_ready(scene: list[np.ndarray]) -> None:
    with running_server(ready_timeout_s=600, compile=True, max_batch=2) as (url, runtime):
        info = httpx.get(f"{url}/v1/info", headers=AUTH).json()
        assert runtime.model is not None
        graphs = runtime.model.graphs
        assert isinstance(graphs, CompiledTorchGraphs)
        compiled = dict(graphs.compiles)
        # After ready: two tracks in one batch, a third with its own layout, and a batch
        # of two images compile nothing more.
        tracker = runtime.new_tracker()
        tracker.step(scene[0], seq=0)
        tracker.add_prompt(1, points=[[30, 30]], labels=[1])
        tracker.add_prompt(2, points=[[90, 40]], labels=[1])
        for seq in range(1, 4):
            tracker.step(scene[seq], seq=seq)
        tracker.add_prompt(3, points=[[60, 70]], labels=[1])
        tracker.step(scene[4], seq=4)
        with tracker.inference():
            graphs.encode_image(torch.cat([tracker.preprocess(f) for f in scene[5:7]]))
        assert graphs.compiles == compiled
    assert "torch.compile" in info["model"]
