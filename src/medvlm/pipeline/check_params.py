"""Stage `check_params`: validate params.yaml before any other stage runs.

DVC deletes a stage's outputs before it runs the stage, so a bad value that only the stage itself would
refuse costs the workspace that stage's outputs (until `dvc checkout`). This stage runs first whenever a
result-shaping param changes; every other stage depends on its marker, whose content never changes, so a
good change re-runs nothing extra and a bad one stops `dvc repro` / `dvc exp run` before anything is removed.
Besides the schema it checks what a stage would otherwise find out late: that `model.name` names a model
config that exists, and that the robust subsets fit the synthetic classification test sets (every other test
set is checked by the robustness stage once it is built). Imports stay light (no torch, no open_clip): it runs on every params change.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medvlm.io import atomic_file
from medvlm.params import Params, ParamsError

MARKER_TEXT = "params.yaml is valid\n"
"""Always the same bytes: the marker changes no stage's inputs."""
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
HF_HUB = "hf-hub:"


def model_config_names() -> set[str]:
    """Model configs open_clip will know: ours and the ones it ships (read from its package folder, not imported)."""
    names = {path.stem for path in SHIPPED_CONFIGS.glob("*.json")}
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        names |= {path.stem for path in (Path(folder) / "model_configs").glob("*.json")}
    return names


def check_params(params: Params) -> None:
    """What the schema cannot see; raise ParamsError naming the key."""
    name = params.model.name
    if not name.startswith(HF_HUB) and name not in model_config_names():
        shipped = sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.json"))
        raise ParamsError(f"model.name: unknown open_clip model config {name!r}; shipped configs: {shipped}")
    robust = params.evaluate.robust
    for task, size_key in (("cls_id", "cls_test"), ("cls_ood", "ood_test")):
        size = getattr(params.data, size_key)
        if getattr(params.data, task).source == "synthetic" and robust.main_n_images > size:
            raise ParamsError(f"evaluate.robust.main_n_images: {robust.main_n_images} is larger than the {task} "
                              f"test set (data.{size_key}: {size})")


def check_params_stage(*, params: Params, out: Path) -> None:
    check_params(params)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(MARKER_TEXT)
