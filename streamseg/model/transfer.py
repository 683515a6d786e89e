"""Moving tensors between host and model device without hidden synchronisation.

A copy from pageable host memory, `torch.tensor(..., device=cuda)` and every
`float(tensor)`/`.item()`/`.cpu()` wait for all queued GPU work. The tracker therefore
stages inputs in pinned memory (PyTorch's caching host allocator reuses a block only
after its copy finished) and brings a step's outputs to the host in one copy.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; asynchronous through pinned memory on CUDA."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Several device tensors as numpy arrays, through one device-to-host copy: their
    bytes are packed into one buffer on the device, copied, and split again. On CUDA
    the copy goes into pinned memory behind the queued work and the host waits on an
    event recorded after it: the one wait of a step, and not a stream or device
    synchronisation (`torch.cuda.set_sync_debug_mode` stays quiet)."""
    flat = [t.detach().contiguous().reshape(-1) for t in tensors]
    packed = torch.cat([t.view(torch.uint8) for t in flat]) if flat else torch.empty(0)
    host = _copy_to_host(packed).numpy()
    out, offset = [], 0
    for original, t in zip(tensors, flat, strict=True):
        size = t.numel() * t.element_size()
        raw = host[offset : offset + size]
        offset += size
        dtype = torch.empty(0, dtype=original.dtype).numpy().dtype
        out.append(raw.view(dtype).reshape(tuple(original.shape)))
    return out


def _copy_to_host(packed: torch.Tensor) -> torch.Tensor:
    if packed.device.type != "cuda":
        return packed.cpu()
    pinned = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
    pinned.copy_(packed, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    copied.synchronize()
    return pinned
