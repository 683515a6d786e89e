"""Bounded per-track memory bank.

Meta's video predictor keeps every frame's outputs forever and looks memories up
by frame index. Here a track keeps only what SAM 2 can ever attend to again:
capped conditioning (prompted) frames, a ring of recent frames (long enough for
the object-pointer window plus the exact-frame prompt history, so a prompt on a
recent frame can roll the track back), and nothing else. Size is O(1) in stream
length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import torch

from streamseg.backends.base import ModelGeometry


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One frame's contribution to a track's memory."""

    frame_idx: int
    obj_ptr: torch.Tensor  # [C]
    maskmem: torch.Tensor | None  # [Cm, h, w] bfloat16 (as Meta stores it); None once aged out
    low_res_logits: torch.Tensor | None  # [1, 4h, 4w]; kept while a prompt may refine it
    scores: torch.Tensor  # [2] float32 on the model device: object score logit, predicted IoU

    @property
    def nbytes(self) -> int:
        tensors = [
            t
            for t in (self.obj_ptr, self.maskmem, self.low_res_logits, self.scores)
            if t is not None
        ]
        return sum(t.element_size() * t.nelement() for t in tensors)


@dataclass(frozen=True, slots=True)
class MemoryLayout:
    """What a track attends to on one frame; tracks with equal `shape` batch together."""

    memories: tuple[tuple[int, MemoryEntry], ...]  # (t_pos, entry), t_pos 0 = conditioning
    pointers: tuple[tuple[int, MemoryEntry], ...]  # (signed frame distance, entry)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.memories), len(self.pointers)


@dataclass(slots=True)
class TrackMemory:
    geometry: ModelGeometry
    max_cond_frames: int
    history: int
    cond: dict[int, MemoryEntry] = field(default_factory=dict)
    recent: deque[MemoryEntry] = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.geometry.max_obj_ptrs - 1 + self.history)

    @property
    def _spatial_keep(self) -> int:
        return self.geometry.num_maskmem - 1 + self.history

    def add_cond(self, entry: MemoryEntry) -> None:
        """Store a prompted frame; the oldest is evicted beyond the cap (as Meta's
        `select_closest_cond_frames` would stop attending to it on a live stream)."""
        self.cond[entry.frame_idx] = entry
        self.discard(entry.frame_idx)
        while len(self.cond) > self.max_cond_frames:
            del self.cond[min(self.cond)]

    def add_recent(self, entry: MemoryEntry) -> None:
        if self.recent and self.recent[-1].frame_idx >= entry.frame_idx:
            raise ValueError("memory entries must arrive in frame order")
        self.recent.append(entry)
        aged_at = len(self.recent) - self._spatial_keep - 1
        if aged_at >= 0 and self.recent[aged_at].maskmem is not None:
            self.recent[aged_at] = replace(self.recent[aged_at], maskmem=None, low_res_logits=None)

    def entry_at(self, frame_idx: int) -> MemoryEntry | None:
        if frame_idx in self.cond:
            return self.cond[frame_idx]
        for entry in reversed(self.recent):
            if entry.frame_idx == frame_idx:
                return entry
            if entry.frame_idx < frame_idx:
                break
        return None

    def rollback(self, frame_idx: int) -> None:
        """Forget tracked frames after `frame_idx` (they will be recomputed); prompted
        frames stay, as their prompts still hold."""
        while self.recent and self.recent[-1].frame_idx > frame_idx:
            self.recent.pop()

    def discard(self, frame_idx: int) -> None:
        """Drop the tracked (non-prompted) entry of one frame, if any."""
        kept = [e for e in self.recent if e.frame_idx != frame_idx]
        if len(kept) != len(self.recent):
            self.recent = deque(kept, maxlen=self.recent.maxlen)

    def layout(self, frame_idx: int) -> MemoryLayout:
        """Select memories for `frame_idx` by SAM 2's rules (`max_cond_frames_in_attn`
        -1): every conditioning frame with t_pos 0, even the frame itself or a later one
        (a refined frame attends to its own earlier prompt output; frames re-tracked after
        a rollback see a prompt made further on); the last num_maskmem-1 tracked frames by
        distance; pointers from conditioning frames up to `frame_idx` plus the last
        max_obj_ptrs-1 tracked frames."""
        cond = sorted(self.cond)
        memories: list[tuple[int, MemoryEntry]] = [(0, self.cond[t]) for t in cond]
        by_idx = {e.frame_idx: e for e in self.recent if e.frame_idx < frame_idx}
        num_maskmem = self.geometry.num_maskmem
        for t_pos in range(1, num_maskmem):
            entry = by_idx.get(frame_idx - (num_maskmem - t_pos))
            if entry is not None and entry.maskmem is not None:
                memories.append((t_pos, entry))
        pointers: list[tuple[int, MemoryEntry]] = [
            (frame_idx - t, self.cond[t]) for t in cond if t <= frame_idx
        ]
        for t_diff in range(1, self.geometry.max_obj_ptrs):
            t = frame_idx - t_diff
            if t < 0:
                break
            entry = by_idx.get(t)
            if entry is not None:
                pointers.append((t_diff, entry))
        return MemoryLayout(tuple(memories), tuple(pointers))

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.cond.values()) + sum(e.nbytes for e in self.recent)

    def clone(self) -> TrackMemory:
        """Copy the containers (entries are immutable), for copy-on-write updates."""
        twin = TrackMemory(self.geometry, self.max_cond_frames, self.history, dict(self.cond))
        twin.recent.extend(self.recent)
        return twin

    def __len__(self) -> int:
        return len(self.cond) + len(self.recent)
