"""Export the graphs the tracker runs (see `SamGraphs`) to ONNX, FP32 or FP16, with a
manifest, so ONNX Runtime and TensorRT can run them.

Graphs: the image encoder; the prompt encoder + mask decoder + object pointer in four
variants (multimask or single mask × with or without a previous-mask input; points and
objects are dynamic axes; the multimask choice and the single-mask dynamic-stability
fallback of `_forward_sam_heads` happen inside the graph, so the glue needs no
selection code); memory attention (real-valued RoPE, dynamic memory and pointer
counts); the memory encoder; the object pointers' temporal encoding. Small constants go
to `constants.npz`, the head settings and geometry to `manifest.json`.

FP16 is derived from the traced FP32 graph by `convert_to_fp16`: every float tensor
becomes FP16 except FP32 islands chosen by op type (LayerNormalization, Softmax,
Sin/Cos), by module scope (RoPE rotation, LayerNorm2d, IoU and object-score heads),
by data independence (shape arithmetic, positional encodings), and the tail of each
score output (mask logits from the last matmul on). Graph inputs and outputs stay
FP32, so the tracker glue is the same for both precisions, and TensorRT builds it as a
strongly typed network.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import HeadSettings
from streamseg.backends.rope import ROTARY_SCOPE, MemoryAttentionGraph, real_valued_rope
from streamseg.backends.torch_graphs import TorchGraphs

OPSET = 17
EXPORTER = "torch.onnx.export (TorchScript exporter, dynamo=False)"
PRECISIONS = ("fp32", "fp16")
MANIFEST_SCHEMA = 1
DECODER_VARIANTS = [(multi, mask) for multi in (False, True) for mask in (False, True)]


def decoder_name(multimask: bool, with_mask: bool) -> str:
    return f"decoder_{'multi' if multimask else 'single'}_{'mask' if with_mask else 'nomask'}"


GRAPH_NAMES = (
    "image_encoder",
    *(decoder_name(m, k) for m, k in DECODER_VARIANTS),
    "memory_attention",
    "memory_encoder",
    "pointer_pos",
)


def weights_fingerprint(model: Any) -> str:
    """Identifies the weights cheaply, so exported graphs are never reused for others."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


# --- torch wrappers: one module per graph ------------------------------------------------


class _ImageEncoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.graphs.encode_image(images)
        pos = f.pos.expand(images.shape[0], -1, -1, -1)  # batch axis tied to the input's
        return f.high_res_0, f.high_res_1, f.embed, pos


class _Decoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs, multimask: bool, with_mask: bool) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs, self.multimask, self.with_mask = graphs, multimask, with_mask

    def forward(self, pix_feat: torch.Tensor, hr0: torch.Tensor, hr1: torch.Tensor,
                coords: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
        d = self.graphs.decode(
            pix_feat, (hr0, hr1), coords, labels, mask if self.with_mask else None, self.multimask
        )
        return d.low_res_logits, d.iou, d.obj_ptr, d.object_score_logits


class _MemoryEncoder(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(
        self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor, score_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pos = self.graphs.encode_memory(pix_feat, mask_for_mem, score_logits)
        return feats, pos.expand(pix_feat.shape[0], -1, -1, -1)


class _PointerPos(torch.nn.Module):
    def __init__(self, graphs: TorchGraphs) -> None:
        super().__init__()
        self.model = graphs.model
        self.graphs = graphs

    def forward(self, rel_pos: torch.Tensor) -> torch.Tensor:
        return self.graphs.pointer_time_embedding(rel_pos)


@dataclass(frozen=True)
class _Spec:
    name: str
    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    fp32_outputs: tuple[str, ...] = ()  # outputs whose tail stays FP32 in the FP16 graph
    keep_fp32: bool = False  # the whole graph stays FP32 (tiny, precision-critical)


def _specs(graphs: TorchGraphs) -> list[_Spec]:
    geo, dev = graphs.geometry, graphs.device
    s, h, c, cm = geo.image_size, geo.feat_size, geo.hidden_dim, geo.mem_dim
    b = {0: "batch"}

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev)

    specs = [
        _Spec("image_encoder", _ImageEncoder(graphs), (rand(1, 3, s, s),), ["images"],
              ["hr0", "hr1", "embed", "pos"], {n: b for n in ("images", "hr0", "hr1", "embed",
                                                               "pos")}),
    ]  # fmt: skip
    feats = (rand(1, c, h, h), rand(1, c // 8, 4 * h, 4 * h), rand(1, c // 4, 2 * h, 2 * h))
    points = {0: "batch", 1: "points"}
    outs = ["low_res", "iou", "obj_ptr", "score_logits"]
    for multimask, with_mask in DECODER_VARIANTS:
        args: tuple[torch.Tensor, ...] = (
            *feats,
            torch.rand(1, 2, 2, device=dev) * s,
            torch.tensor([[1, 0]], dtype=torch.int32, device=dev),
        )
        names = ["pix_feat", "hr0", "hr1", "coords", "labels"]
        if with_mask:
            args = (*args, rand(1, 1, 4 * h, 4 * h))
            names.append("mask")
        axes = {n: b for n in (*names, *outs)} | {"coords": points, "labels": points}
        specs.append(_Spec(decoder_name(multimask, with_mask),
                           _Decoder(graphs, multimask, with_mask), args, names, outs, axes,
                           fp32_outputs=("low_res", "iou", "score_logits")))  # fmt: skip
    tokens = {0: "tokens", 1: "batch"}
    specs.append(_Spec(
        "memory_attention", MemoryAttentionGraph(graphs.model.memory_attention),
        (rand(h * h, 1, c), rand(h * h, 1, c), rand(2 * h * h, 1, cm), rand(2 * h * h, 1, cm),
         rand(4, 1, cm), rand(4, 1, cm)),
        ["curr", "curr_pos", "memory", "memory_pos", "pointers", "pointers_pos"], ["out"],
        {"curr": {1: "batch"}, "curr_pos": {1: "batch"},
         "memory": tokens | {0: "memory"}, "memory_pos": tokens | {0: "memory"},
         "pointers": tokens | {0: "pointers"}, "pointers_pos": tokens | {0: "pointers"},
         "out": {1: "batch"}},
    ))  # fmt: skip
    specs.append(_Spec(
        "memory_encoder", _MemoryEncoder(graphs),
        (feats[0], torch.rand(1, 1, s, s, device=dev), torch.ones(1, 1, device=dev)),
        ["pix_feat", "mask_for_mem", "score_logits"], ["maskmem", "maskmem_pos"],
        {n: b for n in ("pix_feat", "mask_for_mem", "score_logits", "maskmem", "maskmem_pos")},
    ))  # fmt: skip
    specs.append(_Spec("pointer_pos", _PointerPos(graphs), (torch.rand(5, device=dev),),
                       ["rel_pos"], ["pos"], {"rel_pos": {0: "k"}, "pos": {0: "k"}},
                       keep_fp32=True))  # fmt: skip
    return specs


@contextlib.contextmanager
def _constant_pos_embed(model: Any, image_size: int) -> Iterator[None]:
    """Hiera's windowed position embedding depends only on weights and the (fixed)
    image size, but traced it becomes a bicubic Resize plus a Tile whose ONNX form has
    an `If` TensorRT may refuse. Computed once here, it enters the graph as a constant
    with the same values."""
    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "_get_pos_embed"):
        yield
        return
    stride = trunk.patch_embed.proj.stride
    hw = (image_size // stride[0], image_size // stride[1])
    with torch.no_grad():
        table = trunk._get_pos_embed(hw).detach()
    trunk._get_pos_embed = lambda _hw: table
    try:
        yield
    finally:
        del trunk._get_pos_embed


def _trace(spec: _Spec) -> bytes:
    """Trace one graph; sam2's shape asserts and the exporter's indexing note warn on
    every export although the shapes they check are fixed by the manifest."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index", category=UserWarning)
        torch.onnx.export(
            spec.module.eval(),
            spec.args,
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted
            input_names=spec.inputs,
            output_names=spec.outputs,
            dynamic_axes=spec.axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def fp32_scopes(model: Any) -> tuple[str, ...]:
    """ONNX name scopes (TorchScript exporter naming) of the modules kept in FP32 in
    the FP16 export: LayerNorm2d (hand-written statistics), the IoU and object-score
    heads, and the RoPE rotation."""
    scopes = [f"/{ROTARY_SCOPE}/"]
    for name, module in model.named_modules():
        if type(module).__name__ == "LayerNorm2d" or name.endswith(
            ("iou_prediction_head", "pred_obj_score_head")
        ):
            scopes.append(onnx_scope(name))
    return tuple(scopes)


def onnx_scope(qualified_name: str) -> str:
    """`a.layers.0.norm` -> `/a/layers/layers.0/norm/` (how the exporter names scopes)."""
    parts: list[str] = []
    previous = ""
    for part in qualified_name.split("."):
        parts.append(f"{previous}.{part}" if part.isdigit() else part)
        if not part.isdigit():
            previous = part
    return "/" + "/".join(parts) + "/"


# --- FP16 conversion -----------------------------------------------------------------------

FP32_OPS = frozenset({"LayerNormalization", "Softmax", "Sin", "Cos", "Range"})
# Ops that may run in FP16; anything else with float tensors stops the conversion, so a
# new op is a deliberate decision rather than a silent type error.
FP16_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "Cast", "Clip", "Concat", "ConstantOfShape", "Conv",
    "ConvTranspose", "Div", "Einsum", "Equal", "Erf", "Exp", "Expand", "Flatten", "Gather",
    "GatherElements", "Gelu", "Gemm", "Greater", "GreaterOrEqual", "Identity", "Less",
    "LessOrEqual", "MatMul", "Max", "MaxPool", "Min", "Mod", "Mul", "Neg", "OneHot", "Pad",
    "Pow", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
    "Reshape", "Resize", "ScatterND", "Sigmoid", "Slice", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
})  # fmt: skip
SHAPE_OPS = frozenset({"Shape", "Size"})  # read only the shape: never cast their input
FP32_INPUT_SLOTS = {"Resize": (1, 2)}  # roi and scales must stay float32
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})


@dataclass(frozen=True)
class Fp16Policy:
    """Which parts of a graph stay FP32 (see the module docstring)."""

    fp32_ops: frozenset[str] = FP32_OPS
    fp32_scopes: tuple[str, ...] = ()
    fp32_outputs: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "ops": sorted(self.fp32_ops),
            "scopes": sorted(self.fp32_scopes),
            "output_tails": list(self.fp32_outputs),
            "data_independent": "shape arithmetic and positional encodings",
            "io": "graph inputs and outputs are float32",
        }


def _subgraph_refs(node: Any) -> list[str]:
    """Outer-scope names a control-flow node's subgraphs read."""
    refs: list[str] = []
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for sub in graph.node:
                refs += [i for i in sub.input if i and i not in defined]
                refs += _subgraph_refs(sub)
                defined.update(sub.output)
    return refs


def _constants_to_initializers(graph: Any) -> None:
    from onnx import numpy_helper

    kept = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            tensor = numpy_helper.from_array(
                numpy_helper.to_array(attrs["value"].t), name=node.output[0]
            )
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _fold_identities(graph: Any) -> None:
    """Drop Identity nodes on initializers (the exporter's shared-weight aliases), so
    the weight itself is what its consumers see and gets converted once."""
    inits = {t.name for t in graph.initializer}
    keep = {o.name for o in graph.output} | {r for n in graph.node for r in _subgraph_refs(n)}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in keep
    }
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def weights_as_initializers(graph: Any) -> None:
    """Constant nodes and the exporter's Identity aliases of weights become plain
    initializers, so a rewrite (FP16 conversion, INT8 quantization) finds every weight
    as the direct input of the node that uses it."""
    _constants_to_initializers(graph)
    _fold_identities(graph)


def convert_to_fp16(model: Any, policy: Fp16Policy) -> Any:
    """An FP16 copy of an FP32 ONNX model with FP32 islands and FP32 inputs/outputs.

    Every node that touches float tensors runs in FP16 unless the policy, data
    independence or control flow keeps it in FP32; Cast nodes are inserted where a
    tensor crosses between the two, weights are stored in the precision their
    consumers need (both copies when both do).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    weights_as_initializers(graph)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    elem: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        elem[vi.name] = vi.type.tensor_type.elem_type
    missing = [o for n in graph.node for o in n.output if o and o not in elem]
    if missing:
        raise ValueError(f"shape inference left these tensors untyped: {missing[:5]}")
    inits = {t.name: t for t in graph.initializer}
    refs = {id(n): _subgraph_refs(n) for n in graph.node if _subgraph_refs(n)}
    producer = {o: n for n in graph.node for o in n.output}

    def is_float(name: str) -> bool:
        return elem.get(name) == FLOAT

    static = set(inits)  # data-independent tensors
    for node in graph.node:
        ins = [i for i in node.input if i] + refs.get(id(node), [])
        if node.op_type in SHAPE_OPS or all(i in static for i in ins):
            static.update(node.output)
    floaty = {
        id(n) for n in graph.node
        if n.op_type not in SHAPE_OPS and any(is_float(x) for x in (*n.input, *n.output) if x)
    }  # fmt: skip
    fp32: set[int] = set()
    for node in graph.node:
        if id(node) in floaty and (
            node.op_type in policy.fp32_ops
            or id(node) in refs
            or any(scope in node.name for scope in policy.fp32_scopes)
            or all(o in static for o in node.output if o)
        ):
            fp32.add(id(node))
    stack = [o for o in policy.fp32_outputs if o in producer]
    seen: set[str] = set()
    while stack:  # from each score output back to (and including) its last matmul/conv
        name = stack.pop()
        node = producer.get(name)
        if name in seen or node is None or name in static:
            continue
        seen.add(name)
        if id(node) in floaty:
            fp32.add(id(node))
        if node.op_type not in COMPUTE_OPS:
            stack.extend(i for i in node.input if i)
    half = floaty - fp32
    unknown = sorted({n.op_type for n in graph.node if id(n) in half} - FP16_OPS)
    if unknown:
        raise ValueError(f"no FP16 rule for ops {unknown}; add them to FP16_OPS or FP32_OPS")

    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    for node in graph.node:  # FP16 results that are graph outputs get a final Cast
        if id(node) in half:
            for k, o in enumerate(node.output):
                if o in outputs and is_float(o):
                    renamed[o] = node.output[k] = f"{o}__fp16"
                    elem[renamed[o]] = FLOAT
    home = {i.name: 32 for i in graph.input}
    for node in graph.node:
        for o in node.output:
            home[o] = 16 if id(node) in half else 32
    nodes: list[Any] = []
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, Any] = {}

    def source(name: str, want: int) -> str:
        if name in inits:
            if want == 32:
                return name
            if name not in half_inits:
                array = numpy_helper.to_array(inits[name])
                if np.any(np.isfinite(array) & (np.abs(array) > np.finfo(np.float16).max)):
                    raise ValueError(f"{name} overflows FP16; keep its consumers in FP32")
                half = array.astype(np.float16)
                half_inits[name] = numpy_helper.from_array(half, name=f"{name}__fp16")
            return str(half_inits[name].name)
        if home.get(name, 32) == want:
            return name
        if (name, want) not in casts:
            casts[name, want] = f"{name}__to{want}"
            nodes.append(helper.make_node(
                "Cast", [name], [casts[name, want]], name=f"{name}__cast{want}",
                to=HALF if want == 16 else FLOAT,
            ))  # fmt: skip
        return casts[name, want]

    for node in graph.node:
        for k, x in enumerate(node.input):
            node.input[k] = renamed.get(x, x)
        if id(node) in floaty:
            precision = 16 if id(node) in half else 32
            slots = FP32_INPUT_SLOTS.get(node.op_type, ())
            for k, x in enumerate(node.input):
                if x and is_float(x):
                    node.input[k] = source(x, 32 if precision == 32 or k in slots else 16)
            if precision == 16:
                for attr in node.attribute:
                    if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                        attr.i = HALF
                    if node.op_type == "ConstantOfShape" and attr.t.data_type == FLOAT:
                        value = numpy_helper.to_array(attr.t).astype(np.float16)
                        attr.t.CopyFrom(numpy_helper.from_array(value))
        nodes.append(node)
    for original, fp16_name in renamed.items():
        nodes.append(helper.make_node("Cast", [fp16_name], [original], name=f"{original}__out",
                                      to=FLOAT))  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(half_inits.values())
    used = {i for n in graph.node for i in n.input} | {r for v in refs.values() for r in v}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    model = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


# --- writing an export folder --------------------------------------------------------------


def _io_shapes(values: Iterable[Any]) -> dict[str, dict[str, Any]]:
    from onnx import helper

    table = {}
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim]
        table[v.name] = {"dtype": str(helper.tensor_dtype_to_np_dtype(tt.elem_type)),
                         "shape": dims}  # fmt: skip
    return table


def _versions() -> dict[str, str]:
    import onnx

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        from importlib.metadata import version

        versions["sam2"] = version("sam2")
    except Exception:  # pragma: no cover - sam2 installed from a checkout
        versions["sam2"] = "unknown"
    return versions


def _write_folder(
    out_dir: Path,
    traced: dict[str, bytes],
    specs: list[_Spec],
    graphs: TorchGraphs,
    model_name: str,
    precision: str,
    scopes: tuple[str, ...],
) -> dict[str, Any]:
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    islands: dict[str, Any] = {}
    for spec in specs:
        proto = onnx.load_from_string(traced[spec.name])
        graph_precision = "fp32"
        if precision == "fp16" and not spec.keep_fp32:
            policy = Fp16Policy(fp32_scopes=scopes, fp32_outputs=spec.fp32_outputs)
            proto = convert_to_fp16(proto, policy)
            graph_precision = "fp16"
            islands[spec.name] = policy.describe()
        data = proto.SerializeToString()
        path = out_dir / f"{spec.name}.onnx"
        tmp = path.with_suffix(".onnx.partial")
        tmp.write_bytes(data)
        tmp.replace(path)
        entries[spec.name] = {
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "precision": graph_precision,
            "inputs": _io_shapes(proto.graph.input),
            "outputs": _io_shapes(proto.graph.output),
        }
    np.savez(
        out_dir / "constants.npz",
        no_mem_embed=graphs.no_memory_embedding().detach().float().cpu().numpy(),
        maskmem_tpos_enc=graphs.memory_time_embedding().detach().float().cpu().numpy(),
    )
    geo = graphs.geometry
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "model": model_name,
        "precision": precision,
        "opset": OPSET,
        "exporter": EXPORTER,
        "versions": _versions(),
        "weights": weights_fingerprint(graphs.model),
        "geometry": {k: getattr(geo, k) for k in geo.__slots__},
        "settings": {f: getattr(graphs.heads, f) for f in HeadSettings.__slots__},
        "graphs": entries,
    }
    if islands:
        manifest["fp32_islands"] = islands
    tmp_manifest = out_dir / "manifest.json.partial"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_manifest.replace(out_dir / "manifest.json")  # last: a folder with a manifest is whole
    return manifest


def export_precisions(
    model: Any, model_name: str, folders: dict[str, Path]
) -> dict[str, dict[str, Any]]:
    """Trace every graph once and write one folder per precision
    (`{"fp32": path, "fp16": path}`); returns the manifests by precision."""
    unknown = set(folders) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {sorted(unknown)}")
    graphs = TorchGraphs(model)
    specs = _specs(graphs)
    geo = graphs.geometry
    with (
        torch.no_grad(),
        real_valued_rope(model.memory_attention, geo.feat_size),
        _constant_pos_embed(model, geo.image_size),
    ):
        traced = {spec.name: _trace(spec) for spec in specs}
    scopes = fp32_scopes(model)
    return {
        precision: _write_folder(folder, traced, specs, graphs, model_name, precision, scopes)
        for precision, folder in folders.items()
    }


def export_graphs(
    model: Any, out_dir: Path, model_name: str, precision: str = "fp32"
) -> dict[str, Any]:
    """Write every graph, `constants.npz` and `manifest.json` into `out_dir`."""
    return export_precisions(model, model_name, {precision: out_dir})[precision]


def read_manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    if manifest.get("schema", 1) != MANIFEST_SCHEMA:
        raise ValueError(f"{folder}: manifest schema {manifest.get('schema')} is not supported")
    return manifest
