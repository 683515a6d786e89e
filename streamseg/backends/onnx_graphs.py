"""ONNX Runtime backend: runs an export folder (see export.py) behind `SamGraphs`.

CPU here. On GPU hosts `gpu_providers` gives each graph the TensorRT execution
provider with an explicit shape profile (so the EP does not rebuild its engine when the
memory bank grows) and persistent engine and timing caches, then the CUDA provider.
Inputs and outputs are bound to torch tensors with IO binding, so on a GPU nothing
round-trips through host memory; output shapes are learned on the first run of each
input signature and preallocated afterwards.

Synchronisation (what ONNX Runtime documents, as of 1.2x): the CUDA provider accepts a
`user_compute_stream` from Python (a stream handle as a string), and the run option
`disable_synchronize_execution_providers=1` makes `Run` return without waiting for the
GPU. A session served by the CUDA provider alone therefore runs on a stream of ours,
ordered against torch's with stream waits and no host wait. The TensorRT provider's
docs say its `user_compute_stream` cannot be set from Python, so a session that has it
keeps ORT's own stream: the host waits for torch's queued work before each run, and
ORT waits for its stream after it (unverified on a GPU: measure in the GPU check).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.exported import ExportedGraphs

Providers = Sequence[str | tuple[str, dict[str, Any]]]
_NP_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32,
             torch.int64: np.int64, torch.bool: np.bool_}  # fmt: skip
_TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16,
                "tensor(int32)": torch.int32, "tensor(int64)": torch.int64,
                "tensor(bool)": torch.bool}  # fmt: skip
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_FP16_CRASHERS = ["FuseFp16InitializerToFp32NodeTransformer"]


class _Session:
    """One graph: an InferenceSession plus the output shapes seen per input signature.
    `stream` (a CudaStream whose handle the CUDA provider was given): used when that
    provider alone runs the session, so runs are ordered on the GPU, not by the host."""

    def __init__(
        self,
        session: Any,
        device: torch.device,
        max_signatures: int = 64,
        stream: Any = None,
    ) -> None:
        self.session = session
        self.device = device
        self.inputs = [(i.name, _TORCH_TYPES[i.type]) for i in session.get_inputs()]
        self.outputs = [(o.name, _TORCH_TYPES[o.type]) for o in session.get_outputs()]
        self.shapes: OrderedDict[tuple[Any, ...], list[tuple[int, ...]]] = OrderedDict()
        self.max_signatures = max_signatures
        kind = "cuda" if device.type == "cuda" else "cpu"
        self._where = (kind, device.index or 0)
        active = set(session.get_providers())
        on_stream = "CUDAExecutionProvider" in active and "TensorrtExecutionProvider" not in active
        self.stream = stream if on_stream else None
        self.run_options: Any = None
        if self.stream is not None:
            import onnxruntime as ort

            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        held = []  # keep every bound tensor alive until the run returns
        for name, dtype in self.inputs:
            t = feeds[name].to(self.device, dtype).contiguous()
            held.append(t)
            binding.bind_input(name, *self._where, _NP_TYPES[dtype], tuple(t.shape), t.data_ptr())
        if self.stream is not None:  # our stream waits for torch's; the host does not
            self.stream.begin(held)
        elif self.device.type == "cuda":  # ORT runs on its own stream: inputs must be ready
            torch.cuda.current_stream(self.device).synchronize()
        signature = tuple(tuple(t.shape) for t in held)
        known = self.shapes.get(signature)
        if known is None:  # first time: ORT allocates, we learn the shapes (host copy)
            for name, _ in self.outputs:
                binding.bind_output(name, self._where[0], self._where[1])
            self.session.run_with_iobinding(binding)
            outs = [torch.from_numpy(a).to(self.device) for a in binding.copy_outputs_to_cpu()]
            self.shapes[signature] = [tuple(o.shape) for o in outs]
            while len(self.shapes) > self.max_signatures:
                self.shapes.popitem(last=False)
            return outs
        self.shapes.move_to_end(signature)
        outs = []
        for (name, dtype), shape in zip(self.outputs, known, strict=True):
            out = torch.empty(shape, dtype=dtype, device=self.device)
            binding.bind_output(name, *self._where, _NP_TYPES[dtype], shape, out.data_ptr())
            outs.append(out)
        self.session.run_with_iobinding(binding, self.run_options)
        if self.stream is not None:  # torch's stream waits for ours before reading outs
            self.stream.end(outs)
        return outs


class OnnxGraphs(ExportedGraphs):
    """`providers`: one list for every graph, or a function of the graph name (GPU hosts
    give each graph its own TensorRT shape profile). The device follows the providers:
    CUDA when a GPU provider is asked for and torch sees a GPU."""

    def __init__(
        self,
        folder: Path,
        providers: Providers | Callable[[str], Providers] = ("CPUExecutionProvider",),
        device: torch.device | None = None,
        threads: int | None = None,
        stream: Any = None,
    ) -> None:
        """`stream`: the CudaStream whose handle `providers` gave the CUDA provider."""
        import onnxruntime as ort

        choose = providers if callable(providers) else (lambda _name: providers)
        if device is None:
            usable = set(GPU_PROVIDERS) & set(ort.get_available_providers())
            wants_gpu = any(
                (p if isinstance(p, str) else p[0]) in usable for p in choose("image_encoder")
            )
            device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
        super().__init__(folder, device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if device.type == "cpu":
            # Idle pool threads spin by default, taking the cores from torch (the glue,
            # the other backend in a benchmark) and the video threads; measured here
            # the spinning gave ONNX Runtime itself nothing.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # ORT 1.32's CPU-only pass that folds FP16 weights into FP32 nodes segfaults on
        # the FP16 memory-attention graph; it does nothing on GPU providers.
        skip = CPU_FP16_CRASHERS if self.manifest["precision"] == "fp16" else []
        self._sessions = {
            name: _Session(
                ort.InferenceSession(
                    str(folder / entry["file"]),
                    options,
                    providers=list(choose(name)),
                    disabled_optimizers=skip,
                ),
                device,
                stream=stream,
            )
            for name, entry in self.manifest["graphs"].items()
        }

    def providers(self, name: str) -> list[str]:
        """The providers ONNX Runtime actually assigned to a graph (for logs and tests)."""
        return list(self._sessions[name].session.get_providers())

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        return self._sessions[name].run(inputs)


def tensorrt_provider_options(
    profile: Any, cache_dir: Path, name: str, fp16_weak: bool = False
) -> dict[str, Any]:
    """TensorRT EP options for one graph: explicit min/opt/max shapes (else the EP
    rebuilds its engine whenever the memory bank grows), engine and timing caches on
    disk.

    Precision: ORT documents `trt_fp16_enable` (let TensorRT run FP32 layers in FP16,
    i.e. weak typing) and no option for strongly typed networks, nor whether the EP
    builds one. With TensorRT 10 (what ORT's GPU wheels link) a weakly typed build
    without FP16 enabled may run our FP16 export's layers in FP32, and with it enabled
    may move the export's FP32 islands (softmax, norms) to FP16: either way the
    precision written into the graph is not guaranteed. `fp16_weak` stays off so the
    islands are never overridden; what precision the EP really runs is unverified here
    and belongs to the GPU check (the native TensorRT backend builds strongly typed)."""
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_engine_cache_prefix": name,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": fp16_weak,
        "trt_profile_min_shapes": profile.option(0),
        "trt_profile_opt_shapes": profile.option(1),
        "trt_profile_max_shapes": profile.option(2),
    }


def gpu_providers(
    folder: Path,
    profiles: dict[str, Any],
    device_id: int = 0,
    compute_stream: int | None = None,
) -> Callable[[str], list[Any]]:
    """Per-graph provider lists for a GPU host: TensorRT (with that graph's profile),
    then CUDA, then CPU for anything neither takes. `compute_stream`: a CUDA stream
    handle for the CUDA provider (`user_compute_stream`, documented for Python); never
    0, which ORT reads as "none"."""
    cache = folder / "ort-trt-cache"
    cuda: dict[str, Any] = {"device_id": device_id}
    if compute_stream:
        cuda["user_compute_stream"] = str(compute_stream)

    def providers(name: str) -> list[Any]:
        chain: list[Any] = []
        if name in profiles:
            options = tensorrt_provider_options(profiles[name], cache, name)
            chain.append(("TensorrtExecutionProvider", {"device_id": device_id, **options}))
        chain.append(("CUDAExecutionProvider", dict(cuda)))
        chain.append("CPUExecutionProvider")
        return chain

    return providers
