"""Atomic file output, safetensors weights, JSON metrics and path safety.

Stages write every output under a temporary name and rename it into place at the end, so a failed run
leaves nothing half-written for DVC (or a person) to mistake for a result.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class DataError(ValueError):
    """An input file is missing, corrupt, empty or points somewhere it must not."""


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def _check_finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"metric {where or '<root>'} is {obj}; refusing to write a non-finite number")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))


def write_json(path: str | Path, payload: Mapping[str, Any], *, allow_nonfinite: bool = False) -> None:
    """Write JSON atomically (sorted keys, stable for git diffs)."""
    if not allow_nonfinite:
        _check_finite(payload)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors (no pickle), atomically."""
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None


def resolve_inside(root: str | Path, relative: str) -> Path:
    """Resolve a manifest path against `root`, refusing absolute paths and anything escaping `root`."""
    root = Path(root).resolve()
    if not isinstance(relative, str) or not relative:
        raise DataError(f"empty or non-text path {relative!r} in a manifest")
    candidate = Path(relative)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root):
        raise DataError(f"path {relative!r} points outside the data folder {root}")
    return resolved
