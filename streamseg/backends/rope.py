"""Real-valued rotary position encoding for SAM 2's memory attention (export, compile).

sam2's `RoPEAttention` rotates queries and keys with complex tensors, which neither
ONNX exporter accepts and inductor leaves to slow fallbacks. Here the same rotation
is done on (even, odd) channel pairs with cos/sin tables, the memory's spatial and
pointer tokens are separated with `torch.split` (no slice assignment), and the table
is repeated per memory frame by indexing, so the memory length stays a dynamic axis.
The rotation lives in its own submodule (`rotary`) so that the FP16 export can find
its nodes by scope and keep them in FP32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

ROTARY_SCOPE = "rotary"  # attribute name of the rotation submodule (and its ONNX scope)


def rope_tables(dim: int, side: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [side*side, dim/2], in the channel-pair order of sam2's axial RoPE
    (x frequencies for the first half of the pairs, y for the second)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(side * side, dtype=torch.float32)
    t_x, t_y = t % side, torch.div(t, side, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Multiply each (even, odd) pair by cos + i·sin, as the complex version does.
    x: [B, heads, N, dim]; cos/sin: [N, dim/2]. Computed in FP32 whatever x is."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class RotaryEncoding(torch.nn.Module):
    """Rotates queries and the spatial part of the keys; the trailing
    `num_k_exclude_rope` key tokens (object pointers) pass through unrotated.

    `cos`/`sin` are sam2's own tables (the real and imaginary parts of its
    `freqs_cis`), taken before tracing so no complex op reaches the graph; a query
    length they do not fit falls back to `rope_tables`."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, theta: float, cos: torch.Tensor, sin: torch.Tensor) -> None:
        super().__init__()
        self.theta = theta
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, num_k_exclude_rope: Any = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_q = q.shape[-2]
        cos, sin = self.cos, self.sin
        if cos.shape[0] != n_q or cos.shape[1] * 2 != q.shape[-1]:
            cos, sin = rope_tables(q.shape[-1], math.isqrt(int(n_q)), self.theta)
        cos, sin = cos.to(q.device), sin.to(q.device)
        k_rope, k_ptr = torch.split(k, [k.shape[-2] - num_k_exclude_rope, num_k_exclude_rope], -2)
        index = torch.arange(k_rope.shape[-2], device=k.device) % n_q  # one table per frame
        k_out = torch.cat([rotate(k_rope, cos[index], sin[index]), k_ptr], dim=-2)
        return rotate(q, cos, sin), k_out


def _real_forward(
    attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: Any = 0
) -> torch.Tensor:
    """RoPEAttention.forward with the rotation swapped for the real-valued one."""
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    q, k = getattr(attn, ROTARY_SCOPE)(q, k, num_k_exclude_rope)
    dropout_p = attn.dropout_p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    result: torch.Tensor = attn.out_proj(attn._recombine_heads(out))
    return result


def install_real_valued_rope(
    memory_attention: torch.nn.Module, side: int | None = None
) -> list[torch.nn.Module]:
    """Swap every RoPEAttention in `memory_attention` to the real-valued forward, for
    good (a module of its own that is exported or compiled). `side`: the feature map's
    side (image_size / 16); default: the size the module was built for. Returns the
    patched attention modules."""
    from sam2.modeling.sam.transformer import RoPEAttention

    patched = []
    for module in memory_attention.modules():
        if isinstance(module, RoPEAttention):
            theta = float(module.compute_cis.keywords["theta"])
            cis = module.compute_cis(end_x=side, end_y=side) if side else module.freqs_cis
            cis = cis.to(next(module.parameters()).device)
            rotary = RotaryEncoding(theta, cis.real.contiguous(), cis.imag.contiguous())
            setattr(module, ROTARY_SCOPE, rotary)
            module.forward = _real_forward.__get__(module)
            patched.append(module)
    return patched


@contextlib.contextmanager
def real_valued_rope(memory_attention: torch.nn.Module, side: int | None = None) -> Iterator[None]:
    """`install_real_valued_rope` for the duration of the block (an export), then the
    complex forward is put back."""
    patched = install_real_valued_rope(memory_attention, side)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
            delattr(module, ROTARY_SCOPE)


class MemoryAttentionGraph(torch.nn.Module):
    """The exportable memory-attention graph: spatial memories and object-pointer
    tokens come as separate inputs, so both counts are dynamic axes and no zero
    padding is ever needed (padded banks would change the attention)."""

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
