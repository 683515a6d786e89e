"""Is this ONNX Runtime build usable with this host's CUDA and TensorRT?

`python -m streamseg.backends.ort_check` runs at image build time (docker/Dockerfile)
and by hand. A GPU build made for another CUDA major (a CUDA 12 wheel on a CUDA 13
image) installs, lists its providers in `get_available_providers()`, and then runs
every graph on the CPU with one log line; so the providers' shared libraries must
resolve against the installed CUDA and TensorRT, and where a GPU is visible (a build
with the NVIDIA runtime, or at start-up) a real session must get the providers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def parse_ldd(text: str) -> list[str]:
    """The libraries `ldd` could not find (`libcudart.so.12 => not found`)."""
    return sorted({line.split()[0] for line in text.splitlines() if "not found" in line})


def provider_library(kind: str) -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).parent / "capi" / f"libonnxruntime_providers_{kind}.so"


def unresolved(library: Path) -> list[str]:
    done = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
    return parse_ldd(done.stdout + done.stderr)


def session_providers(providers: list[str]) -> list[str]:
    """The providers ONNX Runtime really assigned to a one-node model."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "check", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    return list(session.get_providers())


def check(required: list[str], require_gpu: bool) -> list[str]:
    """Problems found, one line each (none: usable)."""
    import onnxruntime as ort

    problems = []
    for kind in required:
        library = provider_library(kind)
        if not library.is_file():
            problems.append(f"{kind}: {library.name} is not part of onnxruntime {ort.__version__}")
            continue
        missing = unresolved(library)
        if missing:
            problems.append(f"{kind}: {library.name} cannot load: missing {', '.join(missing)}")
    import torch

    if torch.cuda.is_available():
        wanted = [PROVIDERS[k] for k in required]
        got = session_providers([*wanted, "CPUExecutionProvider"])
        problems += [
            f"{p} is not active in a real session (got {got})" for p in wanted if p not in got
        ]
    elif require_gpu:
        problems.append("no GPU visible to torch, so no session could be checked")
    else:
        print("ort_check: no GPU visible; checked that the providers' libraries load")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamseg.backends.ort_check")
    parser.add_argument("--require", default="cuda,tensorrt", help="providers: cuda,tensorrt")
    parser.add_argument("--require-gpu", action="store_true", help="fail without a GPU")
    args = parser.parse_args(argv)
    required = [k for k in args.require.split(",") if k]
    unknown = set(required) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers {sorted(unknown)}")
    problems = check(required, args.require_gpu)
    for line in problems:
        print(f"ort_check: {line}", file=sys.stderr)
    if not problems:
        print(f"ort_check: ok ({', '.join(PROVIDERS[k] for k in required)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
