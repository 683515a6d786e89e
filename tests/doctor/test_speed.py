"""The CUDA-graphs variant of the compiled backend, run on the CPU (without CUDA
graphs, which need a GPU): what it adds (a new cudagraph step per call, copies of
every output) must leave the tracker's masks as eager torch makes them."""

from __future__ import annotations

import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.doctor.plan import ModelSpec
from streamseg.doctor.speed import ReplayedGraphs
from streamseg.doctor.tracking import agreement, build, frames, track


def test_replayed_graphs_track_as_eager() -> None:
    torch._dynamo.reset()  # compiled code is shared by instances: count this test's own
    spec = ModelSpec.parse("test")
    video = frames(6)
    graphs = ReplayedGraphs(build(spec))  # inductor's default mode: no CUDA graphs here
    compiled = track(graphs, video, 2)
    eager = track(TorchGraphs(build(spec)), video, 2)
    agreed = agreement(eager, compiled)
    assert agreed.min_iou >= 0.99 and agreed.max_dlogit < 1e-3, agreed
    assert graphs.compiles.get("image_encoder") and graphs.compiles.get("memory_attention")
