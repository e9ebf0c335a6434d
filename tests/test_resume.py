"""Resumable CLIP training: interrupt (SIGTERM, SIGINT, SIGKILL) and resume, bit-identical to a run that never
stopped; stale checkpoints are discarded and unreadable ones refused."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medvlm.engine import clip_training
from medvlm.engine.checkpoint import STATE_JSON, STATE_TENSORS, TrainingCheckpoints, training_fingerprint
from medvlm.pipeline.surrogate import surrogate_stage
from medvlm.data.pairs import load_pairs
from medvlm.io import DataError, load_tensors
from medvlm.models.clip import WEIGHTS_FILE
from medvlm.params import TrainParams

from stage_scripts import stage_app
from test_clip_training import build_pairs, tiny_params

REPO = Path(__file__).resolve().parents[1]
# 32 train pairs in batches of 8: 4 steps per epoch, 8 in all; a checkpoint every 3 steps.
TRAIN = {"epochs": 2, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 3}
TOTAL_STEPS = 8


def _paths(root: Path) -> dict[str, Path]:
    return {"out": root / "model", "live": root / "live", "metrics": root / "metrics.json",
            "checkpoints": root / "checkpoints"}


def _run_cli(workspace: Path, paths: dict[str, Path]):
    """The surrogate stage script, as DVC runs it, on the workspace's data and params."""
    data_root = workspace / "data"
    return CliRunner().invoke(stage_app("surrogate"), [
        "--params", str(workspace / "params.yaml"), "--data", str(data_root / "raw"), "--data-root", str(data_root),
        *[arg for key, path in paths.items() for arg in (f"--{key}", str(path))]])


def _outputs(paths: dict[str, Path]) -> dict[str, object]:
    """What a finished run leaves: weights, metrics text, and every DVCLive file (curves and summary)."""
    live = {p.relative_to(paths["live"]).as_posix(): p.read_text() for p in sorted(paths["live"].rglob("*"))
            if p.is_file()}
    return {"weights": load_tensors(paths["out"] / WEIGHTS_FILE), "metrics": paths["metrics"].read_text(),
            "live": live}


def _assert_same_run(resumed: dict, uninterrupted: dict) -> None:
    weights, expected = resumed["weights"], uninterrupted["weights"]
    assert weights.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["live"] == uninterrupted["live"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Toy pairs, a params file, and the outputs of one uninterrupted run (in `<root>/uninterrupted`)."""
    root = tmp_path_factory.mktemp("resume")
    build_pairs(root / "data", "raw", n_train=32, n_val=8)
    (root / "params.yaml").write_text(json.dumps(tiny_params(**TRAIN).model_dump(mode="json")))
    os.chdir(root)  # DVCLive looks for a git/DVC repo around the working directory; none here
    paths = _paths(root / "uninterrupted")
    surrogate_stage(params=tiny_params(**TRAIN), data=root / "data" / "raw", data_root=root / "data", **paths)
    assert not paths["checkpoints"].exists(), "a finished run must delete its checkpoint"
    return root


@pytest.fixture(autouse=True)
def _in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)


def _signal_self_at(monkeypatch, signum: int, call: int) -> None:
    """Make the `call`-th loss evaluation send `signum` to this process (as a scheduler pre-empting it)."""
    calls = []

    class SignallingLoss(clip_training.ClipLoss):
        def forward(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                os.kill(os.getpid(), signum)
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(clip_training, "ClipLoss", SignallingLoss)


def _checkpoint_step(folder: Path) -> int:
    return json.loads((folder / STATE_JSON).read_text())["position"]["step"]


def _interrupted_run(workspace: Path, tmp_path: Path, monkeypatch, signum: int, call: int) -> dict[str, Path]:
    paths = _paths(tmp_path)
    _signal_self_at(monkeypatch, signum, call)
    result = _run_cli(workspace, paths)
    monkeypatch.undo()
    assert result.exit_code == 128 + signum, result.output
    assert f"{signal.Signals(signum).name} at step {call}; checkpoint saved" in result.output
    assert not any(paths[key].exists() for key in ("out", "live", "metrics")), "an interrupted run wrote outputs"
    assert _checkpoint_step(paths["checkpoints"]) == call  # the step under way when the signal came is finished
    return paths


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_is_bit_identical(workspace, tmp_path, monkeypatch, caplog):
    paths = _interrupted_run(workspace, tmp_path, monkeypatch, signal.SIGTERM, call=3)
    with caplog.at_level(logging.INFO, logger="medvlm"):
        result = _run_cli(workspace, paths)
    assert result.exit_code == 0, result.output
    assert "resuming from the checkpoint" in caplog.text and "at step 3 (epoch 1, batch 3)" in caplog.text
    _assert_same_run(_outputs(paths), _outputs(_paths(workspace / "uninterrupted")))
    assert not paths["checkpoints"].exists()


def test_sigkill_resumes_from_the_last_periodic_checkpoint_bit_identically(workspace, tmp_path):
    """A real process killed outright after step 7: the checkpoint of step 6 survives, nothing else does."""
    paths = _paths(tmp_path)
    arguments = {key: str(value) for key, value in paths.items()}
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        from medvlm.engine import clip_training
        from medvlm.params import load_params
        from medvlm.pipeline.surrogate import surrogate_stage
        torch.set_num_threads(1)  # as the test process: the thread count can change float sums
        calls = []
        class KilledLoss(clip_training.ClipLoss):
            def forward(self, *args, **kwargs):
                calls.append(1)
                if len(calls) == 8:  # during the 8th step: steps 1-7 done, the last checkpoint is step 6
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().forward(*args, **kwargs)
        clip_training.ClipLoss = KilledLoss
        params = load_params({str(workspace / 'params.yaml')!r})
        surrogate_stage(params=params, data=Path({str(workspace / "data" / "raw")!r}),
                        data_root=Path({str(workspace / "data")!r}),
                        **{{key: Path(value) for key, value in {arguments!r}.items()}})
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(script)], cwd=workspace, env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _checkpoint_step(paths["checkpoints"]) == 6
    assert not any(paths[key].exists() for key in ("out", "live", "metrics"))
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers, "a SIGKILL skips all cleanup: the temporary output folders should still be there"

    surrogate_stage(params=tiny_params(**TRAIN), data=workspace / "data" / "raw", data_root=workspace / "data", **paths)
    _assert_same_run(_outputs(paths), _outputs(_paths(workspace / "uninterrupted")))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the killed run's temporaries remain"


def test_a_checkpoint_of_other_inputs_is_discarded_not_resumed(workspace, tmp_path, monkeypatch, caplog):
    paths = _interrupted_run(workspace, tmp_path, monkeypatch, signal.SIGINT, call=2)
    data_root = tmp_path / "data"
    shutil.copytree(workspace / "data", data_root)
    frame = pd.read_csv(data_root / "raw" / "pretrain.csv")
    frame.loc[0, "caption"] = "bright spot in the lower right field"  # one caption of 40 changed
    frame.to_csv(data_root / "raw" / "pretrain.csv", index=False)
    with caplog.at_level(logging.INFO, logger="medvlm"):
        surrogate_stage(params=tiny_params(**TRAIN), data=data_root / "raw", data_root=data_root, **paths)
    assert "discarding the checkpoint" in caplog.text and "resuming" not in caplog.text
    steps = pd.read_csv(paths["live"] / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")["step"]
    assert steps.tolist() == list(range(TOTAL_STEPS))


def test_the_fingerprint_follows_params_and_inputs_but_not_checkpoint_every(workspace):
    pairs = (load_pairs(workspace / "data" / "raw", workspace / "data", "train"),)
    base = dict(stage="surrogate", seed=0, model={"name": "medvlm-tiny-vit"}, image_size=32, device_type="cpu",
                pairs=pairs, code=[Path(clip_training.__file__)])
    train = TrainParams(**TRAIN)
    reference = training_fingerprint(train=train, **base)
    assert training_fingerprint(train=TrainParams(**{**TRAIN, "checkpoint_every": 7}), **base) == reference
    assert training_fingerprint(train=TrainParams(**{**TRAIN, "lr": 2e-3}), **base) != reference
    assert training_fingerprint(train=train, **{**base, "seed": 1}) != reference
    flipped = pairs[0].images.clone()
    flipped[0, 0, 0] ^= 1  # one bit of one pixel
    other = type(pairs[0])(ids=pairs[0].ids, images=flipped, captions=pairs[0].captions, perturbed=pairs[0].perturbed)
    assert training_fingerprint(train=train, **{**base, "pairs": (other,)}) != reference


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_planted_as_the_checkpoint_is_refused_unread(workspace, tmp_path, monkeypatch):
    paths = _interrupted_run(workspace, tmp_path, monkeypatch, signal.SIGTERM, call=1)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _RunsCode(marker)})
    (paths["checkpoints"] / STATE_TENSORS).write_bytes(payload)
    result = _run_cli(workspace, paths)
    assert result.exit_code == 2, result.output
    assert f"{STATE_TENSORS}: not a readable safetensors file" in result.output
    assert not marker.exists() and not paths["out"].exists()
    pickle.loads(payload)  # the payload is live: unpickled, it does write the marker
    assert marker.exists()


def test_a_checkpoint_folder_without_its_state_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / STATE_JSON).write_text("{not json")
    with pytest.raises(DataError, match="state.json: not valid JSON"):
        TrainingCheckpoints(tmp_path / "checkpoints", every=3, fingerprint="x", stage="surrogate")
