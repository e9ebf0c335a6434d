"""The study grid: names, order, and what is queued again (nothing already saved in the study)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvlm.report import sweep
from medvlm.report.sweep import GridPoint, queue_grid, study_grid


def test_grid_is_seed_major_with_the_random_control_and_dot_free_names():
    points = study_grid(seeds=[0, 1], ratios=[0.0, 0.1], random_ratios=[0.3])
    assert [point.name for point in points] == ["study-s0-r0", "study-s0-r0p1", "study-s0-r0p3-random",
                                                "study-s1-r0", "study-s1-r0p1", "study-s1-r0p3-random"]
    assert GridPoint(2, 0.3, "random").settings() == ["seed=2", "noise_ratio=0.3", "noise_kind=random"]


def test_points_already_saved_or_queued_are_not_queued_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(sweep, "_dvc", lambda repo, *args: calls.append(args) or "")
    monkeypatch.setattr(sweep, "_queue_status", lambda repo: [{"name": "study-s0-r0p1", "status": "Queued"}])
    (tmp_path / "study" / "runs" / "study-s0-r0").mkdir(parents=True)
    points = study_grid(seeds=[0], ratios=[0.0, 0.1, 0.3], random_ratios=[])
    queued = queue_grid(repo=tmp_path, study=tmp_path / "study", points=points,
                        overrides=["evaluate.robust.main_n_images=600"])
    assert queued == ["study-s0-r0p3"]
    assert calls == [("exp", "run", "--queue", "-n", "study-s0-r0p3", "-S", "seed=0", "-S", "noise_ratio=0.3",
                      "-S", "noise_kind=adversarial", "-S", "evaluate.robust.main_n_images=600")]


def test_queue_status_rows_are_read_from_dvc_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    table = ("Task     Name            Created    Status\n"
             "1f2e3d4  study-s0-r0     01:02 PM   Success\n"
             "5a6b7c8  study-s0-r0p3   01:03 PM   Running\n"
             "9d8e7f6  study-s1-r0     Dec 01, 2026   Queued\n"
             "\nWorker status: 1 active, 0 idle\n")
    monkeypatch.setattr(sweep, "_dvc", lambda repo, *args: table)
    assert sweep._queue_status(tmp_path) == [{"name": "study-s0-r0", "status": "Success"},
                                             {"name": "study-s0-r0p3", "status": "Running"},
                                             {"name": "study-s1-r0", "status": "Queued"}]
