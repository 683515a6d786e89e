"""The streaming tracker: SAM 2 run frame by frame with bounded per-track memory.

Meta's `SAM2VideoPredictor` needs the whole video and keeps every frame's state;
this runs the same networks (through `SamGraphs`) on one frame at a time. One
image encoding per frame is shared by all tracks, tracks whose memory layouts
match are batched, and each track's memory is a `TrackMemory` of fixed size.
Not thread-safe: one inference thread owns a tracker.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from streamseg.backends.base import DecoderOutput, ImageFeatures, SamGraphs
from streamseg.model.errors import (
    InvalidFrameError,
    InvalidPromptError,
    NoFrameYetError,
    TooManyPointsError,
    TooManyTracksError,
    UnknownTrackError,
)
from streamseg.model.memory import MemoryEntry, MemoryLayout, TrackMemory
from streamseg.model.prompting import inference_context, preprocess_image, prompt_tensors
from streamseg.model.stages import StageClock, StageTimes
from streamseg.model.transfer import to_device, to_host

__all__ = ["FrameResult", "StageClock", "StageTimes", "StreamTracker", "TrackResult"]
from streamseg.protocol.masks import mask_bbox

PREV_LOGITS_CLAMP = 32.0


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    max_tracks: int = 16
    # Meta keeps every prompted frame; a live stream must cap them (oldest evicted).
    max_cond_frames: int = 4
    # Frames whose image features are kept so a prompt lands on the frame it was made on.
    history: int = 8
    # Like Meta's `add_all_frames_to_correct_as_cond=True`: a correction click stays in
    # memory as a conditioning frame instead of fading out after num_maskmem frames.
    corrections_as_cond: bool = True
    max_frame_side: int = 8192
    # Points a track may accumulate on one frame (`clear_old_points=False`); each prompt
    # costs time on the one inference thread every stream shares.
    max_points_per_frame: int = 64
    # CUDA only: run the graphs under autocast with this dtype ("bfloat16"/"float16").
    autocast_dtype: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_tracks, self.max_cond_frames, self.history, self.max_points_per_frame) < 1:
            raise ValueError(
                "max_tracks, max_cond_frames, history and max_points_per_frame must be >= 1"
            )
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError("autocast_dtype must be None, 'bfloat16' or 'float16'")


@dataclass(frozen=True, slots=True)
class TrackResult:
    track_id: int
    mask: np.ndarray  # [H, W] bool at the frame's resolution
    low_res_logits: np.ndarray  # [4h, 4w] float32
    score: float  # the decoder's predicted IoU for the mask
    object_score: float  # probability that the object is visible
    present: bool
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive)
    area: int = 0


@dataclass(frozen=True, slots=True)
class FrameResult:
    seq: int
    frame_idx: int
    width: int
    height: int
    tracks: tuple[TrackResult, ...]
    times: StageTimes

    def track(self, track_id: int) -> TrackResult:
        for t in self.tracks:
            if t.track_id == track_id:
                return t
        raise UnknownTrackError(f"track {track_id} is not in the result of seq {self.seq}")


@dataclass(frozen=True, slots=True)
class PromptOutcome:
    track_id: int
    created: bool
    requested_seq: int | None
    applied_seq: int
    exact: bool  # applied on the frame it named (False: it was too old or unknown)
    caught_up_frames: int
    result: TrackResult  # the track on the newest processed frame


@dataclass(frozen=True, slots=True)
class _FrameRecord:
    frame_idx: int
    seq: int
    width: int
    height: int
    features: ImageFeatures


@dataclass(slots=True)
class _Track:
    track_id: int
    memory: TrackMemory
    # Meta's predictor keeps a prompt's output apart until it next propagates: later
    # prompts neither attend to it nor count its frame as tracked. While a prompt on the
    # newest frame waits for the next step, this is the memory as of the last step.
    committed: TrackMemory | None = None
    # Accumulated prompt points per frame (model coords [1,P,2], labels [1,P]), as Meta
    # keeps them, for frames still in the history.
    points: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    last: TrackResult | None = None

    @property
    def tracked(self) -> TrackMemory:
        """The memory later prompts see (Meta's consolidated outputs)."""
        return self.memory if self.committed is None else self.committed


class StreamTracker:
    def __init__(self, graphs: SamGraphs, settings: TrackerSettings | None = None) -> None:
        self.graphs = graphs
        self.settings = settings or TrackerSettings()
        geo = graphs.geometry
        self._geo = geo
        self._device = self.graphs.device
        self._history: deque[_FrameRecord] = deque(maxlen=self.settings.history)
        self._tracks: dict[int, _Track] = {}
        self._next_frame_idx = 0
        self._last_seq: int | None = None
        self._ptr_splits = geo.hidden_dim // geo.mem_dim
        self._t_diff_max = geo.max_obj_ptrs - 1
        self._maskmem_pos: torch.Tensor | None = None  # [hw, Cm], the same for every memory
        # (first seq, width, height) of each run of equal frame sizes, so a prompt naming a
        # frame that left the history is rescaled from that frame's size.
        self._sizes: deque[tuple[int, int, int]] = deque(maxlen=64)

    # ---- public API -----------------------------------------------------------------

    @property
    def track_ids(self) -> list[int]:
        return sorted(self._tracks)

    @property
    def frames_processed(self) -> int:
        return self._next_frame_idx

    @property
    def last_seq(self) -> int | None:
        return self._last_seq

    def validate_frame(self, image: np.ndarray, seq: int) -> None:
        if not isinstance(image, np.ndarray):
            raise InvalidFrameError(f"frame must be a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise InvalidFrameError(f"frame dtype must be uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise InvalidFrameError(f"frame must be H x W x 3 (RGB), got shape {image.shape}")
        h, w = image.shape[:2]
        limit = self.settings.max_frame_side
        if not (1 <= h <= limit and 1 <= w <= limit):
            raise InvalidFrameError(f"frame sides must be 1..{limit}, got {w}x{h}")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise InvalidFrameError(f"seq must be an int, got {type(seq).__name__}")
        if self._last_seq is not None and seq <= self._last_seq:
            raise InvalidFrameError(f"seq must increase: got {seq} after {self._last_seq}")

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> normalised [1, 3, S, S] on the model device."""
        return preprocess_image(image, self._geo.image_size, self._device)

    def step(self, image: np.ndarray, seq: int) -> FrameResult:
        """Encode one frame and track every track on it."""
        self.validate_frame(image, seq)
        clock = StageClock(StageTimes(), self._device)
        with self.inference():
            with clock.stage("preprocess"):
                tensor = self.preprocess(image)
            with clock.stage("encoder"):
                features = self.graphs.encode_image(tensor)
            return self._step_features(features, seq, image.shape[1], image.shape[0], clock)

    def step_encoded(
        self,
        features: ImageFeatures,
        seq: int,
        width: int,
        height: int,
        batch_clock: StageClock | None = None,
        batch_size: int = 1,
    ) -> FrameResult:
        """Track on features encoded elsewhere (the worker batches encoders across
        streams). `batch_clock` timed that batch's preprocessing and encoder; it is read
        once this step's results are on the host, and each frame is charged its share."""
        if self._last_seq is not None and seq <= self._last_seq:
            raise InvalidFrameError(f"seq must increase: got {seq} after {self._last_seq}")
        clock = StageClock(StageTimes(), self._device)
        with self.inference():
            result = self._step_features(features, seq, width, height, clock)
        if batch_clock is not None:
            shared = batch_clock.resolve()
            result.times.preprocess += shared.preprocess / batch_size
            result.times.encoder += shared.encoder / batch_size
        return result

    def add_prompt(
        self,
        track_id: int,
        *,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        frame_seq: int | None = None,
        clear_old_points: bool = True,
    ) -> PromptOutcome:
        """Create or refine a track from points (+labels) and/or a box in pixel
        coordinates of the frame `frame_seq` (default: the newest frame)."""
        if not self._history:
            raise NoFrameYetError("no frame has been processed yet; send a frame first")
        if isinstance(track_id, bool) or not isinstance(track_id, int) or track_id < 0:
            raise InvalidPromptError(f"track_id must be a non-negative int, got {track_id!r}")
        record, exact = self._prompt_frame(frame_seq)
        named_w, named_h = (
            (record.width, record.height) if exact else self._size_at(frame_seq, record)
        )
        coords, point_labels = prompt_tensors(points, labels, box, named_w, named_h)
        if box is not None and not clear_old_points:
            raise InvalidPromptError(
                "a box must come before any points on a frame, so it cannot be added to "
                "earlier points: send it with clear_old_points true"
            )
        track = self._tracks.get(track_id)
        if track is None and len(self._tracks) >= self.settings.max_tracks:
            raise TooManyTracksError(f"at most {self.settings.max_tracks} tracks per stream")

        # The model sees every frame resized to S x S, so coordinates scaled from the named
        # frame's size land at the same relative place on the frame they are applied to.
        scale = torch.tensor([self._geo.image_size / named_w, self._geo.image_size / named_h])
        model_coords = to_device((coords * scale)[None], self._device)
        model_labels = to_device(point_labels[None], self._device)
        clock = StageClock(StageTimes(), self._device)
        with self.inference():
            new_track = self._apply_prompt(
                track_id, track, record, model_coords, model_labels, clear_old_points
            )
            caught_up = 0
            for later in self._history:
                if later.frame_idx > record.frame_idx:
                    (entry,) = self._track_frame(later, [new_track], clock)
                    caught_up += 1
                    if later is self._history[-1]:
                        new_track.last = self._results(later, [(track_id, entry)])[0]
        clock.resolve()
        if caught_up:
            # Re-tracking up to the newest frame is Meta's propagation: every track's
            # pending prompt outputs are committed by it.
            for other in self._tracks.values():
                other.committed = None
        self._tracks[track_id] = new_track
        assert new_track.last is not None
        return PromptOutcome(
            track_id=track_id,
            created=track is None,
            requested_seq=frame_seq,
            applied_seq=record.seq,
            exact=exact,
            caught_up_frames=caught_up,
            result=new_track.last,
        )

    def frame_size(self, seq: int) -> tuple[int, int]:
        """Width and height of frame `seq` (its run of equal sizes; the newest if unknown)."""
        for record in self._history:
            if record.seq == seq:
                return record.width, record.height
        return self._size_at(seq, self._history[-1]) if self._history else (0, 0)

    def history_seq_before(self, seq: int) -> int | None:
        """The newest frame whose features are kept for prompts, at or before `seq`."""
        found = [r.seq for r in self._history if r.seq <= seq]
        return found[-1] if found else None

    def next_track_id(self, max_id: int) -> int:
        """An id for a new track: one past the highest in use, or the lowest free one
        when that would pass `max_id` (ids stay within what the protocol can name)."""
        candidate = max(self._tracks, default=0) + 1
        if candidate <= max_id:
            return candidate
        free = next((i for i in range(1, max_id + 1) if i not in self._tracks), None)
        if free is None:
            raise TooManyTracksError(f"no free track id up to {max_id}")
        return free

    def remove_track(self, track_id: int) -> None:
        if track_id not in self._tracks:
            raise UnknownTrackError(f"no track {track_id}; tracks are {self.track_ids}")
        del self._tracks[track_id]

    def reset(self) -> None:
        """Forget every track (frame history is kept, so new prompts still land exactly)."""
        self._tracks.clear()

    def state_nbytes(self) -> int:
        """Bytes held by the tracker's state (features history + track memories)."""
        feats = sum(r.features.nbytes for r in self._history)
        return feats + sum(t.memory.nbytes for t in self._tracks.values())

    # ---- internals --------------------------------------------------------------------

    def inference(self) -> contextlib.ExitStack:
        """No autograd, and the configured CUDA autocast (also for encoders run elsewhere
        on this tracker's frames, so `--dtype` covers the largest graph too)."""
        return inference_context(self._device, self.settings.autocast_dtype)

    def _prompt_frame(self, frame_seq: int | None) -> tuple[_FrameRecord, bool]:
        newest = self._history[-1]
        if frame_seq is None:
            return newest, True
        if isinstance(frame_seq, bool) or not isinstance(frame_seq, int):
            raise InvalidPromptError(f"frame_seq must be an int, got {frame_seq!r}")
        for record in self._history:
            if record.seq == frame_seq:
                return record, True
        return newest, False

    def _size_at(self, seq: int | None, newest: _FrameRecord) -> tuple[int, int]:
        """Width and height of frame `seq`, which is no longer in the history."""
        if seq is None or seq > newest.seq or not self._sizes:
            return newest.width, newest.height
        for first_seq, width, height in reversed(self._sizes):
            if first_seq <= seq:
                return width, height
        return self._sizes[0][1], self._sizes[0][2]

    def _step_features(
        self, features: ImageFeatures, seq: int, width: int, height: int, clock: StageClock
    ) -> FrameResult:
        record = _FrameRecord(self._next_frame_idx, seq, width, height, features)
        self._history.append(record)
        self._next_frame_idx += 1
        self._last_seq = seq
        if not self._sizes or self._sizes[-1][1:] != (width, height):
            self._sizes.append((seq, width, height))
        tracks = [self._tracks[k] for k in sorted(self._tracks)]
        outputs = self._track_frame(record, tracks, clock) if tracks else []
        with clock.stage("postprocess"):
            results = self._results(
                record, [(t.track_id, e) for t, e in zip(tracks, outputs, strict=True)]
            )
        times = clock.resolve()
        oldest = self._history[0].frame_idx
        for track, result in zip(tracks, results, strict=True):
            track.last = result
            track.committed = None
            track.points = {f: p for f, p in track.points.items() if f >= oldest}
        return FrameResult(seq, record.frame_idx, width, height, tuple(results), times)

    def _new_memory(self) -> TrackMemory:
        return TrackMemory(self._geo, self.settings.max_cond_frames, self.settings.history)

    def _apply_prompt(
        self,
        track_id: int,
        track: _Track | None,
        record: _FrameRecord,
        coords: torch.Tensor,
        labels: torch.Tensor,
        clear_old_points: bool,
    ) -> _Track:
        """Meta's `add_new_points_or_box` on one frame: an initial conditioning frame when
        the track has not been tracked there, else a correction that attends to the
        track's committed memory and refines the frame's newest output."""
        f = record.frame_idx
        if track is None:
            tracked, memory, points = self._new_memory(), self._new_memory(), {}
        else:
            tracked, memory, points = track.tracked, track.memory.clone(), dict(track.points)
        if not clear_old_points and f in points:
            coords = torch.cat([points[f][0], coords], dim=1)
            labels = torch.cat([points[f][1], labels], dim=1)
        num_points = int(labels.shape[1])
        limit = self.settings.max_points_per_frame
        if num_points > limit:
            raise TooManyPointsError(
                f"track {track_id} would have {num_points} points on this frame; at most "
                f"{limit}: send the prompt with clear_old_points true to start over"
            )
        previous = memory.entry_at(f)
        is_init = tracked.entry_at(f) is None
        prev_logits = None
        if previous is not None and previous.low_res_logits is not None:
            prev_logits = (
                previous.low_res_logits[None].float().clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
            )
        feats = record.features
        if is_init:
            pix = feats.embed + self.graphs.no_memory_embedding().permute(0, 2, 1)[..., None]
        else:
            pix = self._attend([tracked.layout(f)], feats)
        memory.rollback(f)
        memory.discard(f)
        dec = self.graphs.decode(
            pix,
            (feats.high_res_0, feats.high_res_1),
            coords,
            labels,
            prev_logits,
            self.graphs.uses_multimask(is_init, num_points),
        )
        entry = self._encode_entries(f, feats, dec, from_points=True)[0]
        if is_init or self.settings.corrections_as_cond or f in memory.cond:
            memory.add_cond(entry)
        else:
            memory.add_recent(entry)
        points[f] = (coords, labels)
        oldest = self._history[0].frame_idx
        new_track = _Track(
            track_id=track_id,
            memory=memory,
            committed=tracked if f == self._history[-1].frame_idx else None,
            points={k: v for k, v in points.items() if k >= oldest},
        )
        new_track.last = self._results(record, [(track_id, entry)])[0]
        return new_track

    def _track_frame(
        self, record: _FrameRecord, tracks: list[_Track], clock: StageClock
    ) -> list[MemoryEntry]:
        """Advance `tracks` onto `record`, batching tracks with equal memory layouts."""
        outputs: dict[int, MemoryEntry] = {}
        groups: dict[tuple[int, int], list[tuple[int, MemoryLayout]]] = {}
        for i, track in enumerate(tracks):
            stored = track.memory.cond.get(record.frame_idx)
            if stored is not None:
                outputs[i] = stored
                continue
            layout = track.memory.layout(record.frame_idx)
            groups.setdefault(layout.shape, []).append((i, layout))
        feats = record.features
        for members in groups.values():
            batch = len(members)
            fb = feats.expand(batch)
            with clock.stage("memory_attention"):
                pix = self._attend([layout for _, layout in members], fb)
            with clock.stage("decoder"):
                dec = self.graphs.decode(
                    pix,
                    (fb.high_res_0, fb.high_res_1),
                    None,
                    None,
                    None,
                    self.graphs.uses_multimask(False, 0),
                )
            with clock.stage("memory_encoder"):
                entries = self._encode_entries(record.frame_idx, fb, dec, from_points=False)
            for k, (i, _) in enumerate(members):
                tracks[i].memory.add_recent(entries[k])
                outputs[i] = entries[k]
        return [outputs[i] for i in range(len(tracks))]

    def _attend(self, layouts: list[MemoryLayout], feats: ImageFeatures) -> torch.Tensor:
        """Memory attention for a batch of tracks with equal layout shapes."""
        geo = self._geo
        batch = len(layouts)
        h = w = geo.feat_size
        curr = feats.embed.flatten(2).permute(2, 0, 1)
        curr_pos = feats.pos.flatten(2).permute(2, 0, 1).expand(-1, batch, -1)
        mem, mem_pos = [], []
        tpos = self.graphs.memory_time_embedding()
        for layout in layouts:
            tokens, pos = [], []
            for t_pos, entry in layout.memories:
                assert entry.maskmem is not None and self._maskmem_pos is not None
                tokens.append(entry.maskmem.to(self._device).float().flatten(1).t())
                pos.append(self._maskmem_pos + tpos[geo.num_maskmem - t_pos - 1, 0])
            if layout.pointers:
                distances = torch.tensor([d for d, _ in layout.pointers], dtype=torch.float32)
                rel = to_device(distances, self._device)
                ptr_pos = self.graphs.pointer_time_embedding(rel / self._t_diff_max)
                ptrs = torch.stack([e.obj_ptr for _, e in layout.pointers])
                tokens.append(ptrs.reshape(-1, geo.mem_dim))
                pos.append(ptr_pos.repeat_interleave(self._ptr_splits, dim=0))
            mem.append(torch.cat(tokens))
            mem_pos.append(torch.cat(pos))
        num_ptr_tokens = len(layouts[0].pointers) * self._ptr_splits
        out = self.graphs.attend_memory(
            curr, curr_pos, torch.stack(mem, dim=1), torch.stack(mem_pos, dim=1), num_ptr_tokens
        )
        return out.permute(1, 2, 0).reshape(batch, geo.hidden_dim, h, w)

    def _encode_entries(
        self, frame_idx: int, feats: ImageFeatures, dec: DecoderOutput, *, from_points: bool
    ) -> list[MemoryEntry]:
        high_res = dec.high_res_logits
        if high_res is None:
            size = self._geo.image_size
            high_res = F.interpolate(
                dec.low_res_logits, size=(size, size), mode="bilinear", align_corners=False
            )
        mask_for_mem = self.graphs.mask_for_memory(high_res, from_points)
        maskmem, maskmem_pos = self.graphs.encode_memory(
            feats.embed, mask_for_mem, dec.object_score_logits
        )
        if self._maskmem_pos is None:
            self._maskmem_pos = maskmem_pos[0].flatten(1).t().float()
        maskmem = maskmem.to(torch.bfloat16)
        # Kept on the device; read with the masks in one copy (`_results`).
        scores = torch.stack(
            [dec.object_score_logits[:, 0].float(), dec.iou.reshape(-1).float()], dim=1
        )
        return [
            MemoryEntry(
                frame_idx=frame_idx,
                obj_ptr=dec.obj_ptr[k].float(),
                maskmem=maskmem[k],
                low_res_logits=dec.low_res_logits[k],
                scores=scores[k],
            )
            for k in range(dec.low_res_logits.shape[0])
        ]

    def _results(
        self, record: _FrameRecord, outputs: list[tuple[int, MemoryEntry]]
    ) -> list[TrackResult]:
        """Masks at the frame's own resolution, upsampled like Meta's predictor does;
        masks, low-res logits and scores of every track reach the host in one copy."""
        if not outputs:
            return []
        fresh = [e.low_res_logits for _, e in outputs]
        assert all(t is not None for t in fresh)
        logits = torch.stack(fresh)  # type: ignore[arg-type]
        full = F.interpolate(
            logits, size=(record.height, record.width), mode="bilinear", align_corners=False
        )
        scores = torch.stack([e.scores for _, e in outputs])
        masks, low, host_scores = to_host(full[:, 0] > 0, logits[:, 0].float(), scores)
        results = []
        for k, (track_id, _) in enumerate(outputs):
            score_logit, iou = float(host_scores[k, 0]), float(host_scores[k, 1])
            results.append(
                TrackResult(
                    track_id=track_id,
                    mask=masks[k],
                    low_res_logits=low[k],
                    score=iou,
                    object_score=1.0 / (1.0 + math.exp(-max(min(score_logit, 60.0), -60.0))),
                    present=score_logit > 0,
                    bbox=mask_bbox(masks[k]),
                    area=int(np.count_nonzero(masks[k])),
                )
            )
        return results
