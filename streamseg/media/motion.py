"""Carry masks forward between model steps: every video frame gets the newest masks,
moved to where their objects are now.

Motion model, chosen by measurement (README, "Masks between model steps"): per track,
corners found inside the mask on the frame it was computed on are followed frame by
frame with pyramidal Lucas-Kanade on small grey copies of the video, and a similarity
(rotation, uniform scale, translation) fitted with RANSAC from their first to their
current positions moves the mask. A similarity is what a rigid object far from the
camera does, it needs only a handful of points, and RANSAC ignores points that slid
onto the background. Dense flow (DIS) costs more per frame and turns masks ragged;
phase correlation misses rotation and scale.

State is bounded: a ring of small grey frames (long enough to cover the model's
latency, so a result for an older frame can be caught up to the newest) and, per
track, at most `max_points` points. Pure numpy/OpenCV, no I/O; `add_frame` may run on
any thread, everything else on one (the compositor's).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamseg.protocol.messages import MaskSource

Affine = np.ndarray  # 2 x 3 float64, full-resolution pixel coordinates
_LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)


@dataclass(frozen=True, slots=True)
class MotionSettings:
    # Frames are tracked as grey at this width (640x480 -> 320x240: LK ~0.2 ms/track).
    work_width: int = 320
    # Grey frames kept; a model result older than this is shown unmoved.
    history: int = 150
    max_points: int = 80
    min_points: int = 6
    # RANSAC inlier threshold, in working-resolution pixels.
    ransac_px: float = 1.0
    # LK steps at most when catching up a new result over many frames.
    max_steps: int = 8

    def __post_init__(self) -> None:
        if self.work_width < 32 or self.history < 2 or self.min_points < 2:
            raise ValueError("work_width >= 32, history >= 2 and min_points >= 2 required")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.max_points < self.min_points:
            raise ValueError("max_points must be >= min_points")


@dataclass(frozen=True, slots=True)
class PropagatedMask:
    track_id: int
    mask: np.ndarray  # bool, at the resolution of the frame it is drawn on
    model_seq: int  # the frame the model computed the mask on
    propagated: bool  # False only on the model's own frame
    moved: bool  # a motion estimate was applied (False: held where the model put it)

    @property
    def source(self) -> MaskSource:
        return "propagated" if self.propagated else "model"


@dataclass(slots=True)
class _Grey:
    seq: int
    image: np.ndarray  # uint8, working resolution
    scale: float  # working / full resolution
    size: tuple[int, int]  # full-resolution width, height


@dataclass(slots=True)
class _TrackMotion:
    track_id: int
    mask: np.ndarray  # bool, full resolution of the model frame
    origin: np.ndarray  # [N, 2] float32 point positions on the model frame (working px)
    current: np.ndarray  # [N, 2] float32 the same points on the last tracked frame
    affine: Affine = field(default_factory=lambda: np.eye(2, 3))
    moved: bool = False


def _u8(mask: np.ndarray) -> np.ndarray:
    if mask.dtype != np.bool_:
        mask = mask != 0
    return np.ascontiguousarray(mask).view(np.uint8)


def grey_small(image: np.ndarray, work_width: int) -> tuple[np.ndarray, float]:
    """RGB uint8 -> grey at `work_width` (never upscaled) and the scale applied."""
    height, width = image.shape[:2]
    scale = min(1.0, work_width / width)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey, scale


def follow(prev: np.ndarray, nxt: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`points` [N, 2] on grey frame `prev` found again on `nxt` (pyramidal LK): the
    points that were found, and the mask of which ones they are."""
    found, status, _ = cv2.calcOpticalFlowPyrLK(
        prev,
        nxt,
        points.reshape(-1, 1, 2),
        None,  # type: ignore[call-overload]
        winSize=(15, 15),
        maxLevel=3,
        criteria=_LK_CRITERIA,
    )
    keep = status.reshape(-1).astype(bool)
    return found.reshape(-1, 2)[keep], keep


def fit_similarity(
    origin: np.ndarray, current: np.ndarray, min_points: int, ransac_px: float
) -> np.ndarray | None:
    """2x3 similarity mapping `origin` onto `current` (RANSAC), or a pure translation
    (median shift) when too few points remain for a fit, or None without points."""
    if len(origin) == 0:
        return None
    if len(origin) >= min_points:
        matrix, inliers = cv2.estimateAffinePartial2D(
            origin, current, method=cv2.RANSAC, ransacReprojThreshold=ransac_px
        )
        if matrix is not None and inliers is not None and int(inliers.sum()) >= min_points:
            return matrix.astype(np.float64)
    shift = np.median(current - origin, axis=0)
    return np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])


def to_full_resolution(affine: np.ndarray, scale: float) -> Affine:
    """A working-resolution affine expressed in full-resolution pixels."""
    full = affine.copy()
    full[:, 2] /= scale
    return full


def seed_points(grey: np.ndarray, mask: np.ndarray, max_points: int) -> np.ndarray:
    """Corners to follow for one mask (working resolution): inside the mask first, and
    along its edge when the inside is too flat to have any."""
    small = cv2.resize(_u8(mask), grey.shape[::-1], interpolation=cv2.INTER_NEAREST)
    kernel = np.ones((5, 5), np.uint8)
    inner = cv2.erode(small, kernel)
    for region in (inner, cv2.dilate(small, kernel)):
        if not region.any():
            continue
        found = cv2.goodFeaturesToTrack(
            grey, max_points, qualityLevel=0.01, minDistance=3, mask=region, blockSize=5
        )
        if found is not None and len(found) >= 4:
            return found.reshape(-1, 2).astype(np.float32)
    return np.zeros((0, 2), np.float32)


class MaskPropagator:
    """Newest model masks, moved onto any later frame of the same stream."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._frames: deque[_Grey] = deque(maxlen=self.settings.history)
        self._lock = threading.Lock()
        self._tracks: list[_TrackMotion] = []
        self._model_seq: int | None = None
        self._tracked_seq: int | None = None  # the frame `current` points lie on

    @property
    def model_seq(self) -> int | None:
        return self._model_seq

    @property
    def frames_held(self) -> int:
        return len(self._frames)

    def add_frame(self, seq: int, image: np.ndarray) -> None:
        """Record a frame (any thread; ~0.4 ms at 640x480). Seqs must increase."""
        grey, scale = grey_small(image, self.settings.work_width)
        entry = _Grey(seq, grey, scale, (image.shape[1], image.shape[0]))
        with self._lock:
            if self._frames and self._frames[-1].seq >= seq:
                return
            self._frames.append(entry)

    def set_masks(self, model_seq: int, masks: list[tuple[int, np.ndarray]]) -> None:
        """New model masks computed on frame `model_seq`: follow them from there."""
        if self._model_seq is not None and model_seq < self._model_seq:
            return
        origin = self._frame(model_seq)
        self._model_seq = model_seq
        self._tracked_seq = model_seq if origin is not None else None
        self._tracks = []
        for track_id, mask in masks:
            points = (
                seed_points(origin.image, mask, self.settings.max_points)
                if origin is not None and mask.any()
                else np.zeros((0, 2), np.float32)
            )
            self._tracks.append(_TrackMotion(track_id, mask, points, points.copy()))

    def masks_for(self, seq: int, size: tuple[int, int]) -> list[PropagatedMask]:
        """The current masks moved onto frame `seq` of `size` (width, height)."""
        if self._model_seq is None:
            return []
        if seq != self._model_seq:
            self._advance(seq)
        out = []
        for track in self._tracks:
            mask, moved = self._place(track, seq, size)
            out.append(
                PropagatedMask(track.track_id, mask, self._model_seq, seq != self._model_seq, moved)
            )
        return out

    def map_points(
        self,
        points: np.ndarray,
        from_seq: int,
        to_seq: int,
        box: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray | None:
        """Full-resolution `points` [N, 2] on frame `from_seq` moved to where the same
        content lies on frame `to_seq`, by following corners inside `box` (or around
        each point) through the recorded frames in between; None when those frames are
        not all recorded or nothing there can be followed."""
        with self._lock:
            lo, hi = sorted((from_seq, to_seq))
            path = [f for f in self._frames if lo <= f.seq <= hi]
        if not path or path[0].seq != lo or path[-1].seq != hi:
            return None
        if any(f.image.shape != path[0].image.shape for f in path):
            return None
        if from_seq > to_seq:
            path.reverse()
        scale = path[0].scale
        grey = path[0].image
        window = np.zeros(grey.shape, np.uint8)
        if box is not None:
            x0, y0, x1, y1 = (int(np.rint(v * scale)) for v in box)
            window[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = 1
        else:
            half = max(8, grey.shape[1] // 10)
            for x, y in np.asarray(points, np.float64).reshape(-1, 2) * scale:
                cx, cy = int(np.rint(x)), int(np.rint(y))
                window[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half] = 1
        found = cv2.goodFeaturesToTrack(
            grey, self.settings.max_points, qualityLevel=0.01, minDistance=3, mask=window
        )
        if found is None:
            return None
        origin = found.reshape(-1, 2).astype(np.float32)
        current = origin.copy()
        for prev, nxt in itertools.pairwise(path):
            current, keep = follow(prev.image, nxt.image, current)
            origin = origin[keep]
        fitted = fit_similarity(origin, current, self.settings.min_points, self.settings.ransac_px)
        if fitted is None:
            return None
        full = to_full_resolution(fitted, scale)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return pts @ full[:, :2].T + full[:, 2]

    # ---- internals -----------------------------------------------------------------

    def _frame(self, seq: int) -> _Grey | None:
        with self._lock:
            for entry in reversed(self._frames):
                if entry.seq == seq:
                    return entry
                if entry.seq < seq:
                    return None
        return None

    def _advance(self, seq: int) -> None:
        """Follow every track's points through the recorded frames up to `seq`. A
        result for a frame a model step ago is caught up in at most `max_steps` LK
        steps over evenly spaced frames (the pyramid takes the larger moves), so the
        outgoing frame that meets a new result is not held up for tens of steps."""
        if self._tracked_seq is None or seq <= self._tracked_seq:
            return
        with self._lock:
            path = [f for f in self._frames if self._tracked_seq <= f.seq <= seq]
        if not path or path[0].seq != self._tracked_seq:
            self._tracked_seq = None  # the frames in between are gone: hold from here
            return
        settings = self.settings
        if len(path) > settings.max_steps + 1:
            picks = np.linspace(0, len(path) - 1, settings.max_steps + 1).round().astype(int)
            path = [path[i] for i in sorted(set(picks.tolist()))]
        for prev, nxt in itertools.pairwise(path):
            if prev.image.shape != nxt.image.shape:
                self._tracked_seq = None
                return
            for track in self._tracks:
                if len(track.current) == 0:
                    continue
                track.current, keep = follow(prev.image, nxt.image, track.current)
                track.origin = track.origin[keep]
        self._tracked_seq = path[-1].seq
        last = path[-1]
        for track in self._tracks:
            fitted = fit_similarity(
                track.origin, track.current, settings.min_points, settings.ransac_px
            )
            if fitted is not None:
                track.affine = to_full_resolution(fitted, last.scale)
                track.moved = True

    def _place(
        self, track: _TrackMotion, seq: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, bool]:
        width, height = size
        mask = track.mask
        if seq == self._model_seq or not track.moved:
            moved = False
            placed = _u8(mask)
        else:
            moved = True
            placed = cv2.warpAffine(
                _u8(mask),
                track.affine,
                (mask.shape[1], mask.shape[0]),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        if placed.shape != (height, width):
            placed = cv2.resize(placed, (width, height), interpolation=cv2.INTER_NEAREST)
        return placed.view(bool), moved
