"""Atomic file output, safetensors weights, JSON metrics and path safety.

Stages write every output under a temporary name and rename it into place at the end, so a failed run
leaves nothing half-written for DVC (or a person) to mistake for a result.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import torch
    import pandas as pd


class DataError(ValueError):
    """An input file is missing, corrupt, empty or points somewhere it must not."""


class OutputError(DataError):
    """An output path cannot be written (a read-only folder, a file where a folder must be, a full disk)."""


_TMP_MARK = ".tmp-"


def _temp_prefix(target: Path) -> str:
    # The writer's process id is part of the name, so leftovers of a killed run can be told apart from the
    # temporary output of a run that is still going (see _remove_stale_temporaries).
    return f".{target.name}{_TMP_MARK}{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries beside `target` left by writers that no longer run (a SIGKILL skips every cleanup)."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}{_TMP_MARK}*"):
        pid = leftover.name[len(target.name) + 1 + len(_TMP_MARK):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _prepare_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise OutputError(f"cannot create the output folder {target.parent} for {target}: {reason}") from None
    _remove_stale_temporaries(target)


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` onto `target`. An existing target is first renamed aside (one rename), so the
    moment at which neither exists is two renames long, never the time a recursive delete takes."""
    if not target.exists():
        os.replace(tmp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent)) / "previous"
    os.replace(target, aside)
    os.replace(tmp, target)
    shutil.rmtree(aside.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` whole.

    On any exception the temporary folder is deleted and `target` is left as it was; a process killed outright
    leaves its temporary folder behind, and the next writer of the same target deletes it."""
    target = Path(target)
    _prepare_parent(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {target.parent} (for {target}): {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`."""
    target = Path(target)
    _prepare_parent(target)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write into {target.parent} (for {target}): {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if target.is_dir():
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{target} is a folder; expected a file there")
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


def write_items(path: str | Path, table: pd.DataFrame) -> None:
    """Write a per-item results table as parquet, atomically (compressed, no index: rows are keyed by columns)."""
    if table.empty:
        raise ValueError(f"{path}: refusing to write an empty per-item table")
    with atomic_file(path) as tmp:
        table.to_parquet(tmp, index=False, compression="zstd")


def read_items(path: str | Path) -> pd.DataFrame:
    import pandas as pd  # noqa: PLC0415  (only the stages and the report that read items pay for pandas)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: per-item table not found")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable parquet table ({exc})") from None


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file  # noqa: PLC0415  (imports torch: only stages that save tensors pay it)

    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError  # noqa: PLC0415  (as in save_tensors)
    from safetensors.torch import load_file  # noqa: PLC0415

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
