"""INT8 graphs for ONNX Runtime on CPUs: dynamic quantization of an FP32 export.

`quantize_export` copies an FP32 export folder (export.py) and replaces the graphs that
gain from INT8 by quantized ones, made with ONNX Runtime's `quantize_dynamic`: the
weights of every MatMul with a constant weight become INT8, per output channel, and
the activations entering them are quantized to UINT8 on each call from their own
range, so no calibration set is needed and a camera's content cannot fall outside a
calibrated range. ONNX Runtime fuses each into `DynamicQuantizeMatMul`, whose INT8
kernels use VNNI where the CPU has it.

Per graph (tiny@512, 2 threads; numbers in docs/ENGINES.md):
- image encoder: INT8. Hiera's time is in its linear layers: 2x the FP32 graph.
- memory attention: INT8 for its projections and MLP only (1.2x). Most of its time is
  the attention products (activation x activation): quantizing both was slower (the
  1024 x 7232 attention matrix is quantized on every call), and quantizing Q.K^T alone
  gained 8% at the risk of per-tensor UINT8 queries and keys, which random weights
  cannot show; neither is done.
- memory encoder: FP32. Its time is in convolutions, and ONNX Runtime's `ConvInteger`
  ran at half the speed of the FP32 graph.
- decoders, pointer encoding: FP32. Small, and they produce the mask logits and
  scores directly.
Gather (RoPE's cos/sin tables) and Conv are never quantized. Static quantization
calibrated on synthetic camera frames was tried on the encoder: no faster, 1.4x the
error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamseg.backends.export import weights_as_initializers

INT8_GRAPHS = ("image_encoder", "memory_attention")
QUANTIZED_OPS = ("MatMul",)
# Bump when the quantized graphs would differ (graphs, ops, options): older INT8
# folders are then quantized again instead of being reused.
RECIPE = 1


def recipe() -> dict[str, Any]:
    """What the manifest records about the quantization (and checks on reuse)."""
    import onnxruntime

    return {
        "recipe": RECIPE,
        "method": "onnxruntime.quantization.quantize_dynamic",
        "ops": list(QUANTIZED_OPS),
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, range taken per call",
        "graphs": list(INT8_GRAPHS),
        "onnxruntime": onnxruntime.__version__,
    }


def is_current(folder: Path) -> bool:
    """An INT8 folder that is whole and made by this recipe."""
    path = folder / "manifest.json"
    if not path.is_file():
        return False
    made = json.loads(path.read_text()).get("quantization", {})
    return bool(made.get("recipe") == RECIPE and made.get("graphs") == list(INT8_GRAPHS))


class _QuantizerChatter(logging.Filter):
    """`quantize_dynamic` logs on the root logger: a line per skipped node (INFO) and
    advice to run its pre-processing (shape inference and ORT graph optimisation,
    which gave no speed here). Its other warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"onnxruntime{os.sep}quantization" not in record.pathname:
            return True
        advice = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not advice


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    chatter = _QuantizerChatter()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def quantize_graph(source: Path, target: Path) -> bytes:
    """One FP32 ONNX graph -> its INT8 form at `target`; returns the written bytes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(source)
    weights_as_initializers(model.graph)  # else weights behind Identity stay FP32
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        prepared = Path(tmp) / source.name
        onnx.save(model, prepared)
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            prepared,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
        data = out.read_bytes()
    partial = target.with_suffix(".onnx.partial")
    partial.write_bytes(data)
    partial.replace(target)
    return data


def quantize_export(fp32_folder: Path, out_dir: Path) -> dict[str, Any]:
    """An INT8 export folder from an FP32 one: `INT8_GRAPHS` quantized, every other
    graph and the constants copied; the manifest (written last) says which is which."""
    manifest: dict[str, Any] = json.loads((fp32_folder / "manifest.json").read_text())
    if manifest.get("precision") != "fp32":
        raise ValueError(f"{fp32_folder} is not an FP32 export")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["graphs"].items():
        source, target = fp32_folder / entry["file"], out_dir / entry["file"]
        if name in INT8_GRAPHS:
            data = quantize_graph(source, target)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["precision"] = "int8"
        else:
            shutil.copyfile(source, target)
    shutil.copyfile(fp32_folder / "constants.npz", out_dir / "constants.npz")
    manifest["precision"] = "int8"
    manifest["quantization"] = recipe()
    partial = out_dir / "manifest.json.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(out_dir / "manifest.json")
    return manifest
