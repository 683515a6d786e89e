"""TensorRT runtime backend behind `SamGraphs` (GPU hosts only; UNVERIFIED here).

Plans come from `streamseg build-engine`. Each graph keeps one execution context and
persistent device buffers (reused while shapes repeat, grown when they do not); every
launch is `execute_async_v3` on one CUDA stream. Once a graph has seen the same input
shapes `CAPTURE_AFTER` times in a row, its launch is captured in a CUDA graph and
replayed, with inputs copied into the captured buffers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import DecoderOutput, ImageFeatures
from streamseg.backends.export import decoder_name
from streamseg.backends.exported import ExportedGraphs
from streamseg.backends.trt_build import require_tensorrt

CAPTURE_AFTER = 3
Signature = tuple[tuple[str, tuple[int, ...]], ...]


def signature(inputs: dict[str, torch.Tensor]) -> Signature:
    return tuple(sorted((name, tuple(t.shape)) for name, t in inputs.items()))


class BufferPool:
    """Persistent tensors by name: reused for the same shape and dtype, replaced
    otherwise, so steady-state launches allocate nothing."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0

    def get(self, name: str, shape: Iterable[int], dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(shape)
        current = self._buffers.get(name)
        if current is None or tuple(current.shape) != shape or current.dtype != dtype:
            current = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers[name] = current
            self.allocations += 1
        return current


class _Engine:
    def __init__(self, trt: Any, runtime: Any, plan: Path, stream: torch.cuda.Stream) -> None:
        self.trt = trt
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {plan} (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        self.pool = BufferPool(torch.device("cuda"))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._last: Signature | None = None
        self._repeats = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    def _dtype(self, name: str) -> torch.dtype:
        np_dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
        return torch.from_numpy(np.zeros(1, np_dtype)).dtype

    def __call__(self, **feeds: torch.Tensor) -> list[torch.Tensor]:
        sig = signature(feeds)
        if sig != self._last:
            self._last, self._repeats, self._graph = sig, 0, None
        self._repeats += 1
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                value = feeds[name].to("cuda", self._dtype(name), non_blocking=True)
                buffer = self.pool.get(name, value.shape, value.dtype)
                buffer.copy_(value, non_blocking=True)
                self.context.set_input_shape(name, tuple(buffer.shape))
                self.context.set_tensor_address(name, buffer.data_ptr())
            outputs = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffer = self.pool.get(name, shape, self._dtype(name))
                self.context.set_tensor_address(name, buffer.data_ptr())
                outputs.append(buffer)
            if self._graph is not None:
                self._graph.replay()
            elif self._repeats >= CAPTURE_AFTER:
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph, stream=self.stream):
                    self.context.execute_async_v3(self.stream.cuda_stream)
                self._graph.replay()
            else:
                self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [o.float().clone() for o in outputs]


class TensorRTGraphs(ExportedGraphs):
    def __init__(self, onnx_dir: Path) -> None:
        trt = require_tensorrt()
        super().__init__(onnx_dir, torch.device("cuda"))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        stream = torch.cuda.Stream()
        plans = onnx_dir / "plans"
        self._engines = {
            name: _Engine(trt, runtime, next(plans.glob(f"{name}-*.plan")), stream)
            for name in self.manifest["graphs"]
        }

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        hr0, hr1, embed, pos = self._engines["image_encoder"](images=images)
        return ImageFeatures(hr0, hr1, embed, pos[:1])

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> DecoderOutput:
        feeds = self.decoder_feeds(pix_feat, high_res, point_coords, point_labels, mask_logits)
        engine = self._engines[decoder_name(multimask, mask_logits is not None)]
        low, iou, ptr, score = engine(**feeds)
        return DecoderOutput(low, iou, ptr, score)

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        feeds = self.attention_feeds(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens)
        (out,) = self._engines["memory_attention"](**feeds)
        return out

    def encode_memory(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, object_score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pos = self._engines["memory_encoder"](
            pix_feat=pix_feat, mask_for_mem=mask_for_mem, score_logits=object_score_logits
        )
        return feats, pos[:1]

    def pointer_time_embedding(self, rel_pos: torch.Tensor) -> torch.Tensor:
        (pos,) = self._engines["pointer_pos"](rel_pos=rel_pos)
        return pos
