"""The layering streamseg/assembly.py exists for: `model/` builds networks, `backends/`
wraps them, neither reaches up (read from the source with `ast`, so an import hidden
inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamseg"
ABOVE_BOTH = ("streamseg.assembly", "streamseg.cli", "streamseg.server", "streamseg.bench",
              "streamseg.pipeline")  # fmt: skip
# What each layer must never import (a prefix matches the module and its submodules).
FORBIDDEN = {
    "model": (*ABOVE_BOTH, "streamseg.backends"),
    "backends": (*ABOVE_BOTH, "streamseg.model"),
}
ALLOWED = {"model": ("streamseg.backends.base",), "backends": ()}  # the graph interface


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports, absolute; `from a import b` counts as `a.b`
    (b may be a submodule or a name in a)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path, layer: str) -> list[str]:
    """`file: module` for each forbidden import in streamseg/<layer>/ under `root`."""
    found = []
    for path in sorted((root / layer).rglob("*.py")):
        package = f"streamseg.{layer}"
        for name in sorted(imported_modules(path, package)):
            if any(_within(name, ok) for ok in ALLOWED[layer]):
                continue
            if any(_within(name, bad) for bad in FORBIDDEN[layer]):
                found.append(f"{path.relative_to(root)}: {name}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_only_import_downward(layer: str) -> None:
    assert violations(PACKAGE, layer) == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "backends").mkdir()
    (tmp_path / "model" / "build.py").write_text(
        "from streamseg.backends.base import SamGraphs\n"
        "def load():\n    from streamseg.backends import select\n"
    )
    (tmp_path / "backends" / "export.py").write_text(
        "from . import base\ndef main():\n    from ..model.build import build_network\n"
        "    import streamseg.assembly\n"
    )
    assert violations(tmp_path, "model") == ["model/build.py: streamseg.backends.select"]
    assert violations(tmp_path, "backends") == [
        "backends/export.py: streamseg.assembly",
        "backends/export.py: streamseg.model.build.build_network",
    ]


def test_cli_export_and_server_load_through_the_assembly() -> None:
    from streamseg import assembly, cli
    from streamseg.server import runtime

    assert runtime.load_model is assembly.load_model
    export = cli.build_parser().parse_args(["export", "--model", "test"])
    assert export.func is assembly.export_main
