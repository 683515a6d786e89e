"""Masks carried between model steps: motion recovery, ground-truth quality, bounds."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from streamseg.media.motion import (
    MaskPropagator,
    MotionSettings,
    PropagatedMask,
    fit_similarity,
)
from streamseg.media.synthetic import MOTIONS, moving_object

AGES = (1, 5, 15, 30)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_fit_recovers_a_known_similarity_exactly() -> None:
    rng = np.random.default_rng(0)
    origin = rng.uniform(0, 300, (40, 2)).astype(np.float32)
    truth = cv2.getRotationMatrix2D((150, 120), 17.0, 1.08)
    truth[:, 2] += (12.5, -7.25)
    current = (origin @ truth[:, :2].T + truth[:, 2]).astype(np.float32)
    current[:5] += 40  # points that slid onto the background: RANSAC ignores them
    fitted = fit_similarity(origin, current, min_points=6, ransac_px=1.0)
    assert fitted is not None
    np.testing.assert_allclose(fitted, truth, atol=1e-3)


def test_a_late_result_is_caught_up_in_a_few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result for a frame 36 frames back reaches the newest frame in at most
    `max_steps` LK steps (the frame that meets it is not held up), within 2 px."""
    calls = []
    original = cv2.calcOpticalFlowPyrLK
    monkeypatch.setattr(
        cv2, "calcOpticalFlowPyrLK", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    propagator, _, _ = _propagate("translate", 37)
    propagator.masks_for(36, (640, 480))
    assert len(calls) <= propagator.settings.max_steps
    np.testing.assert_allclose(propagator._tracks[0].affine[:, 2], (108.0, 54.0), atol=2.0)


def test_fit_falls_back_to_a_shift_with_few_points() -> None:
    origin = np.array([[10, 10], [20, 30]], np.float32)
    fitted = fit_similarity(origin, origin + np.float32([4, -2]), min_points=6, ransac_px=1.0)
    assert fitted is not None
    np.testing.assert_allclose(fitted, [[1, 0, 4], [0, 1, -2]])
    assert fit_similarity(origin[:0], origin[:0], 6, 1.0) is None


def _propagate(motion: str, frames_count: int = 31) -> tuple[MaskPropagator, list, list]:
    frames, masks = moving_object(motion, frames_count)
    propagator = MaskPropagator()
    for seq, image in enumerate(frames):
        propagator.add_frame(seq, image)
    propagator.set_masks(0, [(7, masks[0])])
    return propagator, frames, masks


def _frame_by_frame(propagator: MaskPropagator, last: int) -> list[PropagatedMask]:
    """As live video asks: every frame in turn."""
    placed: list[PropagatedMask] = []
    for seq in range(1, last + 1):
        placed = propagator.masks_for(seq, (640, 480))
    return placed


def test_translation_and_rotation_are_recovered() -> None:
    propagator, _, _ = _propagate("translate")
    (placed,) = _frame_by_frame(propagator, 20)
    assert placed.source == "propagated" and placed.moved and placed.model_seq == 0
    affine = propagator._tracks[0].affine
    np.testing.assert_allclose(affine[:, 2], (60.0, 30.0), atol=0.5)
    np.testing.assert_allclose(affine[:, :2], np.eye(2), atol=0.01)

    propagator, _, _ = _propagate("rotate")
    _frame_by_frame(propagator, 20)
    affine = propagator._tracks[0].affine
    angle = math.degrees(math.atan2(affine[0, 1], affine[0, 0]))  # OpenCV: counter-clockwise
    assert angle == pytest.approx(40.0, abs=0.5)
    assert math.hypot(affine[0, 0], affine[1, 0]) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("motion", MOTIONS)
def test_warp_beats_holding_the_last_mask(motion: str) -> None:
    """Against the true mask, starting from the true mask on the model frame (so the
    model's weights play no part): warping beats showing the old mask at every age."""
    propagator, _, masks = _propagate(motion)
    for age in AGES:
        (placed,) = propagator.masks_for(age, (640, 480))
        warped, held = _iou(placed.mask, masks[age]), _iou(masks[0], masks[age])
        assert warped > held, (motion, age, warped, held)
        if age >= 5:
            assert warped >= 0.9 if motion != "occlude" or age < 30 else warped >= 0.75
            assert warped - held >= 0.05, (motion, age, warped, held)


def test_the_model_frame_itself_is_not_moved() -> None:
    propagator, _, masks = _propagate("translate", 3)
    (placed,) = propagator.masks_for(0, (640, 480))
    assert placed.source == "model" and not placed.moved
    np.testing.assert_array_equal(placed.mask, masks[0])


def test_a_result_older_than_the_kept_frames_is_held() -> None:
    frames, masks = moving_object("translate", 12)
    propagator = MaskPropagator(MotionSettings(history=4))
    for seq, image in enumerate(frames):
        propagator.add_frame(seq, image)
    propagator.set_masks(2, [(1, masks[2])])
    (placed,) = propagator.masks_for(11, (640, 480))
    assert placed.source == "propagated" and not placed.moved
    np.testing.assert_array_equal(placed.mask, masks[2])


def test_masks_follow_a_change_of_frame_size() -> None:
    propagator, _, _ = _propagate("translate", 3)
    (placed,) = propagator.masks_for(2, (320, 240))
    assert placed.mask.shape == (240, 320)


def test_state_stays_bounded_over_ten_thousand_frames() -> None:
    settings = MotionSettings(work_width=64, history=30, max_points=20)
    frames, masks = moving_object("rotate", 40, height=96, width=128)
    propagator = MaskPropagator(settings)
    for seq in range(10_000):
        propagator.add_frame(seq, frames[seq % 40])
        if seq % 25 == 0:
            propagator.set_masks(seq, [(1, masks[seq % 40]), (2, masks[(seq + 7) % 40])])
        if seq % 5 == 0:
            assert len(propagator.masks_for(seq, (128, 96))) == 2
    assert propagator.frames_held == settings.history
    assert all(len(t.current) <= settings.max_points for t in propagator._tracks)
