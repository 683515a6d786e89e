from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from streamseg.media.frame import Frame, Stamps, frame_from_av


def _image(h: int = 37, w: int = 53) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_frame_from_av_keeps_pixels_timing_and_source() -> None:
    image = _image()
    video = av.VideoFrame.from_ndarray(image, format="rgb24")
    video.pts, video.time_base = 3000, Fraction(1, 90_000)
    frame = frame_from_av(video, seq=7, recv_ts=100.0)
    assert np.array_equal(frame.image, image)
    # PyAV returns a padded, non-contiguous view for odd widths; the frame must not.
    assert frame.image.flags.c_contiguous
    assert (frame.seq, frame.width, frame.height) == (7, 53, 37)
    assert (frame.pts, frame.time_base) == (3000, Fraction(1, 90_000))
    assert frame.source_frame is video
    assert (frame.capture_ts, frame.capture_ts_source, frame.recv_ts) == (100.0, "receive", 100.0)


def test_frame_from_av_converts_yuv_and_flags_stream_clock() -> None:
    video = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")
    frame = frame_from_av(video.reformat(format="yuv420p"), 0, 10.0, capture_ts=9.5)
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
    assert np.abs(frame.image.astype(int) - 128).max() <= 3
    assert (frame.capture_ts, frame.capture_ts_source) == (9.5, "stream")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 8, 3), np.uint8)[:, ::2],
    ],
)
def test_frame_rejects_bad_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="frame image"):
        Frame(0, image, 0.0, "receive", 0.0)


def test_latency_breakdown_fills_in_as_stages_happen() -> None:
    frame = Frame(1, _image(2, 2), capture_ts=10.0, capture_ts_source="stream", recv_ts=10.5)
    stamps = Stamps.of(frame)
    assert stamps.latency_breakdown() == {"capture_to_recv": 0.5}
    stamps.infer_start, stamps.infer_end = 11.0, 11.25
    assert stamps.latency_breakdown() == {
        "capture_to_recv": 0.5,
        "slot_wait": 0.5,
        "inference": 0.25,
    }
    stamps.sent_ts = 12.0
    stages = stamps.latency_breakdown()
    assert stages["send"] == 0.75 and stages["capture_to_sent"] == 2.0
    assert sum(stages[k] for k in ("capture_to_recv", "slot_wait", "inference", "send")) == 2.0
