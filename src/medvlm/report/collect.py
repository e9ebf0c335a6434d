"""Find finished runs in a repository: DVC experiments (`dvc exp show --json`) or git revisions.

A run is named by a commit (a DVC experiment is a git commit too); its params.yaml is read with
`git show <commit>:params.yaml`, its metrics files and per-item tables through DVC at that commit (save.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvlm.io import DataError

EVALUATE_METRICS = "metrics/evaluate.json"
HEADLINE_METRICS = "metrics/headline.json"
"""The one declared DVC metrics file, written last: an experiment that has it has finished."""


class ReportError(DataError):
    """The runs asked for cannot be found, or do not carry what a report needs."""


@dataclass(frozen=True)
class RunRef:
    name: str
    rev: str
    """The full commit sha."""


def command(repo: Path, *args: str) -> str:
    try:
        result = subprocess.run(args, cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:
        raise ReportError(f"`{args[0]}` is not on PATH (activate the venv: source .venv/bin/activate)") from None
    if result.returncode != 0:
        raise ReportError(f"`{' '.join(args)}` failed in {repo}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def git_show(repo: Path, rev: str, path: str) -> str | None:
    """The text of `path` at `rev`, or None where the commit has no such file."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def git_files(repo: Path, rev: str, folder: str) -> list[str]:
    """Paths of the files under `folder` at `rev`."""
    return command(repo, "git", "ls-tree", "-r", "--name-only", rev, folder).split()


def _finished(entry: dict[str, Any]) -> bool:
    """A committed run with an evaluation: not failed, not queued, not still running (those have no commit)."""
    data = entry.get("data") or {}
    committed = re.fullmatch(r"[0-9a-f]{40}", entry.get("rev") or "") is not None
    return committed and not entry.get("error") and HEADLINE_METRICS in (data.get("metrics") or {})


def runs_from_experiments(*, repo: Path, names: Sequence[str] = (), include_baseline: bool = False,
                          all_commits: bool = False) -> list[RunRef]:
    """Finished experiments of the HEAD commit (of every commit with `all_commits`) as `dvc exp show --json`
    lists them, optionally only those in `names`; plus the baseline commits when `include_baseline`."""
    shown = json.loads(command(repo, "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])))
    found: list[RunRef] = []
    for baseline in shown:
        if baseline.get("rev") == "workspace":
            continue
        if include_baseline and _finished(baseline):
            found.append(RunRef(baseline.get("name") or baseline["rev"][:7], baseline["rev"]))
        for group in baseline.get("experiments") or []:
            found += [RunRef(entry.get("name") or entry["rev"][:7], entry["rev"])
                      for entry in group.get("revs") or [] if _finished(entry)]
    if names:
        missing = sorted(set(names) - {run.name for run in found})
        if missing:
            raise ReportError(f"no finished experiment named {missing}; found {sorted(run.name for run in found)}")
        found = [run for run in found if run.name in names]
    if not found:
        raise ReportError(f"{repo}: no finished experiment with {HEADLINE_METRICS} (run the sweep first)")
    return found


def runs_from_revisions(*, repo: Path, revisions: Sequence[str]) -> list[RunRef]:
    """One run per git revision (branch, tag or commit)."""
    return [RunRef(rev, command(repo, "git", "rev-parse", "--verify", f"{rev}^{{commit}}").strip())
            for rev in revisions]
