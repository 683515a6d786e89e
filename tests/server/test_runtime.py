"""Speed-aware start: a CPU gets a usable default size, and the server says what to expect."""

from __future__ import annotations

import httpx

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
