"""Atomic outputs: a stage killed outright in the middle of writing leaves the previous output untouched (never a
partial one), and the next run of the stage removes what the killed one left in its temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medvlm.pipeline.download import download_stage
from medvlm.io import atomic_dir, atomic_file, OutputError
from medvlm.params import parse_params

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "pretrain_train": 8, "pretrain_val": 8, "cls_train": 8, "cls_test": 8, "ood_test": 8,
        "vqa_train": 8, "vqa_test": 8}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_download_killed_mid_write_leaves_the_previous_output(tmp_path):
    out = tmp_path / "data" / "raw"
    download_stage(params=parse_params({"seed": 0, "data": TINY}), out=out)
    previous = snapshot(out)

    params_file = tmp_path / "params.yaml"  # another seed and far more images: a run that is still writing
    params_file.write_text(yaml.safe_dump({"seed": 1, "data": {**TINY, "pretrain_train": 20000}}))
    writer = subprocess.Popen([sys.executable, str(REPO / "stages" / "download.py"), "--params", str(params_file),
                               "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        started: list[Path] = []
        while not started and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            started = list(out.parent.glob(".raw.tmp-*"))
        time.sleep(0.5)  # well inside the 20,000 images (seconds of work), before their packs are written
        assert started and writer.poll() is None, "the download stage never got to writing"
        writer.send_signal(signal.SIGKILL)  # no handler, no cleanup: the harshest pre-emption
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    assert snapshot(out) == previous, "the killed run changed the previous output"
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "raw"]
    assert leftovers and all(name.startswith(f".raw.tmp-{writer.pid}-") for name in leftovers)

    download_stage(params=parse_params({"seed": 0, "data": TINY}), out=out)  # the next run cleans up after it
    assert [p.name for p in out.parent.iterdir()] == ["raw"]
    assert snapshot(out) == previous


def test_temporaries_of_a_running_writer_are_left_alone(tmp_path):
    target = tmp_path / "features"
    with atomic_dir(target) as first_tmp:
        (first_tmp / "a.txt").write_text("still being written")
        with atomic_file(tmp_path / "features.json") as other:  # another output beside it
            other.write_text("{}")
        assert first_tmp.is_dir()  # this process is alive: its temporary folder is not stale
    assert (target / "a.txt").read_text() == "still being written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "features.json"]


def test_an_output_where_a_file_blocks_the_folder_is_a_clear_error(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot create the output folder .*models"):
        with atomic_dir(tmp_path / "models" / "clip"):
            pass
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(OutputError, match="metrics.json is a folder"):
        with atomic_file(tmp_path / "metrics.json") as tmp:
            tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "models"]


def test_a_replaced_output_is_never_missing_for_longer_than_two_renames(tmp_path, monkeypatch):
    """The old folder is renamed aside before the new one is renamed in, not deleted first."""
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    calls = []
    real_replace = os.replace

    def recording_replace(source, destination):
        calls.append((Path(source).name, Path(destination).name, Path(target / "v").exists()))
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", recording_replace)
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert [(dst, existed) for _, dst, existed in calls] == [("previous", True), ("out", False)]
    assert (target / "v").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["out"]
