"""Parity with Meta's `SAM2VideoPredictor`: same random weights, frames and prompts.

The reference runs offline over the whole clip; the streaming tracker sees one
frame at a time with a bounded memory. Masks must agree (IoU >= 0.99) and low-res
logits must be close on every frame for every object, over more frames than the
memory bank (7 memories, 16 object pointers) holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.model.build import build_sam2
from streamseg.model.registry import get_variant
from streamseg.model.tracker import StreamTracker, TrackerSettings
from tests.conftest import TEST_CONFIG, sensitise

NUM_FRAMES = 24
LOGIT_ATOL = 1e-4


@dataclass
class PromptSpec:
    frame: int
    obj_id: int
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    box: list[float] | None = None


@dataclass
class Scenario:
    name: str
    prompts: list[PromptSpec]
    frames: int = NUM_FRAMES
    expected: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


SCENARIOS = [
    Scenario("one_point", [PromptSpec(0, 1, [[37, 35]], [1])]),
    Scenario("one_box", [PromptSpec(0, 1, box=[100, 30, 124, 52])]),
    Scenario(
        "three_objects",
        [
            PromptSpec(0, 1, [[20, 35]], [1]),
            PromptSpec(0, 2, box=[86, 28, 115, 52]),
            PromptSpec(0, 3, [[25, 75], [60, 20]], [1, 0]),
        ],
    ),
    Scenario(
        "added_later",
        [PromptSpec(0, 1, [[20, 35]], [1]), PromptSpec(9, 2, [[100, 40]], [1])],
    ),
]


def _reference(
    model: Any,
    tracker: StreamTracker,
    frames: list[np.ndarray],
    prompts: list[PromptSpec],
    tmp: Path,
    own_loading: bool = False,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(frame, obj) -> (video-res logits, low-res logits) from Meta's predictor,
    prompting each frame the way a live user would: propagate up to the frame,
    add the prompt, continue. With `own_loading` Meta reads the JPEG files itself
    (`frames` must then be those files' decoded pixels); else it is given the frames
    as the tracker preprocesses them."""
    if not own_loading:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{i:05d}.jpg")
    with torch.inference_mode():
        state = model.init_state(str(tmp))
        if not own_loading:
            state["images"] = torch.cat([tracker.preprocess(f) for f in frames])
            state["cached_features"] = {}
        out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        starts = sorted({p.frame for p in prompts})
        for n, start in enumerate(starts):
            for p in prompts:
                if p.frame == start:
                    model.add_new_points_or_box(
                        state, start, p.obj_id, points=p.points, labels=p.labels, box=p.box
                    )
            end = starts[n + 1] if n + 1 < len(starts) else len(frames)
            for t, obj_ids, masks in model.propagate_in_video(
                state, start_frame_idx=start, max_frame_num_to_track=end - start - 1
            ):
                for k, obj in enumerate(obj_ids):
                    idx = state["obj_id_to_idx"][obj]
                    per_obj = state["output_dict_per_obj"][idx]
                    entry = per_obj["cond_frame_outputs"].get(t) or per_obj[
                        "non_cond_frame_outputs"
                    ].get(t)
                    if entry is None:
                        continue
                    out[(t, obj)] = (
                        masks[k, 0].float().numpy(),
                        entry["pred_masks"][0, 0].float().numpy(),
                    )
    return out


def _streaming(
    tracker: StreamTracker, frames: list[np.ndarray], prompts: list[PromptSpec]
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for t, frame in enumerate(frames):
        result = tracker.step(frame, seq=1000 + t)
        for tr in result.tracks:
            out[(t, tr.track_id)] = (tr.mask, tr.low_res_logits)
        for p in prompts:
            if p.frame == t:
                outcome = tracker.add_prompt(
                    p.obj_id, points=p.points, labels=p.labels, box=p.box, frame_seq=1000 + t
                )
                assert outcome.exact and outcome.caught_up_frames == 0
                out[(t, p.obj_id)] = (outcome.result.mask, outcome.result.low_res_logits)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _build(kind: str) -> Any:
    if kind == "test":
        return sensitise(build_sam2(TEST_CONFIG, reference_predictor=True, seed=0))
    variant = get_variant(kind)
    return sensitise(
        build_sam2(variant.config_path(), image_size=128, reference_predictor=True, seed=0)
    )


@pytest.fixture(scope="module", params=["test", "tiny"])
def reference_model(request: pytest.FixtureRequest) -> Any:
    return _build(request.param)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_streaming_matches_reference(
    reference_model: Any, scenario: Scenario, scene: list[np.ndarray], tmp_path: Path
) -> None:
    frames = scene[: scenario.frames]
    tracker = StreamTracker(TorchGraphs(reference_model), TrackerSettings(max_cond_frames=8))
    ours = _streaming(tracker, frames, scenario.prompts)
    ref = _reference(reference_model, tracker, frames, scenario.prompts, tmp_path)
    assert set(ours) == set(ref)
    foreground = []
    for key in sorted(ref):
        ref_logits, ref_low = ref[key]
        mask, low = ours[key]
        ref_mask = ref_logits > 0
        foreground.append(ref_mask.mean())
        assert _iou(mask, ref_mask) >= 0.99, f"{scenario.name} frame/obj {key}"
        np.testing.assert_allclose(low, ref_low, atol=LOGIT_ATOL, rtol=1e-4, err_msg=str(key))
    # The masks must be real masks, or equality would prove nothing.
    assert 0.02 < float(np.mean(foreground)) < 0.98


def test_prompt_on_recent_frame_lands_on_that_frame(
    reference_model: Any, scene: list[np.ndarray], tmp_path: Path
) -> None:
    """A click made on a frame the user saw 3 frames ago is applied on that frame and
    the track caught up: from then on it equals the reference prompted on that frame."""
    frames = scene[:NUM_FRAMES]
    seen, clicked_at = 12, 9
    a = PromptSpec(0, 1, [[20, 35]], [1])
    b = PromptSpec(clicked_at, 2, [[100, 40]], [1])
    tracker = StreamTracker(TorchGraphs(reference_model))
    ours: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for t, frame in enumerate(frames):
        result = tracker.step(frame, seq=t)
        for tr in result.tracks:
            ours[(t, tr.track_id)] = (tr.mask, tr.low_res_logits)
        if t == 0:
            tracker.add_prompt(1, points=a.points, labels=a.labels, frame_seq=0)
        if t == seen:
            outcome = tracker.add_prompt(2, points=b.points, labels=b.labels, frame_seq=clicked_at)
            assert outcome.exact and outcome.applied_seq == clicked_at
            assert outcome.caught_up_frames == seen - clicked_at
            ours[(t, 2)] = (outcome.result.mask, outcome.result.low_res_logits)
    ref = _reference(reference_model, tracker, frames, [a, b], tmp_path)
    compared = [k for k in ref if k[0] >= seen and k[0] > 0]
    assert len(compared) == 2 * (NUM_FRAMES - seen)
    for key in compared:
        mask, low = ours[key]
        assert _iou(mask, ref[key][0] > 0) >= 0.99, key
        np.testing.assert_allclose(low, ref[key][1], atol=LOGIT_ATOL, rtol=1e-4, err_msg=str(key))


def test_meta_loading_its_own_jpeg_frames_agrees(reference_model: Any, tmp_path: Path) -> None:
    """Camera-shaped 640x480 frames resized to the model's square input: Meta's
    predictor loads the JPEG files through its own `init_state`; the tracker gets the
    same decoded pixels and preprocesses them itself."""
    from streamseg.media.synthetic import moving_scene

    frames = []
    for i, frame in enumerate(moving_scene(16, height=480, width=640, seed=5)):
        path = tmp_path / f"{i:05d}.jpg"
        Image.fromarray(frame).save(path, quality=90)
        frames.append(np.asarray(Image.open(path).convert("RGB")))
    prompts = [
        PromptSpec(0, 1, [[150, 175]], [1]),
        PromptSpec(0, 2, box=[400, 140, 580, 260]),
    ]
    tracker = StreamTracker(TorchGraphs(reference_model), TrackerSettings(max_cond_frames=8))
    ours = _streaming(tracker, frames, prompts)
    ref = _reference(reference_model, tracker, frames, prompts, tmp_path, own_loading=True)
    assert set(ours) == set(ref)
    worst = min(_iou(ours[key][0], ref[key][0] > 0) for key in ref)
    assert worst >= 0.99, worst
    for key in sorted(ref):
        np.testing.assert_allclose(ours[key][1], ref[key][1], atol=LOGIT_ATOL, rtol=1e-4)
