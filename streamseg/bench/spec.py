"""What one benchmark cell runs, and the matrix of cells a command line asks for."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

GENERATED = "generated"


class BenchSpecError(ValueError):
    """A matrix the benchmark cannot run (bad list, size or combination)."""


@dataclass(frozen=True, slots=True)
class CellSpec:
    model: str
    weights: str  # "random" (seeded), "official" or a checkpoint path
    backend: str  # torch | onnx | tensorrt | auto
    image_size: int
    frame_width: int
    frame_height: int
    streams: int
    tracks: int  # per stream
    source: str = GENERATED  # or a file path / URL every stream reads
    source_fps: int = 30
    seconds: float = 10.0  # measured per run
    runs: int = 3
    warmup_s: float = 5.0
    threads: int | None = None
    device: str = "auto"
    dtype: str | None = None  # CUDA autocast: bfloat16 | float16
    interval: int = 1  # the model runs on every Nth frame of each stream

    @property
    def key(self) -> str:
        """Identifies the cell across reports (`--compare`)."""
        return (
            f"{self.model}|{self.weights}|{self.backend}|{self.image_size}px|"
            f"{self.frame_width}x{self.frame_height}|{self.streams}s|{self.tracks}t|"
            f"{self.source}|{self._runtime}{self._interval}"
        )

    @property
    def _interval(self) -> str:
        """Only when set, so cells of reports from before the flag still match."""
        return f"|interval={self.interval}" if self.interval != 1 else ""

    @property
    def reference_key(self) -> str:
        """Cells that share a Meta reference measurement (streams do not change it)."""
        return (
            f"{self.model}|{self.weights}|{self.image_size}px|"
            f"{self.frame_width}x{self.frame_height}|{self.tracks}t|{self.source}|{self._runtime}"
        )

    @property
    def _runtime(self) -> str:
        return f"{self.device}|{self.dtype or 'fp32'}|threads={self.threads or 'default'}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellSpec:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise BenchSpecError(f"unknown cell fields: {sorted(unknown)}")
        return cls(**data)


def cell_label(spec: Mapping[str, Any], sep: str = " ") -> str:
    """How tables, progress lines and the plot name a cell (`spec` as in the report)."""
    interval = spec.get("interval", 1)
    return (
        f"{spec['model']}@{spec['image_size']} {spec['backend']}{sep}"
        f"{spec['frame_width']}x{spec['frame_height']} {spec['streams']}s×{spec['tracks']}t"
        + (f" N={interval}" if interval != 1 else "")
    )


def parse_list(text: str, name: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BenchSpecError(f"--{name} needs at least one value")
    return list(dict.fromkeys(items))


def parse_ints(text: str, name: str, low: int, high: int) -> list[int]:
    values = []
    for item in parse_list(text, name):
        try:
            value = int(item)
        except ValueError:
            raise BenchSpecError(f"--{name}: {item!r} is not a whole number") from None
        if not low <= value <= high:
            raise BenchSpecError(f"--{name}: {value} is outside {low}..{high}")
        values.append(value)
    return values


def parse_frame_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in parse_list(text, "frame-size"):
        width, sep, height = item.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise BenchSpecError(f"--frame-size: {item!r} is not WIDTHxHEIGHT")
        w, h = int(width), int(height)
        if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2 or h % 2:
            raise BenchSpecError(f"--frame-size: {item} must be even, 16x16..7680x4320")
        sizes.append((w, h))
    return sizes


def expand(
    *,
    models: list[str],
    weights: list[str],
    backends: list[str],
    image_sizes: list[int],
    frame_sizes: list[tuple[int, int]],
    streams: list[int],
    tracks: list[int],
    intervals: list[int] | None = None,
    **common: Any,
) -> list[CellSpec]:
    """Every combination, cheapest first so early cells report early."""
    cells = [
        CellSpec(
            model=m,
            weights=w,
            backend=b,
            image_size=s,
            frame_width=fw,
            frame_height=fh,
            streams=n,
            tracks=k,
            interval=i,
            **common,
        )
        for m, w, b, s, (fw, fh), n, k, i in itertools.product(
            models, weights, backends, image_sizes, frame_sizes, streams, tracks, intervals or [1]
        )
    ]
    return sorted(cells, key=lambda c: (c.image_size, c.streams * c.tracks, c.streams, c.interval))
