"""TensorRT runtime backend behind `SamGraphs` (GPU hosts only; unverified here).

Plans come from `streamseg build-engine` (trt_build.py). Per graph and input signature
(the tuple of input shapes) the runner keeps persistent device buffers and its own
execution context, bound to them once: inputs are copied in, `execute_async_v3` runs on
the backend's single CUDA stream, outputs are copied out. After `capture_after` direct
launches of a signature its launch is captured into a CUDA graph and replayed from then
on (the steady state: the same bank layout and object count frame after frame). A
captured graph keeps pointing at state inside the context it was captured from, so no
context is ever re-bound to other shapes: one context per signature, as TensorRT's own
tools do. All contexts of all plans share one activation buffer (USER_MANAGED device
memory) sized for the largest plan; that is safe because every launch and replay is
ordered on the one stream. Signatures are kept in a small LRU, so a few alternating
layouts (two groups of tracks) all stay captured.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from streamseg.backends.exported import ExportedGraphs
from streamseg.backends.trt_build import (
    BackendUnavailableError,
    DeviceInfo,
    PlanManifest,
    engine_device_memory,
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


def clear_cuda_error() -> int | None:
    """Reset the CUDA runtime's last-error state after a failed capture, so the next
    unrelated CUDA call does not report it. torch exposes no `cudaGetLastError`; this
    calls the libcudart the process already loaded. Returns the cleared code, or None
    when no runtime library could be found."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python, new and old
        try:
            runtime = importlib.import_module(module)
            return int(runtime.cudaGetLastError()[0])
        except Exception:  # optional; fall back to the loaded library
            continue
    for path in _loaded_cudart():
        with contextlib.suppress(OSError, AttributeError):
            return int(ctypes.CDLL(path).cudaGetLastError())
    return None


def _loaded_cudart() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        return []
    return sorted(paths)


class Stream(Protocol):
    """What a runner needs of its stream (CudaStream on a GPU; fakes in tests)."""

    @property
    def handle(self) -> int: ...

    def use(self) -> contextlib.AbstractContextManager[Any]: ...

    def begin(self, inputs: list[torch.Tensor]) -> None: ...

    def adopt(self, buffers: list[torch.Tensor]) -> None: ...

    def end(self, outputs: list[torch.Tensor]) -> None: ...

    def capture(self, launch: Callable[[], None]) -> Callable[[], None]: ...


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
        """Capture in thread-local mode, so a CUDA call from another thread (the event
        loop, a media thread) cannot invalidate the capture; clear the error state a
        failed capture leaves behind before reporting it."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                launch()
        except Exception:
            clear_cuda_error()
            raise
        return graph.replay


class HostStream:
    """Stand-in for CudaStream on a CPU host; 'capturing' just keeps the launch to
    re-run (the unit tests use a stricter fake that records launch arguments)."""

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


class Activations:
    """One device buffer every execution context uses for its activations. Allocated
    once, before any capture: a captured graph keeps its address."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = max(int(size), 1)
        self.buffer = torch.empty(self.size, dtype=torch.uint8, device=device)

    @property
    def address(self) -> int:
        return int(self.buffer.data_ptr())


@dataclass
class _Slot:
    context: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    runs: int = 0
    replay: Callable[[], None] | None = field(default=None, repr=False)


class TrtRunner:
    """One plan: an execution context, persistent buffers and a CUDA graph per input
    signature. Without `activations` each context allocates its own (TensorRT's
    STATIC default)."""

    def __init__(
        self,
        trt: Any,
        engine: Any,
        device: torch.device,
        stream: Stream,
        name: str = "graph",
        capture_after: int = CAPTURE_AFTER,
        max_signatures: int = MAX_SIGNATURES,
        activations: Activations | None = None,
    ) -> None:
        self.trt = trt
        self.name = name
        self.engine = engine
        self.device = device
        self.stream = stream
        self.capture_after = capture_after
        self.max_signatures = max_signatures
        self.activations = activations
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

    def _context(self) -> Any:
        if self.activations is None:
            context = self.engine.create_execution_context()
        else:
            strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
            context = self.engine.create_execution_context(strategy)
        if context is None:
            raise RuntimeError(f"{self.name}: TensorRT could not create an execution context")
        if self.activations is not None:
            needed = engine_device_memory(self.engine)
            if needed is not None and needed > self.activations.size:
                raise RuntimeError(
                    f"{self.name}: needs {needed} bytes of activation memory, the shared "
                    f"buffer has {self.activations.size}"
                )
            if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
                context.set_device_memory(self.activations.address, self.activations.size)
            else:
                context.device_memory = self.activations.address
        return context

    def _address(self, context: Any, name: str, buffer: torch.Tensor) -> None:
        if context.set_tensor_address(name, buffer.data_ptr()) is False:
            raise RuntimeError(f"{self.name}: set_tensor_address({name}) failed")

    def _launch(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed")

    def _slot(self, feeds: dict[str, torch.Tensor]) -> _Slot:
        """The signature's slot, made on first sight: a context set to these shapes and
        bound to its own buffers once, never re-bound."""
        sig = signature({n: feeds[n] for n in self.inputs})
        slot = self.slots.get(sig)
        if slot is not None:
            self.slots.move_to_end(sig)
            return slot
        shapes = {name: tuple(feeds[name].shape) for name in self.inputs}
        for name, shape in shapes.items():
            self._check(name, shape)
        context = self._context()
        inputs = {}
        for name, shape in shapes.items():
            inputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"{self.name}: set_input_shape({name}, {shape}) failed")
        outputs = {
            name: torch.empty(
                tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device
            )
            for name in self.outputs
        }
        for name, buffer in (inputs | outputs).items():
            self._address(context, name, buffer)
        self.stream.adopt([*inputs.values(), *outputs.values()])
        slot = self.slots[sig] = _Slot(context, inputs, outputs)
        while len(self.slots) > self.max_signatures:
            self.slots.popitem(last=False)
        return slot

    def _capture(self, slot: _Slot) -> None:
        """Record the launch (it does not run while capturing). The slot's context has
        been launched directly since its shapes were set, as TensorRT requires."""
        try:
            slot.replay = self.stream.capture(lambda: self._launch(slot.context))
        except Exception as exc:  # e.g. a plan with data-dependent shapes
            log.warning("%s: CUDA graph capture failed (%s); launching directly", self.name, exc)
            self.capture_after = 0

    def __call__(self, **feeds: torch.Tensor) -> list[torch.Tensor]:
        slot = self._slot(feeds)
        self.stream.begin(list(feeds.values()))
        with self.stream.use():
            for name, buffer in slot.inputs.items():
                buffer.copy_(feeds[name], non_blocking=True)
            if slot.replay is None and self.capture_after and slot.runs >= self.capture_after:
                self._capture(slot)
            if slot.replay is not None:
                slot.replay()
            else:
                self._launch(slot.context)
            slot.runs += 1
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
    """The export folder's graphs as TensorRT plans built for this GPU and TensorRT.
    `plans`: the manifest the caller just loaded or built (else read from disk)."""

    def __init__(
        self,
        export_dir: Path,
        plans_dir: Path | None = None,
        capture_after: int = CAPTURE_AFTER,
        max_signatures: int = MAX_SIGNATURES,
        device: torch.device | None = None,
        plans: PlanManifest | None = None,
    ) -> None:
        trt = require_tensorrt()
        if device is None or device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        super().__init__(export_dir, device)
        with torch.cuda.device(device):  # plans and contexts belong to this GPU
            self._load(trt, export_dir, plans_dir, capture_after, max_signatures, plans)

    def _load(
        self,
        trt: Any,
        export_dir: Path,
        plans_dir: Path | None,
        capture_after: int,
        max_signatures: int,
        plans: PlanManifest | None,
    ) -> None:
        device = self.device
        plans_dir = plans_dir or export_dir / "plans"
        info = DeviceInfo.current(trt)
        plans = plans or PlanManifest.load(plans_dir, info)
        self.limits = plans.limits
        self.max_objects = plans.limits.max_objects
        self.max_images = plans.limits.max_images
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines: dict[str, Any] = {}
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
            engines[name] = engine
        self.plan_memory = {name: engine_device_memory(e) for name, e in engines.items()}
        sizes = [n for n in self.plan_memory.values() if n is not None]
        # Every context of every plan runs on one stream, one launch at a time: one
        # buffer as large as the largest plan's activations serves them all.
        self.activations = Activations(max(sizes, default=0), device)
        stream = CudaStream(device)
        self._runners = {
            name: TrtRunner(trt, engine, device, stream, name, capture_after, max_signatures,
                            self.activations)
            for name, engine in engines.items()
        }  # fmt: skip
        log.info("TensorRT activation memory: %s", self.memory_report())

    def memory_report(self) -> dict[str, Any]:
        """Device memory per plan (`device_memory_size_v2`: activations at the profile's
        maximum) and the one buffer all execution contexts share."""
        return {
            "activation_bytes_shared": self.activations.size,
            "plans": dict(self.plan_memory),
            "limits": {k: getattr(self.limits, k) for k in type(self.limits).__slots__},
        }

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        return self._runners[name](**inputs)
