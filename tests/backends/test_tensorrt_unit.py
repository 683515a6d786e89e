"""What of the TensorRT path can be checked without a GPU: profiles, cache keys, the
plan manifest, the errors, the build sequence and the runtime's buffer and capture
policy against fakes. Real GPU tests are marked `gpu` and skip without CUDA."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from streamseg.backends.base import ModelGeometry
from streamseg.backends.trt_build import (
    BackendUnavailableError,
    BankLimits,
    DeviceInfo,
    PlanEntry,
    PlanManifest,
    Profile,
    batch_profile,
    build_engine,
    graph_profiles,
    memory_attention_profile,
    plan_cache_key,
    require_tensorrt,
)

TINY_1024 = ModelGeometry(
    image_size=1024, hidden_dim=256, mem_dim=64, num_maskmem=7, max_obj_ptrs=16, feat_size=64
)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
DEVICE = DeviceInfo("10.13.0", "NVIDIA H100 80GB HBM3", (9, 0))
PLAN_MEMORY = 3 * 2**20


def test_memory_attention_profile_covers_the_bank() -> None:
    p = memory_attention_profile(TINY_1024, BankLimits(max_cond_frames=4, max_objects=16))
    assert p.shapes["memory"] == (
        (4096, 1, 64),  # the first tracked frame: one prompted frame
        (7 * 4096, 1, 64),  # steady state: 1 prompted + 6 recent frames, one object
        ((4 + 6) * 4096, 16, 64),  # every kept prompted frame + 6 recent, 16 objects
    )
    lo, opt, hi = p.shapes["pointers"]  # 256 / 64 = 4 tokens per pointer
    assert (lo[0], opt[0], hi[0]) == (4, 16 * 4, (4 + 15) * 4)
    assert p.shapes["curr"] == ((4096, 1, 256), (4096, 1, 256), (4096, 16, 256))
    assert p.shapes["memory_pos"] == p.shapes["memory"]
    small = memory_attention_profile(
        TINY_1024, BankLimits(max_cond_frames=1, max_objects=4, steady_objects=2)
    )
    assert small.shapes["memory"] == ((4096, 1, 64), (7 * 4096, 2, 64), (7 * 4096, 4, 64))
    assert small.shapes["pointers"][2] == (16 * 4, 4, 64)


def test_every_profile_is_ordered_and_matches_the_export() -> None:
    from streamseg.backends.export import GRAPH_NAMES, _specs
    from streamseg.backends.torch_graphs import TorchGraphs
    from streamseg.model.build import build_sam2
    from tests.conftest import TEST_CONFIG

    graphs = TorchGraphs(build_sam2(TEST_CONFIG))
    specs = {s.name: s for s in _specs(graphs)}
    for geo in (TINY_1024, graphs.geometry):
        profiles = graph_profiles(geo, BankLimits(steady_objects=3))
        assert set(profiles) == set(GRAPH_NAMES)
        for name, profile in profiles.items():
            assert set(profile.shapes) == set(specs[name].inputs), name
            for lo, opt, hi in profile.shapes.values():
                assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), name
    decoder = graph_profiles(TINY_1024, BankLimits(steady_objects=3))["decoder_single_mask"]
    assert decoder.shapes["coords"] == ((1, 1, 2), (3, 1, 2), (16, 64, 2))
    assert decoder.shapes["mask"] == ((1, 1, 256, 256), (3, 1, 256, 256), (16, 1, 256, 256))
    image = graph_profiles(TINY_1024, BankLimits(max_images=4))["image_encoder"]
    assert image.shapes["images"] == ((1, 3, 1024, 1024), (1, 3, 1024, 1024), (4, 3, 1024, 1024))


def test_batch_profile_and_limits() -> None:
    p = batch_profile({"pix_feat": (256, 64, 64), "coords": (1, 2)}, 8, opt_batch=2, max_points=5)
    assert p.shapes["pix_feat"] == ((1, 256, 64, 64), (2, 256, 64, 64), (8, 256, 64, 64))
    assert p.shapes["coords"] == ((1, 1, 2), (2, 1, 2), (8, 5, 2))
    assert p.admits({"coords": (8, 5, 2)}) and not p.admits({"coords": (9, 1, 2)})
    assert not p.admits({"coords": (1, 2)})
    with pytest.raises(ValueError):
        BankLimits(max_objects=2, steady_objects=3)
    with pytest.raises(ValueError):
        BankLimits(max_cond_frames=0)


def test_plan_cache_key_changes_with_every_ingredient() -> None:
    prof = memory_attention_profile(TINY_1024, BankLimits())
    base = ("a" * 64, "10.13.0", "NVIDIA H100", (9, 0), "fp16", prof)
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "11.0.0", *base[2:]),
        (*base[:2], "NVIDIA L4", *base[3:]),
        (*base[:3], (8, 9), *base[4:]),
        (*base[:4], "fp32", prof),
        (*base[:5], memory_attention_profile(TINY_1024, BankLimits(max_objects=8))),
        (*base[:5], memory_attention_profile(TINY_1024, BankLimits(steady_objects=2))),
    ]
    keys = {plan_cache_key(*base)} | {plan_cache_key(*v) for v in variants}
    keys |= {plan_cache_key(*base, 2**30), plan_cache_key(*base, 2**31)}  # workspace caps
    assert len(keys) == len(variants) + 3
    assert plan_cache_key(*base, None) == plan_cache_key(*base)  # uncapped: key unchanged
    assert plan_cache_key(*base) == plan_cache_key(*base)


def test_profile_and_plan_manifest_round_trip(tmp_path: Path) -> None:
    p = Profile({"x": ((1, 2), (3, 4), (5, 6))})
    assert p.as_json() == {"x": [[1, 2], [3, 4], [5, 6]]}
    assert Profile.from_json(json.loads(json.dumps(p.as_json()))) == p
    entry = PlanEntry("p-123.plan", "123", "f" * 64, p)
    manifest = PlanManifest(DEVICE, "fp16", BankLimits(max_objects=8), {"pointer_pos": entry})
    path = manifest.save(tmp_path)
    assert path.name == "trt10.13.0-nvidia-h100-80gb-hbm3-sm90.json"
    assert PlanManifest.load(tmp_path, DEVICE) == manifest
    other = DeviceInfo("10.13.0", "NVIDIA L4", (8, 9))
    with pytest.raises(BackendUnavailableError, match="build-engine"):
        PlanManifest.load(tmp_path, other)  # plans for another GPU are never picked up
    data = manifest.to_json() | {"schema": 99}
    with pytest.raises(ValueError, match="schema"):
        PlanManifest.from_json(data)


def test_onnxruntime_tensorrt_provider_options(tmp_path: Path) -> None:
    from streamseg.backends.onnx_graphs import gpu_providers, tensorrt_provider_options

    p = Profile({"b": ((1, 2), (3, 4), (5, 6)), "a": ((1,), (2,), (3,))})
    options = tensorrt_provider_options(p, tmp_path, "memory_attention")
    assert options["trt_profile_min_shapes"] == "a:1,b:1x2"
    assert options["trt_profile_opt_shapes"] == "a:2,b:3x4"
    assert options["trt_profile_max_shapes"] == "a:3,b:5x6"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_timing_cache_enable"] and not options["trt_fp16_enable"]
    chain = gpu_providers(tmp_path, {"memory_attention": p}, device_id=1)("memory_attention")
    assert [c if isinstance(c, str) else c[0] for c in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # fmt: skip
    assert chain[0][1]["device_id"] == 1


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT present")
def test_clear_error_without_tensorrt() -> None:
    with pytest.raises(BackendUnavailableError, match=r"not installed.*NVIDIA's index"):
        require_tensorrt()


def test_clear_error_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        require_tensorrt()


def test_backend_selection_without_tensorrt(tmp_path: Path) -> None:
    if HAS_TENSORRT and torch.cuda.is_available():
        pytest.skip("TensorRT and CUDA present")
    from streamseg.backends.select import make_graphs
    from streamseg.backends.torch_graphs import TorchGraphs
    from streamseg.model.build import build_sam2
    from tests.conftest import TEST_CONFIG

    model = build_sam2(TEST_CONFIG)
    with pytest.raises(BackendUnavailableError):
        make_graphs("tensorrt", model, "test", engines=tmp_path)
    assert not any(tmp_path.iterdir())  # failed before exporting anything
    assert isinstance(make_graphs("auto", model, "test", engines=tmp_path), TorchGraphs)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_graphs("tflite", model, "test")


# --- the build sequence against a fake tensorrt module -----------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


def _fake_trt(rec: _Recorder, parse_ok: bool = True) -> Any:
    import onnx

    trt = types.SimpleNamespace(__version__="10.13.0")

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Network:
        def __init__(self, flags: int) -> None:
            rec.calls.append(("create_network", flags))
            self.inputs: list[str] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            return types.SimpleNamespace(name=self.inputs[i])

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            self.network.inputs = [i.name for i in onnx.load(path).graph.input]
            return parse_ok

        def get_error(self, i: int) -> str:
            return "unsupported op"

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class OptProfile:
        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            rec.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        cache: Cache | None = None

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            rec.calls.append(("workspace", size))

        def create_timing_cache(self, data: bytes) -> Cache:
            rec.calls.append(("create_timing_cache", data))
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            rec.calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

        def add_optimization_profile(self, profile: OptProfile) -> int:
            rec.calls.append(("add_optimization_profile",))
            return 0

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec.calls.append(("Builder",))

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> OptProfile:
            return OptProfile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            rec.calls.append(("build", tuple(network.inputs)))
            return b"serialized-plan"

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            rec.calls.append(("deserialize",))
            return types.SimpleNamespace(device_memory_size_v2=PLAN_MEMORY)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, Parser, Runtime
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    return trt


def _tiny_onnx(path: Path, inputs: list[str]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [inputs[0]], ["out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["k"]) for n in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["k"])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_build_engine_sequence(tmp_path: Path) -> None:
    rec = _Recorder()
    trt = _fake_trt(rec)
    onnx_path = _tiny_onnx(tmp_path / "pointer_pos.onnx", ["rel_pos"])
    profile = Profile({"rel_pos": ((1,), (16,), (19,))})
    plans = tmp_path / "plans"
    entry = build_engine(trt, onnx_path, profile, plans, DEVICE, "fp16", workspace_bytes=2**30)
    assert (plans / entry.plan).read_bytes() == b"serialized-plan"
    assert entry.key in entry.plan and len(entry.onnx_sha256) == 64
    assert entry.device_memory == PLAN_MEMORY  # read from the fresh plan, kept beside it
    names = [c[0] for c in rec.calls]
    assert ("create_network", 1) in rec.calls  # 1 << STRONGLY_TYPED: no weak typing
    assert ("set_shape", "rel_pos", (1,), (16,), (19,)) in rec.calls
    assert ("set_timing_cache", False) in rec.calls and ("workspace", 2**30) in rec.calls
    assert names.index("add_optimization_profile") < names.index("build")
    timing = plans / f"timing-{DEVICE.slug}.cache"
    assert timing.read_bytes() == b"+timings"
    rec.calls.clear()
    again = build_engine(trt, onnx_path, profile, plans, DEVICE, "fp16", workspace_bytes=2**30)
    assert again == entry and rec.calls == []  # cached: no builder at all
    uncapped = build_engine(trt, onnx_path, profile, plans, DEVICE, "fp16")
    assert uncapped.key != entry.key  # the workspace cap is part of the key
    other = build_engine(trt, onnx_path, Profile({"rel_pos": ((1,), (8,), (19,))}), plans,
                         DEVICE, "fp16")  # fmt: skip
    assert other.plan != entry.plan
    assert ("create_timing_cache", b"+timings") in rec.calls  # the persisted cache is reused
    with pytest.raises(ValueError, match="no profile shapes"):
        build_engine(trt, _tiny_onnx(tmp_path / "two.onnx", ["a", "b"]),
                     Profile({"a": ((1,), (1,), (1,))}), plans, DEVICE, "fp16")  # fmt: skip
    with pytest.raises(RuntimeError, match="unsupported op"):
        build_engine(_fake_trt(_Recorder(), parse_ok=False), _tiny_onnx(tmp_path / "x.onnx",
                     ["rel_pos"]), profile, plans, DEVICE, "fp32")  # fmt: skip


def test_build_engine_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamseg.backends import trt_build

    parser = argparse.ArgumentParser()
    trt_build.add_build_engine_args(parser)
    geometry = {"image_size": 128, "hidden_dim": 64, "mem_dim": 32, "num_maskmem": 7,
                "max_obj_ptrs": 16, "feat_size": 8}  # fmt: skip
    _tiny_onnx(tmp_path / "pointer_pos.onnx", ["rel_pos"])
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema": 1, "precision": "fp16", "geometry": geometry,
        "graphs": {"pointer_pos": {"file": "pointer_pos.onnx", "precision": "fp32"}},
    }))  # fmt: skip
    if not HAS_TENSORRT:
        assert trt_build.build_engine_main(parser.parse_args([str(tmp_path)])) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
    assert trt_build.build_engine_main(parser.parse_args([str(tmp_path / "nope")])) == 2
    rec = _Recorder()
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: _fake_trt(rec))
    monkeypatch.setattr(DeviceInfo, "current", classmethod(lambda cls, trt: DEVICE))
    args = parser.parse_args([str(tmp_path), "--max-cond-frames", "2", "--max-objects", "4"])
    assert trt_build.build_engine_main(args) == 0
    assert "pointer_pos: " in capsys.readouterr().out
    built = PlanManifest.load(tmp_path / "plans", DEVICE)
    assert built.graphs["pointer_pos"].device_memory == PLAN_MEMORY  # in the plan manifest
    assert built.limits == BankLimits(max_cond_frames=2, max_objects=4)
    assert built.graphs["pointer_pos"].profile.shapes["rel_pos"] == ((1,), (16,), (17,))
    bad = parser.parse_args([str(tmp_path), "--steady-objects", "9", "--max-objects", "4"])
    assert trt_build.build_engine_main(bad) == 2


# --- the runtime's buffers and CUDA-graph policy against a fake engine ---------------------

USER_MANAGED = "user-managed"
FAKE_TRT = types.SimpleNamespace(
    TensorIOMode=types.SimpleNamespace(INPUT="in"),
    ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED=USER_MANAGED),
)


class _FakeStream:
    """Launch semantics of a CUDA stream that matter here: a launch enqueues work; while
    capturing, the work is recorded with the arguments it had when it was enqueued and
    runs only when the graph is replayed."""

    handle = 7

    def __init__(self, fail_capture: bool = False) -> None:
        self.recording: list[Any] | None = None
        self.captures = 0
        self.fail_capture = fail_capture

    def use(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def begin(self, inputs: list[torch.Tensor]) -> None:
        pass

    def adopt(self, buffers: list[torch.Tensor]) -> None:
        pass

    def end(self, outputs: list[torch.Tensor]) -> None:
        pass

    def enqueue(self, work: Any) -> None:
        if self.recording is None:
            work()
        else:
            self.recording.append(work)

    def capture(self, launch: Any) -> Any:
        self.captures += 1
        self.recording = []
        try:
            launch()
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
        finally:
            recorded, self.recording = self.recording, None

        def replay() -> None:
            for work in recorded:
                work()

        return replay


class _FakeContext:
    """y = x through the bound addresses, like an engine. A direct launch also does
    TensorRT's host-side setup for the current shapes into this context's own state; a
    recorded (captured) launch keeps its arguments but reads that state when replayed,
    so a graph replayed after its context was set up for other shapes goes wrong (NaN)."""

    def __init__(self, engine: _FakeEngine, strategy: Any) -> None:
        self.engine = engine
        self.strategy = strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.prepared: dict[str, tuple[int, ...]] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return not self.engine.refuse_addresses

    def set_device_memory(self, memory: int, size: int) -> None:
        self.memory = (memory, size)

    def execute_async_v3(self, stream_handle: int) -> bool:
        stream = self.engine.stream
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        if stream.recording is None:
            self.prepared = shapes
        elif self.prepared != shapes:
            return False  # TensorRT needs a direct launch after a shape change
        n = 4 * int(torch.Size(shapes["x"]).numel())
        if self.strategy == USER_MANAGED:
            assert self.memory is not None and self.memory[1] >= n, "activation memory"

        def kernel() -> None:
            self.engine.kernel_runs += 1
            if self.prepared != shapes:
                ctypes.memset(addresses["y"], 0xFF, n)  # NaN: set up for other shapes
            elif self.memory is not None:  # through the activation memory it was given
                ctypes.memmove(self.memory[0], addresses["x"], n)
                ctypes.memmove(addresses["y"], self.memory[0], n)
            else:
                ctypes.memmove(addresses["y"], addresses["x"], n)

        stream.enqueue(kernel)
        return True


class _FakeEngine:
    num_io_tensors = 2
    device_memory_size_v2 = 4 * 8 * 4  # the profile's largest x, as float32

    def __init__(self, stream: _FakeStream, refuse_addresses: bool = False) -> None:
        self.stream = stream
        self.refuse_addresses = refuse_addresses
        self.contexts: list[_FakeContext] = []
        self.kernel_runs = 0

    def create_execution_context(self, strategy: Any = None) -> _FakeContext:
        context = _FakeContext(self, strategy)
        self.contexts.append(context)
        return context

    def get_tensor_name(self, i: int) -> str:
        return ["x", "y"][i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "x" else "out"

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 4), (2, 4), (8, 4)]


def _runner(engine: _FakeEngine, **kwargs: Any) -> Any:
    from streamseg.backends import tensorrt_graphs

    if "activations" in inspect.signature(tensorrt_graphs.TrtRunner).parameters:
        size = engine.device_memory_size_v2
        kwargs.setdefault("activations", tensorrt_graphs.Activations(size, torch.device("cpu")))
    return tensorrt_graphs.TrtRunner(FAKE_TRT, engine, torch.device("cpu"), engine.stream,
                                     "fake", **kwargs)  # fmt: skip


def test_runner_keeps_buffers_and_captures_at_steady_state() -> None:
    from streamseg.backends.tensorrt_graphs import torch_dtype

    assert torch_dtype(types.SimpleNamespace(name="HALF")) == torch.float16
    engine = _FakeEngine(_FakeStream())
    runner = _runner(engine, capture_after=3, max_signatures=2)
    assert runner.inputs == ["x"] and runner.outputs == ["y"]
    pointers = set()
    for step in range(6):
        x = torch.full((2, 4), float(step))
        (y,) = runner(x=x)
        assert torch.equal(y, x)  # replays read the persistent buffers' new contents
        slot = next(iter(runner.slots.values()))
        pointers.add((slot.inputs["x"].data_ptr(), slot.outputs["y"].data_ptr()))
    assert len(pointers) == 1  # nothing reallocated at steady state
    assert engine.stream.captures == 1 and slot.replay is not None
    (y,) = runner(x=torch.ones(3, 4))  # a second signature gets its own buffers
    (y,) = runner(x=torch.ones(5, 4))  # a third evicts the least recently used
    assert [s[0][1][0] for s in runner.slots] == [3, 5]
    with pytest.raises(ValueError, match="outside the plan's profile"):
        runner(x=torch.ones(9, 4))


def test_captured_signatures_replay_after_others_ran() -> None:
    """A, B, A with both captured: each graph must still find its context set up for
    its own shapes (one context per captured signature, as TensorRT's tools do)."""
    engine = _FakeEngine(_FakeStream())
    runner = _runner(engine, capture_after=1)
    for step in range(4):
        for rows in (2, 3):
            x = torch.full((rows, 4), float(10 * step + rows))
            (y,) = runner(x=x)
            assert torch.equal(y, x), (step, rows)
    assert engine.stream.captures == 2
    assert len({id(c) for c in engine.contexts}) == 2  # one per signature


def test_contexts_share_one_activation_buffer() -> None:
    engine = _FakeEngine(_FakeStream())
    runner = _runner(engine, capture_after=1)
    for rows in (1, 2, 8, 2, 1):
        x = torch.randn(rows, 4)
        assert torch.equal(runner(x=x)[0], x)
    assert len(engine.contexts) == 3
    assert {c.strategy for c in engine.contexts} == {USER_MANAGED}
    memory = {c.memory for c in engine.contexts}
    assert len(memory) == 1 and next(iter(memory))[1] >= engine.device_memory_size_v2  # type: ignore[index]


def test_each_call_runs_the_engine_once_capture_included() -> None:
    engine = _FakeEngine(_FakeStream())
    runner = _runner(engine, capture_after=2)
    for step in range(5):
        x = torch.full((2, 4), float(step))
        assert torch.equal(runner(x=x)[0], x)
        assert engine.kernel_runs == step + 1
    assert engine.stream.captures == 1


def test_refused_tensor_address_is_an_error() -> None:
    runner = _runner(_FakeEngine(_FakeStream(), refuse_addresses=True))
    with pytest.raises(RuntimeError, match="set_tensor_address"):
        runner(x=torch.ones(2, 4))


def test_failed_capture_falls_back_to_direct_launches(caplog: pytest.LogCaptureFixture) -> None:
    engine = _FakeEngine(_FakeStream(fail_capture=True))
    runner = _runner(engine, capture_after=1)
    for step in range(4):
        x = torch.full((2, 4), float(step))
        assert torch.equal(runner(x=x)[0], x)
    assert engine.stream.captures == 1 and "capture failed" in caplog.text
    assert engine.kernel_runs == 4


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT+CUDA")
def test_tensorrt_matches_torch_on_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU only
    from streamseg.backends.select import make_graphs
    from streamseg.backends.torch_graphs import TorchGraphs
    from streamseg.model.build import build_sam2
    from tests.conftest import TEST_CONFIG

    model = build_sam2(TEST_CONFIG, device="cuda")
    trt_graphs = make_graphs("tensorrt", model, "test", engines=tmp_path)
    ref = TorchGraphs(model)
    s = ref.geometry.image_size
    images = torch.randn(2, 3, s, s, device="cuda")
    with torch.inference_mode():
        for _ in range(5):  # past the CUDA-graph capture
            a, b = ref.encode_image(images), trt_graphs.encode_image(images)
            scale = max(1.0, float(a.embed.abs().max()))
            assert float((a.embed - b.embed).abs().max()) < 2e-2 * scale


# --- plan limits follow the server's settings; batches above them are split ---------------


def test_plan_limits_follow_the_settings() -> None:
    from streamseg.config import Settings
    from streamseg.server.runtime import plan_limits

    limits = plan_limits(Settings(max_tracks=16, max_prompts_per_request=32, max_batch=12))
    assert (limits.max_objects, limits.max_images) == (
        32,
        12,
    )  # a request's prompts decode as one batch
    limits = plan_limits(Settings(max_tracks=40, max_prompts_per_request=8, max_batch=2))
    assert (limits.max_objects, limits.max_images) == (40, 2)


def test_settings_reach_the_plan_builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings -> Runtime -> load_model -> make_graphs -> build_plans, each hop checked."""
    import asyncio

    from streamseg import assembly
    from streamseg.backends import select, tensorrt_graphs, trt_build
    from streamseg.config import Settings
    from streamseg.model.build import Network
    from streamseg.server import runtime

    settings = Settings(max_tracks=20, max_prompts_per_request=4, max_batch=3, backend="tensorrt")
    expected = BankLimits(max_objects=20, max_images=3)
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_load_model(*args: Any, **kwargs: Any) -> Any:
        seen["load_model"] = kwargs
        raise Stop

    monkeypatch.setattr(runtime, "load_model", fake_load_model)
    with pytest.raises(Stop):
        asyncio.run(runtime.Runtime(settings).start())
    assert seen["load_model"]["limits"] == expected

    network = Network("tiny", "random", 1024, torch.device("cpu"), types.SimpleNamespace())
    monkeypatch.setattr(assembly, "build_network", lambda *a, **k: network)
    monkeypatch.setattr(assembly, "make_graphs", lambda *a, **k: seen.setdefault("make_graphs", k))
    assembly.load_model("tiny", weights="random", backend="tensorrt", limits=expected)
    assert seen["make_graphs"]["limits"] == expected

    built: list[BankLimits] = []

    def fake_build_plans(folder: Path, limits: BankLimits) -> PlanManifest:
        built.append(limits)
        manifest = PlanManifest(DEVICE, "fp16", limits)
        manifest.save(folder / "plans")
        return manifest

    (tmp_path / "plans").mkdir()
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: types.SimpleNamespace())
    monkeypatch.setattr(trt_build, "build_plans", fake_build_plans)
    monkeypatch.setattr(DeviceInfo, "current", classmethod(lambda cls, trt: DEVICE))
    monkeypatch.setattr(select, "ensure_export", lambda *a: tmp_path)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(tensorrt_graphs, "TensorRTGraphs", lambda folder, **k: k["plans"])
    model = types.SimpleNamespace(device="cuda:0")
    plans = select.make_graphs("tensorrt", model, "tiny", limits=expected)
    assert built == [expected] and plans.limits == expected  # type: ignore[attr-defined]
    select.make_graphs("tensorrt", model, "tiny", limits=expected)
    assert built == [expected]  # the manifest on disk has these limits: reused
    select.make_graphs("tensorrt", model, "tiny", limits=BankLimits(max_objects=40))
    assert built == [expected, BankLimits(max_objects=40)]  # other limits: rebuilt


class _CountingGraphs:
    """ExportedGraphs' batching over a `_run` that checks the plan's limit and counts."""

    def __init__(self, max_objects: int) -> None:
        from streamseg.backends.exported import ExportedGraphs

        class Graphs(ExportedGraphs):
            def __init__(self) -> None:  # no export folder needed for the batching
                self.calls: list[tuple[str, int]] = []

            def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
                axis = 1 if name == "memory_attention" else 0
                batch = next(iter(inputs.values())).shape[axis]
                assert batch <= max_objects, "outside the plan's profile"
                self.calls.append((name, batch))
                if name == "memory_attention":
                    return [inputs["curr"] * 2]
                x = inputs["pix_feat"]
                return [x[:, :1] + 1, x[:, :3], x[:, :2], x[:, :1, 0, 0]]

        self.graphs = Graphs()
        self.graphs.max_objects = max_objects


def test_decoder_batches_above_the_plan_maximum_are_split() -> None:
    graphs = _CountingGraphs(max_objects=4).graphs
    pix = torch.randn(10, 8, 2, 2)
    high_res = (torch.randn(10, 1, 8, 8), torch.randn(10, 2, 4, 4))
    coords, labels = torch.rand(10, 3, 2), torch.ones(10, 3, dtype=torch.int32)
    out = graphs.decode(pix, high_res, coords, labels, None, multimask=True)
    assert graphs.calls == [("decoder_multi_nomask", 4), ("decoder_multi_nomask", 4),
                            ("decoder_multi_nomask", 2)]  # fmt: skip
    assert torch.equal(out.low_res_logits, pix[:, :1] + 1)  # joined in order
    assert out.object_score_logits.shape == (10, 1)
    graphs.calls.clear()
    graphs.decode(pix[:4], (high_res[0][:4], high_res[1][:4]), None, None, None, False)
    assert graphs.calls == [("decoder_single_nomask", 4)]  # at the limit: one call
    graphs.calls.clear()
    curr = torch.randn(16, 6, 8)
    out_att = graphs.attend_memory(curr, curr, torch.randn(32, 6, 4), torch.randn(32, 6, 4), 0)
    assert [b for _, b in graphs.calls] == [4, 2] and torch.equal(out_att, curr * 2)


def test_info_reports_tensorrt_memory_only_for_tensorrt() -> None:
    from streamseg.server.app import _tensorrt_memory

    report = {"activation_bytes_shared": 5, "plans": {"image_encoder": 5}}
    trt_model = types.SimpleNamespace(graphs=types.SimpleNamespace(memory_report=lambda: report))
    assert _tensorrt_memory(trt_model) == report
    assert _tensorrt_memory(types.SimpleNamespace(graphs=object())) is None  # torch, onnx
    assert _tensorrt_memory(None) is None  # still loading


@pytest.mark.parametrize(
    ("cuda", "package"),
    [("13.0", "tensorrt-cu13"), ("12.8", "tensorrt-cu12"), (None, "tensorrt-cu<CUDA major>")],
)
def test_missing_tensorrt_names_the_package_for_the_cuda_major(
    monkeypatch: pytest.MonkeyPatch, cuda: str | None, package: str
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on a bare host
    monkeypatch.setattr(torch.version, "cuda", cuda)
    with pytest.raises(BackendUnavailableError, match="not installed") as err:
        require_tensorrt()
    assert f"pip install {package}`" in str(err.value)
    other = "tensorrt-cu12" if package == "tensorrt-cu13" else "tensorrt-cu13"
    assert other not in str(err.value)


def test_cuda_capture_is_thread_local_and_clears_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamseg.backends import tensorrt_graphs
    from streamseg.backends.tensorrt_graphs import CudaStream

    seen: dict[str, Any] = {"cleared": 0}

    class Graph:
        def replay(self) -> None:
            pass

    @contextlib.contextmanager
    def graph(g: Any, stream: Any = None, capture_error_mode: str = "global") -> Any:
        seen["mode"] = capture_error_mode
        yield

    def clear() -> int:
        seen["cleared"] += 1
        return 900  # cudaErrorStreamCaptureUnsupported

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(tensorrt_graphs, "clear_cuda_error", clear)
    stream = CudaStream.__new__(CudaStream)
    stream.stream = None  # type: ignore[assignment]
    assert callable(stream.capture(lambda: None)) and seen == {"cleared": 0, "mode": "thread_local"}

    def failing() -> None:
        raise RuntimeError("execute_async_v3 failed")

    with pytest.raises(RuntimeError):
        stream.capture(failing)
    assert seen["cleared"] == 1


# --- ONNX Runtime on a GPU: who waits for what ------------------------------------------


class _FakeOrtSession:
    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self.runs: list[Any] = []

    def get_providers(self) -> list[str]:
        return self.providers

    def get_inputs(self) -> list[Any]:
        return [types.SimpleNamespace(name="x", type="tensor(float)")]

    def get_outputs(self) -> list[Any]:
        return [types.SimpleNamespace(name="y", type="tensor(float)")]

    def io_binding(self) -> Any:
        import numpy as np

        session = self

        class Binding:
            def bind_input(self, *args: Any) -> None:
                pass

            def bind_output(self, *args: Any) -> None:
                pass

            def copy_outputs_to_cpu(self) -> list[Any]:
                return [np.zeros((2, 4), np.float32)]

        session.binding = Binding()
        return session.binding

    def run_with_iobinding(self, binding: Any, run_options: Any = None) -> None:
        self.runs.append(run_options)


class _CountingStream:
    def __init__(self) -> None:
        self.begun = self.ended = 0

    def begin(self, inputs: list[torch.Tensor]) -> None:
        self.begun += 1

    def end(self, outputs: list[torch.Tensor]) -> None:
        self.ended += 1


def test_cuda_provider_sessions_run_stream_ordered_without_host_waits() -> None:
    from streamseg.backends.onnx_graphs import _Session

    stream = _CountingStream()
    ort_session = _FakeOrtSession(["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = _Session(ort_session, torch.device("cpu"), stream=stream)
    for _ in range(3):
        session.run({"x": torch.ones(2, 4)})
    assert stream.begun == 3 and stream.ended == 2  # the first run learns shapes on the host
    options = ort_session.runs[-1]
    assert options.get_run_config_entry("disable_synchronize_execution_providers") == "1"
    trt_session = _FakeOrtSession(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert _Session(trt_session, torch.device("cpu"), stream=stream).stream is None


def test_cuda_provider_gets_our_stream_and_tensorrt_does_not(tmp_path: Path) -> None:
    from streamseg.backends.onnx_graphs import gpu_providers

    p = Profile({"a": ((1,), (2,), (3,))})
    chain = gpu_providers(tmp_path, {"memory_attention": p}, 0, compute_stream=1234)(
        "memory_attention"
    )
    assert chain[1] == ("CUDAExecutionProvider", {"device_id": 0, "user_compute_stream": "1234"})
    assert "user_compute_stream" not in chain[0][1]  # undocumented from Python for the TRT EP
    plain = gpu_providers(tmp_path, {}, 0)("pointer_pos")
    assert plain[0] == ("CUDAExecutionProvider", {"device_id": 0})
