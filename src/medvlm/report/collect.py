"""Collect the params and metrics of finished runs: DVC experiments (`dvc exp show --json`) or git revisions.

A run is one row group of the report: its params (params.yaml) and its metrics files by path. Both are
read with `git show <commit>:<file>` from the run's commit (a DVC experiment is a git commit too), which
works because the metrics files are committed (cache: false) and params.yaml is tracked.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medvlm.io import DataError

EVALUATE_METRICS = "metrics/evaluate.json"
ROBUSTNESS_DIR = "metrics/robustness"


class ReportError(DataError):
    """The runs asked for cannot be found or do not carry the metrics a report needs."""


@dataclass(frozen=True)
class Run:
    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    """Metrics file path (relative to the repo) -> its JSON content."""

    @property
    def noise_ratio(self) -> float:
        return float(self.params["noise_ratio"])

    def evaluation(self) -> dict[str, Any]:
        if EVALUATE_METRICS not in self.metrics:
            raise ReportError(f"run {self.name} ({self.rev[:7]}) has no {EVALUATE_METRICS}")
        return self.metrics[EVALUATE_METRICS]

    def robustness(self, method: str) -> dict[str, Any] | None:
        return self.metrics.get(f"{ROBUSTNESS_DIR}/{method}.json")


def _command(repo: Path, *args: str) -> str:
    try:
        result = subprocess.run(args, cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:
        raise ReportError(f"`{args[0]}` is not on PATH (activate the venv: source .venv/bin/activate)") from None
    if result.returncode != 0:
        raise ReportError(f"`{' '.join(args)}` failed in {repo}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _finished(entry: dict[str, Any]) -> bool:
    """A committed run with an evaluation: not failed, not queued, not still running (those have no commit)."""
    data = entry.get("data") or {}
    committed = re.fullmatch(r"[0-9a-f]{40}", entry.get("rev") or "") is not None
    return committed and not entry.get("error") and EVALUATE_METRICS in (data.get("metrics") or {})


def runs_from_experiments(repo: Path, names: Sequence[str] = (), include_baseline: bool = False,
                          all_commits: bool = False) -> list[Run]:
    """Finished experiments of the HEAD commit (of every commit with `all_commits`) as `dvc exp show --json`
    lists them, optionally only those in `names`; plus the baseline commits when `include_baseline`.

    `dvc exp show` only names the runs: their params and metrics are read from each experiment's git commit,
    because its JSON drops list values such as the bootstrap intervals.
    """
    shown = json.loads(_command(repo, "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])))
    found: list[tuple[str, str]] = []
    for baseline in shown:
        if baseline.get("rev") == "workspace":
            continue
        if include_baseline and _finished(baseline):
            found.append((baseline.get("name") or baseline["rev"][:7], baseline["rev"]))
        for group in baseline.get("experiments") or []:
            found += [(entry.get("name") or entry["rev"][:7], entry["rev"])
                      for entry in group.get("revs") or [] if _finished(entry)]
    if names:
        missing = sorted(set(names) - {name for name, _ in found})
        if missing:
            raise ReportError(f"no finished experiment named {missing}; found {sorted(name for name, _ in found)}")
        found = [(name, rev) for name, rev in found if name in names]
    if not found:
        raise ReportError(f"{repo}: no finished experiment with {EVALUATE_METRICS} (run the sweep first)")
    return [_run_at(repo, name, rev) for name, rev in found]


def _show(repo: Path, rev: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def _run_at(repo: Path, name: str, sha: str) -> Run:
    """The params and metrics files committed at `sha`."""
    params_text = _show(repo, sha, "params.yaml")
    if params_text is None:
        raise ReportError(f"{name} ({sha[:7]}) has no params.yaml")
    metrics = {}
    for path in _command(repo, "git", "ls-tree", "-r", "--name-only", sha, "metrics").split():
        if path.endswith(".json"):
            try:
                metrics[path] = json.loads(_show(repo, sha, path) or "")
            except json.JSONDecodeError as exc:
                raise ReportError(f"{name} ({sha[:7]}): {path} is not valid JSON ({exc})") from None
    run = Run(name=name, rev=sha, params=yaml.safe_load(params_text), metrics=metrics)
    run.evaluation()  # fails clearly when the run has no evaluation
    return run


def runs_from_revisions(repo: Path, revisions: Sequence[str]) -> list[Run]:
    """One run per git revision (branch, tag or commit), read from its committed params and metrics."""
    return [_run_at(repo, rev, _command(repo, "git", "rev-parse", "--verify", f"{rev}^{{commit}}").strip())
            for rev in revisions]


def check_distinct_noise_ratios(runs: Sequence[Run]) -> list[Run]:
    """Runs sorted by noise ratio; two runs at one ratio would make a table row ambiguous."""
    by_ratio: dict[float, Run] = {}
    for run in runs:
        other = by_ratio.get(run.noise_ratio)
        if other is not None:
            raise ReportError(f"runs {other.name} and {run.name} both have noise_ratio {run.noise_ratio}; "
                              "choose one (--exp NAME / --rev REV)")
        by_ratio[run.noise_ratio] = run
    return [by_ratio[ratio] for ratio in sorted(by_ratio)]
