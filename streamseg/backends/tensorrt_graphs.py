"""TensorRT runtime backend behind `SamGraphs` (GPU hosts only; unverified here).

Plans come from `streamseg build-engine` (trt_build.py). Each graph keeps one execution
context and, per input signature (the tuple of input shapes), persistent device
buffers: inputs are copied into them, `execute_async_v3` runs on the backend's single
CUDA stream, outputs are copied out. Once a signature has run `capture_after` times the
launch is captured into a CUDA graph and replayed from then on (the steady state: the
same bank layout and object count frame after frame). Signatures are kept in a small
LRU, so a few alternating layouts (two groups of tracks) all stay captured.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.exported import ExportedGraphs
from streamseg.backends.trt_build import (
    BackendUnavailableError,
    DeviceInfo,
    PlanManifest,
    require_tensorrt,
)

log = logging.getLogger(__name__)

CAPTURE_AFTER = 3
MAX_SIGNATURES = 16
Signature = tuple[tuple[str, tuple[int, ...]], ...]
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
                "INT8": torch.int8, "UINT8": torch.uint8}  # fmt: skip


def signature(inputs: dict[str, torch.Tensor]) -> Signature:
    return tuple(sorted((name, tuple(t.shape)) for name, t in inputs.items()))


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    return TORCH_DTYPES[name]


class CudaStream:
    """The one stream every graph launches on, ordered against torch's current stream
    without host synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def use(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.stream)

    def begin(self, inputs: list[torch.Tensor]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        for t in inputs:
            if t.is_cuda:
                t.record_stream(self.stream)  # the caller may free it before we read it

    def adopt(self, buffers: list[torch.Tensor]) -> None:
        """Persistent buffers are used on this stream: when one is evicted, the allocator
        must not hand its memory out before this stream is done with it."""
        for t in buffers:
            t.record_stream(self.stream)

    def end(self, outputs: list[torch.Tensor]) -> None:
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_stream(self.stream)
        for t in outputs:
            t.record_stream(current)

    def capture(self, launch: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            launch()
        return graph.replay


class HostStream:
    """Stand-in for CudaStream on a CPU host, so the buffer and capture policy can be
    unit-tested with a fake engine; 'capturing' just keeps the launch to re-run."""

    handle = 0
    captures = 0

    def use(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def begin(self, inputs: list[torch.Tensor]) -> None:
        pass

    def adopt(self, buffers: list[torch.Tensor]) -> None:
        pass

    def end(self, outputs: list[torch.Tensor]) -> None:
        pass

    def capture(self, launch: Callable[[], None]) -> Callable[[], None]:
        self.captures += 1
        return launch


@dataclass
class _Slot:
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    runs: int = 0
    replay: Callable[[], None] | None = field(default=None, repr=False)


class TrtRunner:
    """One plan: its execution context, persistent buffers and CUDA graphs."""

    def __init__(
        self,
        trt: Any,
        engine: Any,
        device: torch.device,
        stream: CudaStream | HostStream,
        name: str = "graph",
        capture_after: int = CAPTURE_AFTER,
        max_signatures: int = MAX_SIGNATURES,
    ) -> None:
        self.name = name
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{name}: TensorRT could not create an execution context")
        self.device = device
        self.stream = stream
        self.capture_after = capture_after
        self.max_signatures = max_signatures
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_input, strict=True) if i]
        self.outputs = [n for n, i in zip(names, is_input, strict=True) if not i]
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        self.slots: OrderedDict[Signature, _Slot] = OrderedDict()

    def _check(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        fits = len(shape) == len(lo) and all(
            a <= b <= c for a, b, c in zip(lo, shape, hi, strict=True)
        )
        if not fits:
            raise ValueError(
                f"{self.name}: input {name} has shape {shape}, outside the plan's profile "
                f"{lo}..{hi}; rebuild with larger limits (streamseg build-engine --help)"
            )

    def _bind(self, slot: _Slot) -> None:
        for name, buffer in slot.inputs.items():
            if not self.context.set_input_shape(name, tuple(buffer.shape)):
                raise RuntimeError(f"{self.name}: set_input_shape({name}) failed")
            self.context.set_tensor_address(name, buffer.data_ptr())
        for name, buffer in slot.outputs.items():
            self.context.set_tensor_address(name, buffer.data_ptr())

    def _launch(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed")

    def _slot(self, feeds: dict[str, torch.Tensor]) -> _Slot:
        sig = signature({n: feeds[n] for n in self.inputs})
        slot = self.slots.get(sig)
        if slot is not None:
            self.slots.move_to_end(sig)
            return slot
        inputs = {}
        for name in self.inputs:
            shape = tuple(feeds[name].shape)
            self._check(name, shape)
            inputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            if not self.context.set_input_shape(name, shape):
                raise RuntimeError(f"{self.name}: set_input_shape({name}, {shape}) failed")
        outputs = {
            name: torch.empty(
                tuple(self.context.get_tensor_shape(name)),
                dtype=self.dtypes[name],
                device=self.device,
            )
            for name in self.outputs
        }
        self.stream.adopt([*inputs.values(), *outputs.values()])
        slot = self.slots[sig] = _Slot(inputs, outputs)
        while len(self.slots) > self.max_signatures:
            self.slots.popitem(last=False)
        return slot

    def _capture(self, slot: _Slot) -> None:
        self._bind(slot)
        self._launch()  # TensorRT wants one launch after shape changes before a capture
        try:
            slot.replay = self.stream.capture(self._launch)
        except Exception as exc:  # e.g. a plan with data-dependent shapes
            log.warning("%s: CUDA graph capture failed (%s); launching directly", self.name, exc)
            self.capture_after = 0

    def __call__(self, **feeds: torch.Tensor) -> list[torch.Tensor]:
        slot = self._slot(feeds)
        self.stream.begin(list(feeds.values()))
        with self.stream.use():
            for name, buffer in slot.inputs.items():
                buffer.copy_(feeds[name], non_blocking=True)
            if slot.replay is not None:
                slot.replay()
            else:
                self._bind(slot)
                self._launch()
                slot.runs += 1
                if self.capture_after and slot.runs >= self.capture_after:
                    self._capture(slot)
            outs = [slot.outputs[n].to(torch.float32, copy=True) for n in self.outputs]
        self.stream.end(outs)
        return outs


@contextlib.contextmanager
def _explained(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise BackendUnavailableError(f"{what}: {exc}") from exc


class TensorRTGraphs(ExportedGraphs):
    """The export folder's graphs as TensorRT plans built for this GPU and TensorRT."""

    def __init__(
        self,
        export_dir: Path,
        plans_dir: Path | None = None,
        capture_after: int = CAPTURE_AFTER,
        max_signatures: int = MAX_SIGNATURES,
        device: torch.device | None = None,
    ) -> None:
        trt = require_tensorrt()
        if device is None or device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        super().__init__(export_dir, device)
        with torch.cuda.device(device):  # plans and contexts belong to this GPU
            self._load(trt, export_dir, plans_dir, capture_after, max_signatures)

    def _load(
        self,
        trt: Any,
        export_dir: Path,
        plans_dir: Path | None,
        capture_after: int,
        max_signatures: int,
    ) -> None:
        device = self.device
        plans_dir = plans_dir or export_dir / "plans"
        info = DeviceInfo.current(trt)
        plans = PlanManifest.load(plans_dir, info)
        self.limits = plans.limits
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        stream = CudaStream(device)
        self._runners: dict[str, TrtRunner] = {}
        for name, entry in self.manifest["graphs"].items():
            planned = plans.graphs.get(name)
            if planned is None or planned.onnx_sha256 != entry["sha256"]:
                raise BackendUnavailableError(
                    f"the plans in {plans_dir} were not built from this export ({name}); "
                    f"run `streamseg build-engine {export_dir}`"
                )
            with _explained(f"cannot load the {name} plan"):
                engine = runtime.deserialize_cuda_engine((plans_dir / planned.plan).read_bytes())
            if engine is None:
                raise BackendUnavailableError(
                    f"TensorRT {info.tensorrt} could not deserialize {planned.plan}; rebuild it"
                )
            self._runners[name] = TrtRunner(
                trt, engine, device, stream, name, capture_after, max_signatures
            )

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        return self._runners[name](**inputs)
