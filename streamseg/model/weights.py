"""Checkpoints: download on first use into a cache, verified and renamed atomically,
so a partial or corrupt file is never loaded."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from streamseg.model.registry import ModelVariant

CHUNK = 1 << 20


class WeightsError(RuntimeError):
    pass


class ChecksumMismatchError(WeightsError):
    pass


class DownloadError(WeightsError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("STREAMSEG_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "streamseg"


def _offline_advice(variant: ModelVariant, target: Path) -> str:
    return (
        f"To run without downloading: pass a local checkpoint with "
        f"`--weights /path/to/{variant.checkpoint_file}`, or copy the file to {target}, "
        f"or use `--weights random` for an offline smoke run (not real segmentation)."
    )


def expected_sha256(variant: ModelVariant) -> str | None:
    return os.environ.get(f"STREAMSEG_SHA256_{variant.name.upper()}") or variant.sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, expected: str | None) -> bool:
    """True when `path` matches; the result is remembered in a sidecar so a restart
    does not rehash a large file."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        recorded = sidecar.read_text().strip()
        if expected is None or recorded == expected:
            return True
    actual = _sha256_file(path)
    if expected is not None and actual != expected:
        return False
    sidecar.write_text(actual + "\n")
    return True


def ensure_checkpoint(
    variant: ModelVariant,
    *,
    cache: Path | None = None,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Return the verified local checkpoint of `variant`, downloading it if needed."""
    if variant.checkpoint_file is None:
        raise WeightsError(
            f"model {variant.name!r} has no official checkpoint; use --weights random"
        )
    folder = (cache or cache_dir()) / "checkpoints"
    target = folder / variant.checkpoint_file
    expected = expected_sha256(variant)
    if target.is_file():
        if _verified(target, expected):
            return target
        raise ChecksumMismatchError(
            f"{target} does not match the expected sha256 {expected}; delete it to download again"
        )
    source = url or _official_url(variant)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{variant.checkpoint_file}.partial.{os.getpid()}"
    try:
        actual = _download(source, partial, timeout, progress, variant, target)
        if expected is not None and actual != expected:
            raise ChecksumMismatchError(
                f"download of {source} has sha256 {actual}, expected {expected}; "
                "the file was discarded. " + _offline_advice(variant, target)
            )
        if expected is None:
            print(
                f"streamseg: no published sha256 is pinned for {variant.name}; pinned the "
                f"downloaded file's sha256 {actual} (set STREAMSEG_SHA256_{variant.name.upper()} "
                "to enforce a value)"
            )
        os.replace(partial, target)
        target.with_name(target.name + ".sha256").write_text(actual + "\n")
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def _official_url(variant: ModelVariant) -> str:
    assert variant.checkpoint_url is not None
    base = os.environ.get("STREAMSEG_WEIGHTS_BASE_URL")
    if base and variant.checkpoint_file:
        return f"{base.rstrip('/')}/{variant.checkpoint_file}"
    return variant.checkpoint_url


def _download(
    url: str, partial: Path, timeout: float, progress: bool, variant: ModelVariant, target: Path
) -> str:
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                partial.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=variant.checkpoint_file,
                    disable=not progress,
                ) as bar,
            ):
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"downloading {url} failed: HTTP {exc.code} {exc.reason}. "
            + _offline_advice(variant, target)
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"downloading {url} failed after {received} bytes: {reason}. "
            + _offline_advice(variant, target)
        ) from None
    if total is not None and received != total:
        raise DownloadError(
            f"downloading {url} was cut off: {received} of {total} bytes. "
            + _offline_advice(variant, target)
        )
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class WeightsChoice:
    kind: Literal["official", "random", "file"]
    path: Path | None
    label: str


def resolve_weights(spec: str, variant: ModelVariant) -> WeightsChoice:
    """Interpret `--weights`; nothing is downloaded here."""
    if spec == "random":
        return WeightsChoice("random", None, "random (seeded) - NOT real weights")
    if spec == "official":
        if variant.checkpoint_file is None:
            raise WeightsError(
                f"model {variant.name!r} has random weights only; use --weights random"
            )
        return WeightsChoice("official", None, f"official {variant.checkpoint_file}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights {spec!r} is neither 'official', 'random' nor an existing checkpoint file"
        )
    return WeightsChoice("file", path, f"file {path.name}")
