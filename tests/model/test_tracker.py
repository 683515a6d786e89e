"""Tracker behaviour: prompts, removal, refinement, bad input, bounded memory."""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.media.synthetic import moving_scene
from streamseg.model.build import build_sam2
from streamseg.model.errors import (
    InvalidFrameError,
    InvalidPromptError,
    NoFrameYetError,
    TooManyPointsError,
    TooManyTracksError,
    UnknownTrackError,
)
from streamseg.model.tracker import StreamTracker, TrackerSettings
from tests.conftest import TEST_CONFIG


@pytest.fixture(scope="module")
def graphs() -> TorchGraphs:
    return TorchGraphs(build_sam2(TEST_CONFIG, seed=0))


@pytest.fixture
def tracker(graphs: TorchGraphs, scene: list[np.ndarray]) -> StreamTracker:
    tr = StreamTracker(graphs, TrackerSettings(max_tracks=3, history=4))
    for t in range(3):
        tr.step(scene[t], seq=t)
    return tr


def _state(tr: StreamTracker) -> Any:
    return (
        tr.track_ids,
        tr.frames_processed,
        tr.last_seq,
        tr.state_nbytes(),
        {k: (len(t.memory), t.committed is None, sorted(t.points)) for k, t in tr._tracks.items()},
    )


def test_result_shapes_and_fields(tracker: StreamTracker, scene: list[np.ndarray]) -> None:
    outcome = tracker.add_prompt(5, points=[[30, 30]], labels=[1])
    assert outcome.created and outcome.exact and outcome.applied_seq == 2
    result = tracker.step(scene[3], seq=3)
    (track,) = result.tracks
    assert track.track_id == 5
    assert track.mask.shape == (96, 128) and track.mask.dtype == bool
    assert track.low_res_logits.shape == (32, 32)
    assert 0.0 <= track.object_score <= 1.0 and track.present == (track.object_score > 0.5)
    assert track.bbox is not None
    x0, y0, x1, y1 = track.bbox
    assert track.mask[y0:y1, x0:x1].sum() == track.mask.sum() == track.area
    assert set(result.times.as_dict()) >= {"encoder", "memory_attention", "decoder"}


def test_masks_follow_frame_resolution(graphs: TorchGraphs) -> None:
    tr = StreamTracker(graphs)
    tr.step(np.zeros((60, 80, 3), np.uint8), seq=0)
    tr.add_prompt(1, box=[10, 10, 40, 40])
    result = tr.step(np.zeros((120, 50, 3), np.uint8), seq=1)
    assert result.tracks[0].mask.shape == (120, 50)


def test_add_refine_remove_reset(tracker: StreamTracker, scene: list[np.ndarray]) -> None:
    first = tracker.add_prompt(1, points=[[30, 30]], labels=[1]).result
    tracker.step(scene[3], seq=3)
    refined = tracker.add_prompt(1, points=[[30, 30], [100, 80]], labels=[1, 0])
    assert not refined.created
    assert not np.array_equal(refined.result.low_res_logits, first.low_res_logits)
    tracker.add_prompt(2, box=[80, 20, 120, 60])
    assert [t.track_id for t in tracker.step(scene[4], seq=4).tracks] == [1, 2]
    tracker.remove_track(1)
    assert [t.track_id for t in tracker.step(scene[5], seq=5).tracks] == [2]
    tracker.reset()
    assert tracker.step(scene[6], seq=6).tracks == ()


def test_old_frame_prompt_applies_on_current_frame(tracker: StreamTracker) -> None:
    outcome = tracker.add_prompt(1, points=[[30, 30]], labels=[1], frame_seq=-50)
    assert not outcome.exact and outcome.applied_seq == 2 and outcome.requested_seq == -50
    assert outcome.caught_up_frames == 0


def test_repeated_click_before_next_frame_accumulates(tracker: StreamTracker) -> None:
    tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    second = tracker.add_prompt(1, points=[[90, 70]], labels=[0], clear_old_points=False)
    assert not second.created
    frame = tracker._history[-1].frame_idx
    assert tracker._tracks[1].points[frame][1].tolist() == [[1, 0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs points"),
        ({"points": [[1, 1]]}, "together"),
        ({"points": [[1, 1]], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [[1, 1]], "labels": [2]}, "labels must be"),
        ({"points": [[500, 1]], "labels": [1]}, "outside the 128x96 frame"),
        ({"points": [[-1, 1]], "labels": [1]}, "outside"),
        ({"points": [[float("nan"), 1]], "labels": [1]}, "finite"),
        ({"box": [10, 10, 5, 20]}, "x0 < x1"),
        ({"box": [10, 10, 20]}, "x0, y0, x1, y1"),
        ({"points": [], "labels": []}, "at least one point"),
        ({"points": "abc", "labels": [1]}, "points must be"),
    ],
)
def test_bad_prompts_raise_and_leave_state(
    tracker: StreamTracker, kwargs: dict[str, Any], message: str
) -> None:
    tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    before = _state(tracker)
    with pytest.raises(InvalidPromptError, match=message):
        tracker.add_prompt(1, **kwargs)
    with pytest.raises(InvalidPromptError):
        tracker.add_prompt(2, **kwargs)
    assert _state(tracker) == before


def test_other_typed_errors(tracker: StreamTracker, graphs: TorchGraphs) -> None:
    with pytest.raises(NoFrameYetError):
        StreamTracker(graphs).add_prompt(1, points=[[1, 1]], labels=[1])
    with pytest.raises(UnknownTrackError, match="no track 9"):
        tracker.remove_track(9)
    with pytest.raises(InvalidPromptError, match="track_id"):
        tracker.add_prompt(-1, points=[[1, 1]], labels=[1])
    for i in range(3):
        tracker.add_prompt(i, points=[[1, 1]], labels=[1])
    before = _state(tracker)
    with pytest.raises(TooManyTracksError):
        tracker.add_prompt(3, points=[[1, 1]], labels=[1])
    assert _state(tracker) == before


@pytest.mark.parametrize(
    ("image", "seq", "message"),
    [
        (np.zeros((96, 128, 3), np.float32), 10, "uint8"),
        (np.zeros((96, 128), np.uint8), 10, "H x W x 3"),
        (np.zeros((96, 128, 4), np.uint8), 10, "H x W x 3"),
        (np.zeros((0, 128, 3), np.uint8), 10, "sides"),
        ([[0]], 10, "numpy array"),
        (np.zeros((96, 128, 3), np.uint8), 2, "seq must increase"),
        (np.zeros((96, 128, 3), np.uint8), 2.5, "seq must be an int"),
    ],
)
def test_bad_frames_raise_and_leave_state(
    tracker: StreamTracker, image: Any, seq: Any, message: str
) -> None:
    tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    before = _state(tracker)
    with pytest.raises(InvalidFrameError, match=message):
        tracker.step(image, seq)
    assert _state(tracker) == before


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_is_flat_over_a_long_stream(graphs: TorchGraphs) -> None:
    """State size is constant and RSS flat (within 2%) from frame 100 to 1,000."""
    frames = moving_scene(50, seed=3)
    tr = StreamTracker(graphs)
    sizes, rss = {}, {}
    for t in range(1000):
        tr.step(frames[t % len(frames)], seq=t)
        if t == 0:
            tr.add_prompt(1, points=[[30, 30]], labels=[1])
            tr.add_prompt(2, box=[80, 20, 120, 60])
        if t == 400:
            tr.add_prompt(1, points=[[35, 30]], labels=[1])  # a correction mid-stream
        if t in (100, 500, 999):
            sizes[t] = tr.state_nbytes()
            rss[t] = _rss_bytes()
    assert sizes[100] > 0
    assert sizes[999] == sizes[500] <= sizes[100] * 1.02, sizes
    assert rss[999] <= rss[100] * 1.02, rss
    memory = tr._tracks[1].memory
    assert len(memory.recent) == memory.recent.maxlen
    assert sum(e.maskmem is not None for e in memory.recent) == 6 + tr.settings.history


def test_cond_frames_are_capped(graphs: TorchGraphs, scene: list[np.ndarray]) -> None:
    tr = StreamTracker(graphs, TrackerSettings(max_cond_frames=2))
    for t in range(6):
        tr.step(scene[t], seq=t)
        tr.add_prompt(1, points=[[30 + t, 30]], labels=[1])
    assert sorted(tr._tracks[1].memory.cond) == [4, 5]


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        TrackerSettings(history=0)
    with pytest.raises(ValueError):
        TrackerSettings(autocast_dtype="int8")
    assert copy.copy(TrackerSettings()) == TrackerSettings()


def test_accumulated_points_are_bounded(tracker: StreamTracker) -> None:
    """Adding points with clear_old_points=False stops at the per-frame limit with a
    typed error, so one client cannot make every prompt slower for all streams."""
    limit = tracker.settings.max_points_per_frame
    rng = np.random.default_rng(0)
    p32 = rng.uniform(1, 90, (32, 2)).tolist()
    tracker.add_prompt(1, points=p32, labels=[1] * 32)
    for _ in range(limit // 32 - 1):
        tracker.add_prompt(1, points=p32, labels=[1] * 32, clear_old_points=False)
    frame = tracker._history[-1].frame_idx
    assert tracker._tracks[1].points[frame][1].shape[1] == limit
    before = _state(tracker)
    for _ in range(3):
        with pytest.raises(TooManyPointsError, match=f"at most {limit}") as info:
            tracker.add_prompt(1, points=p32, labels=[1] * 32, clear_old_points=False)
        assert info.value.code == "too_many_points"
    assert _state(tracker) == before
    tracker.add_prompt(1, points=p32, labels=[1] * 32)  # starting over is always possible
    assert tracker._tracks[1].points[frame][1].shape[1] == 32


def test_a_box_cannot_join_earlier_points(tracker: StreamTracker) -> None:
    """SAM expects the box before any point, so Meta refuses this; so do we."""
    tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    before = _state(tracker)
    with pytest.raises(InvalidPromptError, match="box must come before"):
        tracker.add_prompt(1, box=[10, 10, 40, 40], clear_old_points=False)
    assert _state(tracker) == before


def test_new_track_ids_stay_within_the_limit(tracker: StreamTracker) -> None:
    limit = 2**31 - 1
    assert tracker.next_track_id(limit) == 1
    tracker.add_prompt(3, points=[[30, 30]], labels=[1])
    assert tracker.next_track_id(limit) == 4
    tracker.add_prompt(limit, points=[[30, 30]], labels=[1])
    assert tracker.next_track_id(limit) == 1
    tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    assert tracker.next_track_id(limit) == 2
    with pytest.raises(TooManyTracksError):
        tracker.next_track_id(1)


def _held(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def test_frames_of_a_batch_hold_only_their_own_features(graphs: TorchGraphs) -> None:
    """A stream's history must not keep the other frames of an encoder batch alive."""
    size = graphs.geometry.image_size
    with torch.inference_mode():
        batch = graphs.encode_image(torch.randn(8, 3, size, size))
    one = batch.select(3)
    tensors = (one.high_res_0, one.high_res_1, one.embed)
    assert sum(_held(t) for t in tensors) == one.nbytes
    assert _held(one.pos) == one.pos.element_size() * one.pos.nelement()
    torch.testing.assert_close(one.embed, batch.embed[3:4], rtol=0, atol=0)

    tr = StreamTracker(graphs, TrackerSettings(history=4))
    for seq in range(6):
        with torch.inference_mode():
            feats = graphs.encode_image(torch.randn(8, 3, size, size))
        tr.step_encoded(feats.select(seq % 8), seq, 128, 96)
    held = sum(
        _held(t)
        for r in tr._history
        for t in (r.features.high_res_0, r.features.high_res_1, r.features.embed)
    )
    assert held == tr.state_nbytes()


def _frames(width: int, height: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_a_stale_frame_seq_is_rescaled_to_the_newest_frame(graphs: TorchGraphs) -> None:
    """A click naming a frame that left the history lands at the same relative place on
    the newest frame, even when the resolution changed in between."""
    small, large = _frames(128, 96, 10, 1), _frames(256, 192, 10, 2)
    stale, direct = StreamTracker(graphs), StreamTracker(graphs)
    for seq, frame in enumerate(small + large):
        stale.step(frame, seq)
        direct.step(frame, seq)
    got = stale.add_prompt(2, points=[[126, 94]], labels=[1], frame_seq=5)
    want = direct.add_prompt(2, points=[[252, 188]], labels=[1])
    assert not got.exact and got.applied_seq == 19
    np.testing.assert_array_equal(got.result.low_res_logits, want.result.low_res_logits)

    for seq, frame in enumerate(_frames(64, 48, 10, 3), start=20):
        stale.step(frame, seq)
    later = stale.add_prompt(3, points=[[126, 94]], labels=[1], frame_seq=5)
    assert not later.exact and later.result.mask.shape == (48, 64)
    with pytest.raises(InvalidPromptError, match="outside the 256x192 frame"):
        stale.add_prompt(3, points=[[300, 10]], labels=[1], frame_seq=12)
