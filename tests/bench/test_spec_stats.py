from __future__ import annotations

import math

import pytest

from streamseg.bench.spec import (
    BenchSpecError,
    CellSpec,
    expand,
    parse_frame_sizes,
    parse_ints,
    parse_list,
)
from streamseg.bench.stats import is_real, percentiles_ms, spread, thin
from streamseg.server.metrics import StageSamples


def test_lists_and_sizes() -> None:
    assert parse_list(" tiny, small,tiny ", "model") == ["tiny", "small"]
    assert parse_ints("1,2,4", "streams", 1, 64) == [1, 2, 4]
    assert parse_frame_sizes("640x480,1280X720") == [(640, 480), (1280, 720)]
    for bad, match in [("", "at least one"), ("a", "whole number"), ("0", "outside")]:
        with pytest.raises(BenchSpecError, match=match):
            parse_ints(bad, "streams", 1, 64)
    for bad in ("640", "640x", "x480", "641x480", "8x8", "640x480x3"):
        with pytest.raises(BenchSpecError):
            parse_frame_sizes(bad)


def test_matrix_is_every_combination_cheapest_first() -> None:
    cells = expand(models=["tiny"], weights=["random"], backends=["torch", "onnx"],
                   image_sizes=[1024, 512], frame_sizes=[(640, 480)], streams=[2, 1],
                   tracks=[3, 1])  # fmt: skip
    assert len(cells) == 16 and len({c.key for c in cells}) == 16
    assert cells[0].image_size == 512 and cells[0].streams == cells[0].tracks == 1
    assert cells[-1].image_size == 1024 and cells[-1].streams * cells[-1].tracks == 6
    same_reference = [c for c in cells if c.reference_key == cells[0].reference_key]
    assert {(c.backend, c.streams) for c in same_reference} == {
        ("torch", 1),
        ("torch", 2),
        ("onnx", 1),
        ("onnx", 2),
    }


def test_intervals_are_cells_and_keep_old_keys() -> None:
    common = dict(models=["test"], weights=["random"], backends=["torch"], image_sizes=[128],
                  frame_sizes=[(160, 120)], tracks=[1])  # fmt: skip
    cells = expand(streams=[2, 1], intervals=[4, 1, 2], **common)  # type: ignore[arg-type]
    assert [(c.streams, c.interval) for c in cells] == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2),
                                                        (2, 4)]  # fmt: skip
    plain = expand(streams=[1], **common)  # type: ignore[arg-type]
    assert plain[0].interval == 1 and plain[0].key == cells[0].key
    assert "|interval=" not in plain[0].key and cells[2].key.endswith("|interval=4")
    assert cells[2].reference_key == cells[0].reference_key  # the model's work is the same
    assert parse_ints("1,2,4", "interval", 1, 30) == [1, 2, 4]
    with pytest.raises(BenchSpecError, match="outside"):
        parse_ints("0", "interval", 1, 30)
    old = {k: v for k, v in cells[0].to_json().items() if k != "interval"}
    assert CellSpec.from_json(old).interval == 1  # a spec from before the flag


def test_cell_spec_round_trip_and_unknown_fields() -> None:
    spec = CellSpec("test", "random", "torch", 128, 160, 120, 1, 1)
    assert CellSpec.from_json(spec.to_json()) == spec
    with pytest.raises(BenchSpecError, match="unknown cell fields"):
        CellSpec.from_json({**spec.to_json(), "gpu": True})


def test_percentiles_and_spread() -> None:
    got = percentiles_ms([0.001 * i for i in range(1, 101)])
    assert got["n"] == 100 and got["p50"] == pytest.approx(50.5)
    assert got["p50"] < got["p95"] < got["p99"] <= 100 and got["mean"] == pytest.approx(50.5)
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    with pytest.raises(ValueError):
        percentiles_ms([])
    assert not any(map(is_real, [0.0, -1.0, math.nan, math.inf]))
    points = [(float(i), float(i)) for i in range(1000)]
    thinned = thin(points, 10)
    assert len(thinned) == 10 and thinned[0] == points[0] and thinned[-1] == points[-1]


def test_stage_samples_are_bounded_and_count_what_they_drop() -> None:
    samples = StageSamples(maxlen=3)
    for i in range(5):
        samples.add("encoder", i / 10)
    taken = samples.take()
    assert [v for _, v in taken["encoder"]] == [0.2, 0.3, 0.4] and samples.dropped == 2
    assert samples.take() == {"encoder": []}
