"""The torch backend with its two heaviest graphs compiled by `torch.compile` (inductor).

Compiled: the image encoder (with the decoder's high-res projections) and memory
attention. The decoder and memory encoder stay eager: they are a few ms each and the
decoder's shapes change with every prompt.

Shapes. Guards check sizes, strides and autocast state, so inputs are made dense
first and the sizes that vary are marked dynamic: the memory's spatial and pointer
token counts always, the batch (images or tracks) from 2 up. Sizes 0 and 1 are always
specialised, so each part has two graphs, batch 1 and any larger batch, and no memory
layout recompiles. Memory attention runs sam2's layers with the real-valued rotary
encoding (`rope.py`) on a copy of the module: inductor generates no code for complex
tensors. `warm_up` compiles every variant before a server takes traffic (run it
under the autocast the steps will use), so no stream meets a compile pause.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.rope import MemoryAttentionGraph, install_real_valued_rope
from streamseg.backends.torch_graphs import EncoderOutputs, TorchGraphs

log = logging.getLogger(__name__)

COMPILE_PARTS = ("image_encoder", "memory_attention")
# Graphs per compiled function dynamo keeps before falling back to eager: ours need 2,
# the rest is headroom for other model sizes and autocast dtypes in one process (the
# compiled code is shared by every instance with the same shapes).
RECOMPILE_LIMIT = 16


class CompiledTorchGraphs(TorchGraphs):
    """`TorchGraphs` whose image encoder and/or memory attention run compiled."""

    def __init__(
        self,
        model: Any,
        *,
        parts: tuple[str, ...] = COMPILE_PARTS,
        channels_last: bool | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(model, channels_last=channels_last)
        unknown = set(parts) - set(COMPILE_PARTS)
        if unknown or not parts:
            raise ValueError(f"compile parts must be among {COMPILE_PARTS}, got {parts}")
        self.parts = parts
        self.compile_s = 0.0  # time spent in calls that compiled
        self.compiles: dict[str, int] = {}  # graphs compiled per part
        self._primed = False
        self._encoder: Callable[[torch.Tensor], EncoderOutputs] | None = None
        self._attention: Callable[..., torch.Tensor] | None = None
        options = {"mode": mode} if mode else {}
        if "image_encoder" in parts:
            self._encoder = _compiled(super().run_image_encoder, options)
        if "memory_attention" in parts:
            attention = copy.deepcopy(model.memory_attention)
            install_real_valued_rope(attention, int(model.image_size) // int(model.backbone_stride))
            self._attention = _compiled(MemoryAttentionGraph(attention).eval(), options)

    def run_image_encoder(self, images: torch.Tensor) -> EncoderOutputs:
        if self._encoder is None:
            return super().run_image_encoder(images)
        if not self._primed:
            # sam2's position encodings fill a cache on their first call; a graph traced
            # before that would be retraced once the cache holds the entry.
            super().run_image_encoder(images)
            self._primed = True
        # Guards check strides too: one layout for every caller (preprocessing leaves
        # images channels-last-strided, warm-up's are contiguous).
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.contiguous(memory_format=memory_format)
        _mark_dynamic((images,), 0)
        return self._timed("image_encoder", self._encoder, images)

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        if self._attention is None:
            return super().attend_memory(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens)
        spatial = memory.shape[0] - num_obj_ptr_tokens
        memory, pointers = torch.split(memory, [spatial, num_obj_ptr_tokens])
        memory_pos, pointers_pos = torch.split(memory_pos, [spatial, num_obj_ptr_tokens])
        # Dense inputs: the tracker's are views (expanded over tracks, split, permuted)
        # whose strides vary with the batch, and guards check strides.
        inputs = tuple(
            t.contiguous() for t in (curr, curr_pos, memory, memory_pos, pointers, pointers_pos)
        )
        _mark_dynamic(inputs[2:], 0)
        _mark_dynamic(inputs, 1)
        return self._timed("memory_attention", self._attention, *inputs)

    def warm_up(self, max_batch: int = 1) -> float:
        """Compile every variant a server will call: memory attention for one track
        and for a batch of tracks, the image encoder for one image and, with
        `max_batch` > 1, for a batch. Returns the seconds spent."""
        geo = self.geometry
        splits = geo.hidden_dim // geo.mem_dim
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in (1, 2):
                images = torch.zeros(batch, 3, geo.image_size, geo.image_size, device=self.device)
                if batch == 1 or max_batch > 1:
                    feats = self.encode_image(images)
                else:
                    feats = self.encode_image(images[:1]).expand(batch)
                curr = feats.embed.flatten(2).permute(2, 0, 1)
                pos = feats.pos.flatten(2).permute(2, 0, 1).expand(-1, batch, -1)
                tokens = geo.feat_size**2 + splits
                memory = torch.zeros(tokens, batch, geo.mem_dim, device=self.device)
                self.attend_memory(curr, pos, memory, memory, splits)
        return time.perf_counter() - start

    def _timed(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn`; a call that compiled is logged and its time kept in `compile_s`."""
        before = _graphs_compiled()
        start = time.perf_counter()
        out = fn(*args)
        if _graphs_compiled() != before:
            spent = time.perf_counter() - start
            self.compile_s += spent
            self.compiles[name] = self.compiles.get(name, 0) + 1
            log.info("torch.compile: %s compiled in %.1f s", name, spent)
        return out


def _mark_dynamic(tensors: tuple[torch.Tensor, ...], dim: int) -> None:
    """Compile `dim` as a dynamic size. Sizes 0 and 1 are always specialised, so a
    batch of one keeps its own static graph and every larger batch shares one."""
    for t in tensors:
        if t.shape[dim] > 1:
            torch._dynamo.mark_dynamic(t, dim)


def _graphs_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _compiled(fn: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    return torch.compile(fn, dynamic=False, fullgraph=True, **options)


def compile_graphs(graphs: SamGraphs) -> SamGraphs:
    """`graphs` with the torch backend's heavy graphs compiled; other backends (what
    `auto` may pick on a GPU host) are already compiled engines and come back as is."""
    if not isinstance(graphs, TorchGraphs) or isinstance(graphs, CompiledTorchGraphs):
        log.info("torch.compile applies to the torch backend only; %s kept", type(graphs).__name__)
        return graphs
    return CompiledTorchGraphs(graphs.model, channels_last=graphs.channels_last)
