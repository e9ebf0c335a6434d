"""Several training processes (torchrun, DDP, gloo on CPU) and the device input path of the CLIP loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from medvlm.engine.clip_training import epoch_batches, steps_per_epoch
from medvlm.pipeline.surrogate import surrogate_stage
from medvlm.engine.device_input import device_batches
from medvlm.engine.distributed import Workers, relaunch_under_torchrun
from medvlm.io import load_tensors, read_json
from medvlm.models.clip import WEIGHTS_FILE
from medvlm.params import ParamsError, parse_params
from medvlm.runtime import TrainingError, enable_fast_cuda_math

from test_clip_training import SIZE, build_pairs

REPO = Path(__file__).resolve().parents[1]

LOSS_TOLERANCE = 1e-5
"""Per-step loss, 2 processes vs 1 (absolute, float32): the two differ only in the order of float sums
(gathered features, gradients averaged by DDP); measured differences are ~3e-7."""


def _surrogate_params(nproc: int) -> dict:
    # The ViT tower: LayerNorm only. The ResNet tower's batch norm cannot be synchronised on CPU (gloo), so
    # its per-rank statistics would differ from one process's by design (docs/scaling.md).
    return {"seed": 0, "device": "cpu", "data": {"image_size": SIZE}, "model": {"name": "medvlm-tiny-vit"},
            "surrogate": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "nproc": nproc}}


def _outputs(folder: Path) -> dict[str, Path]:
    return {"out": folder / "model", "live": folder / "live", "metrics": folder / "metrics.json"}


def test_two_gloo_processes_give_the_one_process_loss_curve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a repo around the working directory
    data_root = tmp_path / "data"
    # 48 pairs, batch 16: three full global batches per epoch, 8 pairs per process.
    build_pairs(data_root, "raw", n_train=48, n_val=8, meta={"source": "toy", "image_size": SIZE, "labels": []})
    one = _outputs(tmp_path / "one")
    surrogate_stage(params=parse_params(_surrogate_params(1)), data=data_root / "raw", data_root=data_root, **one)

    # Two processes the way DVC runs the stage: the script sees nproc 2 and re-runs itself under torchrun.
    params_file = tmp_path / "params2.yaml"
    params_file.write_text(yaml.safe_dump(_surrogate_params(2)))
    two = _outputs(tmp_path / "two")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        [sys.executable, str(REPO / "stages" / "surrogate.py"), "--params", str(params_file),
         "--data", str(data_root / "raw"), "--data-root", str(data_root),
         *(arg for key, path in two.items() for arg in (f"--{key}", str(path)))],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "2 training processes (gloo backend), global batch 16, 8 per process" in finished.stderr

    curve = lambda run: pd.read_csv(run["live"] / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")  # noqa: E731
    one_curve, two_curve = curve(one), curve(two)
    assert two_curve["step"].tolist() == one_curve["step"].tolist() == list(range(6))
    assert (two_curve["loss"] - one_curve["loss"]).abs().max() < LOSS_TOLERANCE, (one_curve, two_curve)
    assert one_curve["loss"].iloc[-1] != one_curve["loss"].iloc[0]  # it trained: the curve is not flat
    # Every step's loss is computed from the weights the previous steps left, so the curve tracks the weights.
    assert load_tensors(one["out"] / WEIGHTS_FILE).keys() == load_tensors(two["out"] / WEIGHTS_FILE).keys()
    assert read_json(two["metrics"])["n_train"] == 48
    # Rank 0 alone wrote, through atomic folders: no second copy, no temporary folder left behind.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["live", "metrics.json", "model"]


def test_the_last_batch_is_cut_to_equal_slices_and_steps_agree():
    generator = torch.Generator().manual_seed(0)
    batches = epoch_batches(37, 8, generator, processes=4)  # 4 full batches + 5 left -> 4 kept
    assert [len(b) for b in batches] == [8, 8, 8, 8, 4]
    assert steps_per_epoch(37, 8, processes=4) == 5
    assert [len(b) for b in epoch_batches(34, 8, generator, processes=4)] == [8, 8, 8, 8]  # 2 left: < 4
    assert steps_per_epoch(34, 8, processes=4) == 4
    assert steps_per_epoch(34, 8) == 5  # one process keeps a last batch of 2

    global_batch = torch.arange(8)
    slices = [Workers(rank=rank, world_size=4).shard(global_batch) for rank in range(4)]
    assert torch.equal(torch.cat(slices), global_batch)  # contiguous, in rank order: gathering restores it


def test_one_process_needs_no_process_group():
    workers, model = Workers(), torch.nn.Linear(2, 2)
    assert not workers.distributed and workers.is_main
    assert workers.wrap(model, torch.device("cpu")) is model
    assert workers.clip_loss_options() == {}
    value = torch.tensor(1.5)
    assert workers.mean(value) is value
    assert Workers(rank=1, world_size=2).clip_loss_options() == {
        "local_loss": True, "gather_with_grad": True, "rank": 1, "world_size": 2}


def test_nproc_must_divide_the_batch():
    with pytest.raises(ParamsError, match=r"pretrain: batch_size \(130\) must be a multiple of nproc \(4\)"):
        parse_params({"pretrain": {"epochs": 1, "batch_size": 130, "nproc": 4}})
    with pytest.raises(ParamsError, match="surrogate.nproc: Input should be greater than or equal to 1"):
        parse_params({"surrogate": {"epochs": 1, "nproc": 0}})
    assert parse_params({"pretrain": {"epochs": 1, "batch_size": 128, "nproc": 4}}).pretrain.nproc == 4


def test_relaunch_needs_a_stage_script(tmp_path):
    with pytest.raises(TrainingError, match="needs the stage to be started as a script"):
        relaunch_under_torchrun(2, argv=["-c"])
    with pytest.raises(TrainingError, match="needs the stage to be started as a script"):
        relaunch_under_torchrun(2, argv=[str(tmp_path / "missing.py")])


def test_cpu_batches_are_the_indexed_rows_as_unit_floats():
    images = torch.randint(0, 256, (10, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tokens = torch.arange(30).view(10, 3)
    batches = [torch.tensor([3, 1]), torch.tensor([9, 0, 5])]
    got = list(device_batches(images, tokens, batches, torch.device("cpu")))
    assert len(got) == 2
    for index, (pixels, batch_tokens) in zip(batches, got):
        assert pixels.shape == (len(index), 1, 4, 4) and pixels.dtype == torch.float32
        assert torch.equal(pixels[:, 0], images[index].float() / 255)
        assert torch.equal(batch_tokens, tokens[index])


def test_fast_cuda_math_only_on_cuda():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        enable_fast_cuda_math(torch.device("cpu"))
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
                    or torch.backends.cudnn.benchmark)
        enable_fast_cuda_math(torch.device("cuda"))  # only flags: no GPU needed to set them
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags
