"""Real-valued rotary position encoding for SAM 2's memory attention.

sam2's `RoPEAttention` rotates queries and keys with complex tensors, which neither
ONNX exporter accepts. Here the same rotation is done on (even, odd) channel pairs
with cos/sin tables, the memory's spatial and pointer tokens are split with
`torch.split`, and the table is repeated per memory frame by indexing — all of which
export with a dynamic memory length and give the same numbers as the complex version.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def rope_tables(dim: int, side: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [side*side, dim/2], in the channel-pair order of sam2's axial RoPE."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(side * side, dtype=torch.float32)
    t_x, t_y = t % side, torch.div(t, side, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, N, dim]; cos/sin: [N, dim/2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def _real_forward(
    attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: Any = 0
) -> torch.Tensor:
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    n_q = q.shape[-2]
    side = math.isqrt(int(n_q))
    cos, sin = rope_tables(q.shape[-1], side, attn.rope_theta)
    cos, sin = cos.to(q.device), sin.to(q.device)
    q = rotate(q, cos, sin)
    n_ptr = num_k_exclude_rope
    k_rope, k_ptr = torch.split(k, [k.shape[-2] - n_ptr, n_ptr], dim=-2)
    index = torch.arange(k_rope.shape[-2], device=k.device) % n_q  # one table per memory frame
    k = torch.cat([rotate(k_rope, cos[index], sin[index]), k_ptr], dim=-2)
    out = F.scaled_dot_product_attention(q, k, v)
    result: torch.Tensor = attn.out_proj(attn._recombine_heads(out))
    return result


@contextlib.contextmanager
def real_valued_rope(memory_attention: torch.nn.Module) -> Iterator[None]:
    """Swap every RoPEAttention in `memory_attention` to the real-valued forward."""
    from sam2.modeling.sam.transformer import RoPEAttention

    patched = []
    for module in memory_attention.modules():
        if isinstance(module, RoPEAttention):
            theta = module.compute_cis.keywords["theta"]
            module.rope_theta = theta
            module.forward = _real_forward.__get__(module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class MemoryAttentionGraph(torch.nn.Module):
    """The exportable memory-attention graph: spatial memories and object-pointer
    tokens come as separate inputs, so their counts are dynamic axes."""

    def __init__(self, memory_attention: torch.nn.Module) -> None:
        super().__init__()
        self.memory_attention = memory_attention

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        pointers: torch.Tensor,
        pointers_pos: torch.Tensor,
    ) -> torch.Tensor:
        out: torch.Tensor = self.memory_attention(
            curr=[curr],
            curr_pos=[curr_pos],
            memory=torch.cat([memory, pointers]),
            memory_pos=torch.cat([memory_pos, pointers_pos]),
            num_obj_ptr_tokens=pointers.shape[0],
        )
        return out
