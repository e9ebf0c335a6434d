"""Presets: override files that hold only the params.yaml keys they change (docs/presets.md).

    python -m medvlm.preset apply presets/x.yaml [--params params.yaml]   # merge into params.yaml in place
    eval "dvc exp run $(python -m medvlm.preset flags presets/x.yaml)"   # or: as `dvc exp run -S` arguments

Both merge the way `dvc exp run -S` does (mappings key by key; any other value, a list included, replaces the
old one) and validate the result as `load_params` would read it before anything is written or printed; a
preset key that neither params.yaml nor the params schema has is refused.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from medvlm.params import Params, ParamsError, params_model, parse_params

EXIT_USER_ERROR = 2


class PresetError(ParamsError):
    """A preset is missing, unreadable, names a key that does not exist, or cannot be passed to `dvc exp run -S`."""


def _round_trip() -> YAML:
    rt = YAML()  # round-trip mode: comments, key order, quoting and number spelling survive a load and dump
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a long line
    return rt


def _parse(text: str, path: Path, *, rt: YAML | None) -> Any:
    """`text` read by `rt` (None: PyYAML, as load_params reads); an empty file is an empty mapping."""
    try:
        data = yaml.safe_load(text) if rt is None else rt.load(text)
    except (yaml.YAMLError, YAMLError) as exc:
        raise PresetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, (Mapping, type(None))):
        raise PresetError(f"{path}: expected a mapping of keys to values at the top level")
    return {} if data is None else data


def _submodel(model: type[BaseModel] | None, key: Any) -> type[BaseModel] | None:
    field = model.model_fields.get(str(key)) if model else None
    annotation = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _merge(target: MutableMapping, override: Mapping, *, model: type[BaseModel] | None, prefix: str,
           preset: Path, params: Path, leaves: list[tuple[str, Any, bool]]) -> MutableMapping:
    """Merge `override` into `target` in place; record each (dotted key, value, key was in params.yaml)."""
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        existed = key in target
        if not existed and not (model and str(key) in model.model_fields):
            allowed = ", ".join(dict.fromkeys([*map(str, target), *(model.model_fields if model else ())]))
            raise PresetError(f"{preset}: unknown key '{dotted}': neither {params} nor the params schema has it "
                              f"(a typo?); keys allowed here: {allowed or 'none'}")
        if isinstance(value, Mapping) and (not existed or isinstance(target[key], MutableMapping)):
            if not existed:
                target[key] = type(target)()
            _merge(target[key], value, model=_submodel(model, key), prefix=f"{dotted}.", preset=preset,
                   params=params, leaves=leaves)
            continue
        slots = getattr(target, "ca", None) and target.ca.items.get(key)
        if slots and len(slots) > 3 and slots[3] == []:
            slots[3] = None  # left by a block list; with it ruamel.yaml garbles the next line after a flow value
        target[key] = value
        leaves.append((dotted, value, existed))
    return target


def _merged(*, preset: Path, params: Path) -> tuple[str, Params, list[tuple[str, Any, bool]]]:
    """params.yaml's text with the preset merged in, that text validated as load_params reads it, and the
    preset's leaves (dotted key, value as load_params reads it, key was in params.yaml)."""
    for path, what in ((params, "params file"), (preset, "preset")):
        if not path.is_file():
            raise PresetError(f"{path}: {what} not found")
    params_text, preset_text = params.read_text(encoding="utf-8"), preset.read_text(encoding="utf-8")
    base = _parse(params_text, params, rt=_round_trip())
    _merge(base, _parse(preset_text, preset, rt=_round_trip()), model=params_model(), prefix="", preset=preset,
           params=params, leaves=[])
    stream = io.StringIO()
    _round_trip().dump(base, stream)
    text, source = stream.getvalue(), f"{params} with {preset} applied"
    try:
        validated = parse_params(yaml.safe_load(text), source=source)
    except yaml.YAMLError as exc:
        raise PresetError(f"{source}: ruamel.yaml wrote invalid YAML ({exc}); nothing written") from None
    leaves: list[tuple[str, Any, bool]] = []  # what the merge must mean: both files read as load_params does
    reference = _merge(_parse(params_text, params, rt=None), _parse(preset_text, preset, rt=None),
                       model=params_model(), prefix="", preset=preset, params=params, leaves=leaves)
    if parse_params(reference, source=source) != validated:
        raise PresetError(f"{source}: ruamel.yaml would change other values on rewriting it; nothing written")
    return text, validated, leaves


def _write_atomic(path: Path, text: str) -> None:
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_preset(*, preset: str | Path, params: str | Path = "params.yaml") -> Params:
    """Merge `preset` into `params` in place (comments and key order kept) and return the validated result.

    Nothing is written unless the merged file validates; the write is atomic."""
    preset, params = Path(preset), Path(params)
    text, validated, _ = _merged(preset=preset, params=params)
    if text != params.read_text(encoding="utf-8"):
        _write_atomic(params, text)
    return validated


_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")  # hydra reads these unquoted as the same string
_HYDRA_WORDS = {"true", "false", "null", "inf", "nan"}  # ... except these, which it reads as bool/None/float


def _hydra_quoted(text: str) -> str:
    """A double-quoted hydra string: backslashes doubled only before a quote or the end, `${` kept literal."""
    text = re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m[1]) + 1) + "${", text)
    text = re.sub(r'(\\*)"', lambda m: "\\" * (2 * len(m[1]) + 1) + '"', text)
    text = re.sub(r"(\\+)$", lambda m: "\\" * (2 * len(m[1])), text)
    return f'"{text}"'


def hydra_value(value: Any) -> str:
    """`value` in the override grammar `dvc exp run -S` parses (hydra's), so that it parses back to `value`."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)  # 3, 0.001, 1e-05, inf, nan: hydra reads each back as the same number
    if isinstance(value, str):
        bare = _BARE.fullmatch(value) and value.lower() not in _HYDRA_WORDS
        return value if bare else _hydra_quoted(value)
    if isinstance(value, list):
        return "[" + ", ".join(hydra_value(item) for item in value) + "]"
    raise PresetError(f"cannot pass a {type(value).__name__} ({value!r}) to dvc exp run -S")


def _check_with_dvc(*, params: Path, preset: Path, overrides: list[str], expected: Params) -> None:
    """Run DVC's own `-S` code on a copy of params.yaml: DVC re-dumps every value by YAML 1.2 rules, which
    load_params (YAML 1.1) may read otherwise (the string 'yes' comes back a boolean)."""
    try:
        from dvc.exceptions import DvcException
        from dvc.utils.hydra import apply_overrides
    except ImportError:  # another DVC layout: the params validation above still holds
        return
    advice = f"use `python -m medvlm.preset apply {preset}` for this preset"
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "params.yaml"
        shutil.copyfile(params, copy)
        try:
            apply_overrides(copy, overrides)
            via_dvc = parse_params(yaml.safe_load(copy.read_text(encoding="utf-8")), source="params.yaml via -S")
        except (DvcException, ParamsError) as exc:
            raise PresetError(f"{preset}: `dvc exp run -S` cannot carry these values: {exc}\n{advice}") from None
    if via_dvc != expected:
        raise PresetError(f"{preset}: `dvc exp run -S` would give other params than `apply` does; {advice}")


def preset_flags(*, preset: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """The preset as `dvc exp run` arguments: ['-S', 'key=value', ...], keys new to params.yaml as '++key'.

    Validated like `apply_preset`, then checked by running DVC's own override code on a copy of params.yaml."""
    preset, params = Path(preset), Path(params)
    _, validated, leaves = _merged(preset=preset, params=params)
    overrides = [f"{'' if existed else '++'}{key}={hydra_value(value)}" for key, value, existed in leaves]
    _check_with_dvc(params=params, preset=preset, overrides=overrides, expected=validated)
    return [arg for override in overrides for arg in ("-S", override)]


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="the params file the preset applies to")


def _or_exit(function: Any, **kwargs: Any) -> Any:
    try:
        return function(**kwargs)
    except ParamsError as exc:  # PresetError included
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


@app.command("apply")
def apply_command(preset: Path, params: Path = PARAMS_OPTION) -> None:
    """Merge PRESET into params.yaml in place (undo: git checkout params.yaml)."""
    _or_exit(apply_preset, preset=preset, params=params)
    typer.echo(f"applied {preset} to {params}", err=True)


@app.command("flags")
def flags_command(preset: Path, params: Path = PARAMS_OPTION) -> None:
    """Print PRESET as shell-quoted `dvc exp run -S` arguments on one line (run them with eval)."""
    typer.echo(" ".join(shlex.quote(arg) for arg in _or_exit(preset_flags, preset=preset, params=params)))


if __name__ == "__main__":
    app()
