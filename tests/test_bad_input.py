"""The bad-input suite: every stage script, given a broken param, file, checkpoint or environment, exits non-zero
with a message naming the culprit and leaves the workspace byte-for-byte as it was (no output written, none
removed).

Each case runs a real stage script (its typer command, in-process) in its own copy of a small workspace that
already holds every stage's outputs. `python tests/test_bad_input.py` runs the cases and prints what each one
prints. test_params.py checks every params rule at the parse level; the params cases here are the
end-to-end representatives of each kind (type, range, misspelt key, unknown name, malformed YAML).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python tests/test_bad_input.py`

from test_clip_training import build_pairs  # noqa: E402
from test_features import build_raw_data  # noqa: E402

from medvlm.pipeline.features import features_stage  # noqa: E402
from medvlm.pipeline.finetune import finetune_stage  # noqa: E402
from medvlm.pipeline.robustness import robustness_stage  # noqa: E402
from medvlm.io import load_tensors, save_tensors, write_json  # noqa: E402
from medvlm.models.clip import WEIGHTS_FILE, create_clip, save_clip  # noqa: E402
from medvlm.params import parse_params  # noqa: E402
from stage_scripts import stage_app

REPO = Path(__file__).resolve().parents[1]
MARKER = "unpickled.marker"
"""Written by the planted pickles if anything ever unpickles them."""

PARAMS = {"seed": 0, "device": "cpu", "data": {"image_size": 32},
          "surrogate": {"epochs": 1, "batch_size": 8, "warmup_steps": 1},
          "pretrain": {"epochs": 1, "batch_size": 8, "warmup_steps": 1},
          "features": {"batch_size": 8}, "heads": {"methods": ["lp"], "lp": {"epochs": 1, "batch_size": 4}},
          "evaluate": {"bootstrap": {"samples": 100},
                       "robust": {"eps_255": [2], "main_eps_255": 2, "steps": 2, "n_images": 3, "main_n_images": 3,
                                  "check_steps": 3, "check_images": 2,
                                  "autoattack": {"n_images": 2, "iterations": 3},
                                  "masking": {"square_images": 2, "square_queries": 10}}}}
PREVIOUS = {"previous": "run"}
"""Content of the metrics files already in the workspace: a failed stage must not touch them."""


def build_workspace(root: Path, clip_dir: Path) -> Path:
    """A workspace laid out like the repo (data/, models/, metrics/, params.yaml) with every stage's outputs."""
    data = root / "data"
    build_raw_data(data)
    build_pairs(data, "raw", n_train=16, n_val=8)
    shutil.copytree(clip_dir, root / "models" / "clip")
    shutil.copytree(clip_dir, root / "models" / "surrogate")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    params = parse_params(PARAMS)
    features_stage(params=params, clip=root / "models" / "clip", data=data / "raw", out=data / "features",
                   data_root=data)
    cwd = Path.cwd()
    os.chdir(root)  # DVCLive looks for a git/DVC repo around the working directory; none here
    try:
        finetune_stage(params=params, method="lp", features=data / "features", out=root / "models" / "heads" / "lp",
                       live=root / "dvclive" / "finetune" / "lp")
    finally:
        os.chdir(cwd)
    robustness_stage(params=params, method="lp", data=data / "raw", features=data / "features",
                     clip=root / "models" / "clip", heads=root / "models" / "heads",
                     out=root / "metrics" / "robustness" / "lp.json", items=root / "items" / "robust" / "lp.parquet",
                     data_root=data)
    shutil.copytree(data / "raw", data / "noisy")
    for name in ("surrogate", "attack", "pretrain", "evaluate"):
        write_json(root / "metrics" / f"{name}.json", PREVIOUS)
    return root


# ---------------------------------------------------------------- ways to break a workspace
def edit_params(**changes: object) -> Callable[[Path], None]:
    """Set dotted keys (`pretrain.epochs`) in params.yaml."""
    def apply(root: Path) -> None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        for dotted, value in changes.items():
            *parents, key = dotted.split(".")
            section = params
            for parent in parents:
                section = section.setdefault(parent, {})
            section[key] = value
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    return apply


def write_text(relative: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).write_text(text)


def delete(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def edit_manifest(kind: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "data" / "raw" / f"{kind}.csv"
        edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    return apply


def set_cell(column: str, value: str, row: int = 0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame
    return edit


def first_image(kind: str, root: Path) -> Path:
    return root / "data" / pd.read_csv(root / "data" / "raw" / f"{kind}.csv")["image"][0]


def truncate_first_image(kind: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = first_image(kind, root)
        path.write_bytes(path.read_bytes()[:60])  # the PNG header and part of the first chunk
    return apply


def garble_first_image(kind: str) -> Callable[[Path], None]:
    return lambda root: first_image(kind, root).write_bytes(b"this is not an image at all" * 10)


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def plant_pickle(relative: str, *, torch_format: bool) -> Callable[[Path], None]:
    """A pickle that would write MARKER when loaded, as a raw pickle or in torch.save's zip format."""
    def apply(root: Path) -> None:
        target = root / relative
        if torch_format:
            torch.save({"state_dict": _RunsCode()}, target)
        else:
            target.write_bytes(pickle.dumps({"state_dict": _RunsCode()}))
    return apply


def truncate(relative: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return apply


def weights_of_another_model(root: Path) -> None:
    torch.manual_seed(0)
    save_clip(create_clip("medvlm-tiny-rn", image_size=32), root / "models" / "other")
    shutil.copy(root / "models" / "other" / WEIGHTS_FILE, root / "models" / "clip" / WEIGHTS_FILE)
    shutil.rmtree(root / "models" / "other")


def nan_in_clip_weights(root: Path) -> None:
    path = root / "models" / "clip" / WEIGHTS_FILE
    weights = load_tensors(path)
    weights["visual.proj"] = torch.full_like(weights["visual.proj"], float("nan"))
    save_tensors(path, weights)


def nan_in_cached_features(root: Path) -> None:
    path = root / "data" / "features" / "cls_id_train.safetensors"
    tensors = load_tensors(path)
    tensors["x"][0] = float("nan")
    save_tensors(path, tensors)


def block_output_folder(relative: str) -> Callable[[Path], None]:
    """Make the output's parent a regular file, so its folder cannot be created (works as root, too)."""
    return lambda root: (root / relative).write_text("a file where the output folder must go\n")


# ---------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    name: str
    stage: str
    breakage: Callable[[Path], None]
    expect: str
    """A fragment of the message that names the culprit."""
    args: tuple[str, ...] = ()


PRETRAIN_ON_RAW = ("--data", "data/raw")  # pretrain reads data/noisy by default; raw has the same layout
CASES = [
    # params
    Case("params: wrong type", "pretrain", edit_params(**{"pretrain.epochs": "many"}),
         "pretrain.epochs: Input should be a valid integer", PRETRAIN_ON_RAW),
    Case("params: out of range", "attack", edit_params(noise_ratio=1.5), "noise_ratio: Input should be less than 1"),
    Case("params: negative checkpoint_every", "surrogate", edit_params(**{"surrogate.checkpoint_every": -1}),
         "surrogate.checkpoint_every: Input should be greater than or equal to 0"),
    Case("params: misspelt key", "surrogate", edit_params(**{"surrogate.learning_rate": 0.1}),
         "surrogate.learning_rate: unknown key; allowed keys here: epochs, batch_size, lr"),
    Case("params: unknown model name", "surrogate", edit_params(**{"model.name": "medvlm-huge"}),
         "model.name: unknown open_clip model config 'medvlm-huge'"),
    Case("params: unknown head method", "finetune", edit_params(**{"heads.methods": ["lp", "svm"]}),
         "heads.methods: unknown head method(s) ['svm']; registered: ['lp', 'mlp', 'nmtune', 'ran']", ("--method", "lp")),
    Case("params: malformed YAML", "download", write_text("params.yaml", "seed: [0, 1\ndata: {image_size: 32\n"),
         "params.yaml: not valid YAML"),
    Case("params: file missing", "evaluate", delete("params.yaml"), "params.yaml: params file not found"),
    # files
    Case("manifest missing", "features", delete("data/raw/cls_id.csv"), "cls_id.csv: manifest not found"),
    Case("manifest empty", "features", write_text("data/raw/cls_ood.csv", ""), "cls_ood.csv: unreadable manifest"),
    Case("manifest lacks a column", "features", edit_manifest("cls_id", lambda f: f.drop(columns=["label"])),
         "cls_id.csv: missing columns ['label']"),
    Case("manifest points outside data/", "features", edit_manifest("vqa", set_cell("image", "../../etc/passwd")),
         "vqa.csv, row 2: path '../../etc/passwd' points outside the data folder"),
    Case("manifest has an empty split", "features", edit_manifest("vqa", lambda f: f.assign(split="train")),
         "vqa.csv: split 'test' is empty"),
    Case("manifest names an unknown label", "features", edit_manifest("cls_id", set_cell("label", "fracture")),
         "has label 'fracture', which is not among the labels in meta.json"),
    Case("caption empty", "surrogate", edit_manifest("pretrain", set_cell("caption", " ")),
         "pretrain.csv: empty caption for id(s) ['0000']"),
    Case("image file missing", "features", lambda root: first_image("cls_ood", root).unlink(),
         "000.png: image file not found"),
    Case("image truncated", "surrogate", truncate_first_image("pretrain"), "0000.png: unreadable or truncated image"),
    Case("image unreadable", "features", garble_first_image("cls_id"), "000.png: unreadable or truncated image"),
    Case("meta.json missing", "features", delete("data/raw/meta.json"), "meta.json: file not found"),
    Case("cached features truncated", "finetune", truncate("data/features/cls_id_train.safetensors"),
         "cls_id_train.safetensors: not a readable safetensors file", ("--method", "lp")),
    Case("head missing", "evaluate", delete("models/heads/lp/vqa.json"), "vqa.json: file not found"),
    Case("CLIP weights missing", "robustness", delete(f"models/clip/{WEIGHTS_FILE}"),
         f"models/clip/{WEIGHTS_FILE}: file not found", ("--method", "lp", "--out", "metrics/robustness/lp.json",
                                                      "--items", "items/robust/lp.parquet")),
    # checkpoints and weights
    Case("pickle planted as CLIP weights", "features", plant_pickle(f"models/clip/{WEIGHTS_FILE}", torch_format=False),
         f"{WEIGHTS_FILE}: not a readable safetensors file"),
    Case("torch.save zip planted as surrogate weights", "attack",
         plant_pickle(f"models/surrogate/{WEIGHTS_FILE}", torch_format=True),
         f"{WEIGHTS_FILE}: not a readable safetensors file"),
    Case("weights truncated", "features", truncate(f"models/clip/{WEIGHTS_FILE}"),
         f"{WEIGHTS_FILE}: not a readable safetensors file"),
    Case("weights of another model", "features", weights_of_another_model,
         f"{WEIGHTS_FILE}: weights do not match medvlm-tiny-vit"),
    Case("training checkpoint unreadable", "surrogate",
         lambda root: (root / "checkpoints" / "surrogate").mkdir(parents=True) or
         (root / "checkpoints" / "surrogate" / "state.json").write_text("{half a checkpoint"),
         "checkpoints/surrogate/state.json: not valid JSON"),
    # numbers
    Case("absurd learning rate", "surrogate", edit_params(**{"surrogate.lr": 1e30}),
         "surrogate: contrastive loss became nan at step"),
    Case("NaN in the CLIP weights", "features", nan_in_clip_weights,
         "features: cls_id_train x has non-finite values in 6 row(s)"),
    Case("NaN in the cached features", "finetune", nan_in_cached_features,
         "finetune lp: cls_id/ce loss became nan at step 0", ("--method", "lp")),
    # environment
    Case("output folder cannot be created", "features", block_output_folder("blocked"),
         "cannot create the output folder blocked for blocked/features: blocked is a file, not a folder",
         ("--out", "blocked/features")),
    Case("metrics folder cannot be created", "surrogate", block_output_folder("reports"),
         "reports for reports/surrogate.json: reports is a file, not a folder",
         ("--metrics", "reports/surrogate.json")),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(case: Case, template: Path, work: Path) -> tuple[int, str, dict[str, bytes], dict[str, bytes]]:
    """Copy the template to `work`, break it, run the stage there; (exit code, output, files before, after)."""
    shutil.copytree(template, work)
    case.breakage(work)
    before = snapshot(work)
    cwd = Path.cwd()
    os.chdir(work)  # the stage scripts' default paths are relative to the repo root
    try:
        result = CliRunner().invoke(stage_app(case.stage), ["--params", "params.yaml", *case.args])
    finally:
        os.chdir(cwd)
    return result.exit_code, result.output, before, snapshot(work)


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_clip_dir) -> Path:
    return build_workspace(tmp_path_factory.mktemp("bad_input") / "workspace", tiny_clip_dir)


def test_the_suite_covers_every_stage_and_kind_of_culprit():
    assert len(CASES) >= 20
    assert {case.stage for case in CASES} == {"download", "surrogate", "attack", "pretrain", "features", "finetune",
                                              "robustness", "evaluate"}
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_non_zero_names_the_culprit_and_writes_nothing(case, template, tmp_path):
    exit_code, output, before, after = run_case(case, template, tmp_path / "work")
    assert exit_code == 2, f"exit {exit_code}:\n{output}"
    assert "error: " in output and case.expect in output, output
    assert "Traceback" not in output
    assert after == before, (f"the failed stage changed files: added {sorted(after.keys() - before.keys())}, "
                             f"removed {sorted(before.keys() - after.keys())}, changed "
                             f"{sorted(k for k in after.keys() & before.keys() if after[k] != before[k])}")
    assert not (tmp_path / "work" / MARKER).exists(), "a planted pickle was unpickled"


def main() -> None:
    """Run every case and print what the stage printed (for the docs and the issue's closing note)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        clip_dir = Path(tmp) / "tiny_clip"
        save_clip(create_clip("medvlm-tiny-vit", image_size=32), clip_dir)
        template = build_workspace(Path(tmp) / "workspace", clip_dir)
        for number, case in enumerate(CASES, start=1):
            exit_code, output, before, after = run_case(case, template, Path(tmp) / f"case{number}")
            message = " ".join(output[output.rfind("error: "):].split())  # without the progress bars before it
            message = message if len(message) <= 300 else message[:297] + "..."
            untouched = "untouched" if before == after else "CHANGED"
            print(f"{number:2d}. [{case.stage}] {case.name}: exit {exit_code}, files {untouched}\n    {message}")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # the stages' own log lines would bury the table
    main()
