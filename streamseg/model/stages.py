"""Per-stage timing of one tracking step, without changing what it measures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(slots=True)
class StageTimes:
    preprocess: float = 0.0
    encoder: float = 0.0
    memory_attention: float = 0.0
    decoder: float = 0.0
    memory_encoder: float = 0.0
    postprocess: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "preprocess": self.preprocess,
            "encoder": self.encoder,
            "memory_attention": self.memory_attention,
            "decoder": self.decoder,
            "memory_encoder": self.memory_encoder,
            "postprocess": self.postprocess,
        }


class StageClock:
    """Per-stage times of one step. On CUDA each stage is bracketed by CUDA events and
    read once the step's results are on the host (no synchronisation between stages,
    so timing does not change what it measures); on CPU it is wall time."""

    def __init__(self, times: StageTimes, device: torch.device) -> None:
        self.times = times
        self._events = device.type == "cuda"
        self._pending: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._events:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
            yield
            end_event.record()
            self._pending.append((name, start_event, end_event))
            return
        start = time.perf_counter()
        yield
        setattr(self.times, name, getattr(self.times, name) + time.perf_counter() - start)

    def resolve(self) -> StageTimes:
        for name, start_event, end_event in self._pending:
            end_event.synchronize()
            seconds = start_event.elapsed_time(end_event) / 1000.0
            setattr(self.times, name, getattr(self.times, name) + seconds)
        self._pending.clear()
        return self.times
