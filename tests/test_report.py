"""The study report: tables, claim checks and figures from hand-made runs, and runs read from git revisions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from medvlm.report.build import build_report
from medvlm.report.claims import noise_claim, ordering_claim
from medvlm.report.collect import ReportError, Run, check_distinct_noise_ratios, runs_from_revisions
from medvlm.report.tables import main_table

METHODS = ["lp", "mlp", "nmtune", "ran"]
TASKS = ("cls_id", "cls_ood", "vqa")


def make_run(name: str, ratio: float, accuracy: dict[str, dict[str, float]], robust: float = 0.3) -> Run:
    """A run whose clean accuracy per method/task is given, with ±0.01 intervals and one robust number."""
    evaluation = {method: {task: {"accuracy": value, "n": 100, "ci": {"accuracy": [value - 0.01, value + 0.01]}}
                           for task, value in accuracy[method].items()} for method in accuracy}
    evaluation["chance"] = {"cls_id": {"uniform": 1 / 6}, "cls_ood": {"uniform": 1 / 6}, "vqa": {"majority": 0.25}}
    evaluation["spectrum"] = {"cls_id_train": {"sv_entropy": 3.5 - ratio, "top_sv_ratio": 0.1 + ratio}}
    metrics = {"metrics/evaluate.json": evaluation}
    for method in accuracy:
        metrics[f"metrics/robustness/{method}.json"] = {
            task: {"clean": {"accuracy": accuracy[method][task], "ci": [0, 1]},
                   "eps_2": {"accuracy": robust, "ci": [robust - 0.05, robust + 0.05]},
                   "convergence": {"accuracy": robust, "strong_accuracy": robust - 0.02}}
            for task in accuracy[method]}
    params = {"noise_ratio": ratio, "seed": 0, "heads": {"methods": list(accuracy)},
              "evaluate": {"robust": {"eps_255": [2], "check_eps_255": 2, "steps": 10, "n_images": 100}}}
    return Run(name=name, rev=f"{abs(hash(name)):040x}"[:40], params=params, metrics=metrics)


def ordered_accuracies(base: float, ood: float) -> dict[str, dict[str, float]]:
    """LP < MLP < NMTune < RAN on every task."""
    return {method: {"cls_id": base + 0.01 * i, "cls_ood": ood + 0.01 * i, "vqa": base + 0.01 * i}
            for i, method in enumerate(METHODS)}


@pytest.fixture
def sweep() -> list[Run]:
    return [make_run("clean", 0.0, ordered_accuracies(0.90, 0.50)),
            make_run("moderate", 0.05, ordered_accuracies(0.95, 0.50)),
            make_run("high", 0.3, ordered_accuracies(0.89, 0.30))]


def test_claims_are_computed_from_the_numbers(sweep):
    noise = "\n".join(noise_claim(sweep, METHODS))
    assert "Higher than noise-free for 4 of 4 methods" in noise
    assert "lp: best moderate in-domain accuracy (ratio 0.05) vs noise-free: +0.050 (clearly)" in noise
    assert "for 4 of 4 methods at ratio 0.3" in noise
    assert "in-domain -0.010 (within noise), out-of-domain -0.200 (clearly)" in noise
    ordering = "\n".join(ordering_claim(sweep, METHODS, 2.0))
    assert "clean: the full order holds in 9 of 9 (run, task) cases" in ordering
    assert "mean rank: ran 1.00, nmtune 2.00, mlp 3.00, lp 4.00" in ordering

    flipped = [make_run("clean", 0.0, ordered_accuracies(0.95, 0.50)), make_run("high", 0.3, ordered_accuracies(0.90, 0.52))]
    flipped_noise = "\n".join(noise_claim(flipped, METHODS))
    assert "for 0 of 4 methods at ratio 0.3" in flipped_noise
    assert noise_claim(sweep[1:], METHODS) == [
        "No noise-free run (noise_ratio 0) among the runs: the noise claim cannot be checked."]


def test_report_writes_tables_claims_and_figures(sweep, tmp_path):
    path = build_report(runs=list(reversed(sweep)), name="toy", out_dir=tmp_path, source="pytest",
                        notes="Hand-written discussion.")
    text = path.read_text()
    assert path == tmp_path / "toy.md"
    assert "| 0.05 | ran | 0.980 [0.970, 0.990] |" in text  # rows sorted by noise ratio
    assert text.index("| 0 | lp |") < text.index("| 0.05 | lp |") < text.index("| 0.3 | lp |")
    assert "0.300 → 0.280" in text  # the convergence check
    assert "Hand-written discussion." in text
    assert "![clean accuracy](toy/clean_vs_noise.png)" in text
    for figure in ("clean_vs_noise.png", "robust_vs_noise.png"):
        assert (tmp_path / "toy" / figure).stat().st_size > 1000


def test_two_runs_at_one_noise_ratio_are_refused(sweep):
    with pytest.raises(ReportError, match="both have noise_ratio 0.05"):
        check_distinct_noise_ratios([*sweep, make_run("again", 0.05, ordered_accuracies(0.9, 0.5))])


def test_main_table_shows_missing_numbers_as_dashes(sweep):
    sparse = make_run("sparse", 0.1, {"lp": {"cls_id": 0.9}})
    table = main_table([sparse], ["lp"], 2.0)
    assert "| 0.1 | lp | 0.900 [0.890, 0.910] | – | – | 0.300 [0.250, 0.350] | – | – |" in table


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo,
                   check=True, capture_output=True)


def test_runs_from_git_revisions(sweep, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for branch, run in (("main", sweep[0]), ("noisy", sweep[2])):
        if branch != "main":
            _git(repo, "checkout", "-q", "-b", branch)
        (repo / "params.yaml").write_text(yaml.safe_dump(run.params))
        for path, content in run.metrics.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(json.dumps(content))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", branch)
    runs = runs_from_revisions(repo, ["main", "noisy"])
    assert [(run.name, run.noise_ratio) for run in runs] == [("main", 0.0), ("noisy", 0.3)]
    assert runs[1].metrics == sweep[2].metrics
    with pytest.raises(ReportError, match="nonexistent"):
        runs_from_revisions(repo, ["nonexistent"])
