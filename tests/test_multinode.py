"""Several machines: the pretrain stage run as two torchrun "nodes" (c10d rendezvous on 127.0.0.1, gloo)
gives the one-process loss curve, and only the node DVC runs the stage on writes outputs; and the params
that set it up are validated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch.multiprocessing as mp
import yaml

from medvlm.engine.distributed import DVC_STAGE_ENV, torchrun_command
from medvlm.io import read_json
from medvlm.params import ParamsError, parse_params
from medvlm.pipeline.pretrain import pretrain_stage
from medvlm.runtime import TrainingError

from multinode_child import agree
from test_clip_training import SIZE, build_pairs

REPO = Path(__file__).resolve().parents[1]
LOSS_TOLERANCE = 1e-5
"""As in test_distributed.py: two processes differ from one only in the order of float sums."""


def _params(**train: object) -> dict:
    # The ViT tower (LayerNorm only): gloo has no synchronised batch norm (docs/scaling.md).
    section = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, **train}
    return {"seed": 0, "device": "cpu", "data": {"image_size": SIZE}, "model": {"name": "medvlm-tiny-vit"},
            "pretrain": section}


def _outputs(folder: Path) -> dict[str, Path]:
    return {"out": folder / "model", "live": folder / "live", "metrics": folder / "metrics.json"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _curve(outputs: dict[str, Path]) -> pd.DataFrame:
    return pd.read_csv(outputs["live"] / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")


def _own_name_resolves() -> bool:
    """torchrun gives the other machines this host's fully qualified name as the workers' master address."""
    try:
        socket.gethostbyname(socket.getfqdn())
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _own_name_resolves(), reason="this machine's own host name does not resolve, which torchrun's "
                    "multi-node rendezvous needs (add it to /etc/hosts)")
def test_two_machines_give_the_one_process_loss_curve_and_one_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a repo around the working directory
    data_root = tmp_path / "data"
    # 48 pairs, global batch 16: three batches per epoch, 8 pairs on each machine.
    build_pairs(data_root, "noisy", n_train=48, n_val=8)
    one = _outputs(tmp_path / "one")

    # Both machines run the same stage command with the same params; each has its own output paths here, as
    # machines without a shared filesystem would. DVC runs the stage on machine "dvc" (it sets DVC_STAGE).
    # The helper's torchrun starts first: the rendezvous orders machines by host, then by the torchrun
    # process id, so the helper becomes global rank 0, and the writer must still be the DVC machine's rank.
    params_file = tmp_path / "params.yaml"
    endpoint = f"127.0.0.1:{_free_port()}"
    params_file.write_text(yaml.safe_dump(_params(nnodes=2, nproc=1, rdzv_endpoint=endpoint)))
    base_env = {key: value for key, value in os.environ.items() if key != DVC_STAGE_ENV}
    base_env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    machines, logs = {}, {"helper": "", "dvc": ""}
    try:
        for name, extra in (("helper", {}), ("dvc", {DVC_STAGE_ENV: "pretrain"})):
            outputs = _outputs(tmp_path / name)
            command = [sys.executable, str(REPO / "stages" / "pretrain.py"), "--params", str(params_file),
                       "--data", str(data_root / "noisy"), "--data-root", str(data_root),
                       "--checkpoints", str(tmp_path / name / "checkpoints"),
                       *(arg for key, path in outputs.items() for arg in (f"--{key}", str(path)))]
            process = subprocess.Popen(command, env={**base_env, **extra}, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
            machines[name] = (process, outputs)
            if name == "dvc":
                continue
            # One process on the same global batch, while the helper starts up.
            pretrain_stage(params=parse_params(_params()), data=data_root / "noisy", data_root=data_root, **one)
            while "launching" not in logs[name]:  # until the helper's torchrun is started
                line = process.stdout.readline()
                if not line:
                    break
                logs[name] += line
        for name, (process, _) in machines.items():
            logs[name] += process.communicate(timeout=180)[0]
    finally:
        for process, _ in machines.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for name, (process, _) in machines.items():
        assert process.returncode == 0, f"{name}:\n{logs.get(name)}"
    assert "2 training processes (gloo backend), global batch 16, 8 per process" in logs["dvc"] + logs["helper"]
    assert "--rdzv-backend=c10d" in logs["dvc"] and "--rdzv-id=medvlm-pretrain" in logs["helper"]
    writer_lines = [line for text in logs.values() for line in text.splitlines() if "it writes the outputs" in line]
    assert len(writer_lines) == 1 and writer_lines[0] in logs["dvc"], writer_lines
    assert "rank 1 of 2 is local rank 0 of machine 1" in writer_lines[0]  # global rank 0 is the helper

    dvc = machines["dvc"][1]
    one_curve, two_curve = _curve(one), _curve(dvc)
    assert two_curve["step"].tolist() == one_curve["step"].tolist() == list(range(6))
    assert (two_curve["loss"] - one_curve["loss"]).abs().max() < LOSS_TOLERANCE, (one_curve, two_curve)
    assert one_curve["loss"].iloc[-1] != one_curve["loss"].iloc[0]  # it trained
    assert read_json(dvc["metrics"])["final_train_loss"] == pytest.approx(read_json(one["metrics"])["final_train_loss"],
                                                                         abs=LOSS_TOLERANCE)
    # One process wrote, atomically; the helper machine wrote nothing at all (no checkpoints either).
    assert sorted(p.name for p in (tmp_path / "dvc").iterdir()) == ["live", "metrics.json", "model"]
    assert not (tmp_path / "helper").exists()


def test_several_machines_need_a_valid_rendezvous_endpoint():
    with pytest.raises(ParamsError, match=r"surrogate\.rdzv_endpoint: required when surrogate\.nnodes > 1 \(2\)"):
        parse_params({"surrogate": {"epochs": 1, "nnodes": 2}})
    with pytest.raises(ParamsError, match=r"pretrain\.rdzv_endpoint: required when pretrain\.nnodes > 1 \(3\)"):
        parse_params({"pretrain": {"epochs": 1, "batch_size": 96, "nnodes": 3}})
    for bad in ("node001", "node001:", ":29500", "node001:port", "node001:0", "node001:70000", "a b:1", "h:1:2"):
        with pytest.raises(ParamsError, match=r"pretrain\.rdzv_endpoint: must be host:port .*\(got '"):
            parse_params({"pretrain": {"epochs": 1, "nnodes": 2, "rdzv_endpoint": bad}})
    with pytest.raises(ParamsError, match=r"surrogate\.nnodes: Input should be greater than or equal to 1"):
        parse_params({"surrogate": {"epochs": 1, "nnodes": 0}})
    for good in ("127.0.0.1:29500", "node001.cluster:1", "[::1]:29400", "gpu-07:65535"):
        train = parse_params({"pretrain": {"epochs": 1, "nnodes": 2, "rdzv_endpoint": good}}).pretrain
        assert (train.nnodes, train.rdzv_endpoint, train.world_size) == (2, good, 2)
    # One machine needs no endpoint (and ignores one).
    assert parse_params({"pretrain": {"epochs": 1, "rdzv_endpoint": "h:1"}}).pretrain.world_size == 1


def test_the_global_batch_splits_over_every_process_of_every_machine():
    with pytest.raises(ParamsError, match=r"pretrain: batch_size \(12\) must be a multiple of nnodes x nproc "
                                          r"\(2 x 4 = 8 training processes\)"):
        parse_params({"pretrain": {"epochs": 1, "batch_size": 12, "nnodes": 2, "nproc": 4, "rdzv_endpoint": "h:1"}})
    train = parse_params({"pretrain": {"epochs": 1, "batch_size": 16, "nnodes": 2, "nproc": 4,
                                       "rdzv_endpoint": "h:1"}}).pretrain
    assert train.world_size == 8


def test_torchrun_options_for_one_and_several_machines():
    assert torchrun_command(2, ["stages/pretrain.py", "--out", "x"])[3:] == [
        "--standalone", "--nproc-per-node=2", "stages/pretrain.py", "--out", "x"]
    assert torchrun_command(4, ["stages/pretrain.py"], nnodes=2, rdzv_endpoint="node001:29500",
                            rdzv_id="medvlm-pretrain")[1:] == [
        "-m", "torch.distributed.run", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node001:29500",
        "--rdzv-id=medvlm-pretrain", "--nproc-per-node=4", "stages/pretrain.py"]
    with pytest.raises(TrainingError, match="needs rdzv_endpoint"):
        torchrun_command(1, ["stages/pretrain.py"], nnodes=2)


def test_machines_with_other_params_data_or_code_are_refused_on_every_rank():
    refusal = "pretrain: training processes [1] see other params, data or code than rank 0"
    for fingerprints, refused in ((["same", "same"], ""), (["same", "other"], refusal)):
        errors = mp.get_context("spawn").SimpleQueue()
        mp.spawn(agree, args=(_free_port(), fingerprints, errors), nprocs=len(fingerprints))
        found = sorted(errors.get() for _ in fingerprints)
        assert errors.empty() and [rank for rank, _ in found] == [0, 1]
        assert all(message.startswith(refused) and bool(message) == bool(refused) for _, message in found), found
