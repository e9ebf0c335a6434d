"""`python -m medvlm.report`: save runs into a study folder, then build the study report from it.

    python -m medvlm.report save --study reports/study                 # the HEAD commit's finished experiments
    python -m medvlm.report save --study reports/study --exp a --exp b # only these experiments
    python -m medvlm.report save --study reports/branches --rev main --rev noisier
    python -m medvlm.report build --study reports/study --notes reports/study-notes.md
    python -m medvlm.report queue --study reports/study --ratios 0 --ratios 0.1 --ratios 0.3 --start
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from medvlm.cli import EXIT_USER_ERROR
from medvlm.io import DataError
from medvlm.report.build import build_report
from medvlm.report.collect import runs_from_experiments, runs_from_revisions
from medvlm.report.save import save_runs
from medvlm.report.sweep import queue_grid, run_queue, study_grid
from medvlm.runtime import log, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def _guarded(action: Callable[[], Any]) -> Any:
    setup_logging()
    try:
        return action()
    except (DataError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


@app.command()
def save(
    study: Path = typer.Option(..., help="study folder: runs are written to <study>/runs/<run>/"),
    exp: list[str] = typer.Option([], help="experiment name to include (repeatable; default: all finished)"),
    rev: list[str] = typer.Option([], help="git revision to include instead of experiments (repeatable)"),
    baseline: bool = typer.Option(False, help="also include the baseline commit's own run"),
    all_commits: bool = typer.Option(False, help="experiments of every commit, not only HEAD's"),
    repo: Path = typer.Option(Path("."), help="repository to read runs from"),
) -> None:
    """Copy finished runs (params, metrics, per-item tables from the DVC cache) into the study folder."""
    def action() -> None:
        if rev and exp:
            raise DataError("give either --exp or --rev, not both")
        runs = (runs_from_revisions(repo=repo, revisions=rev) if rev else
                runs_from_experiments(repo=repo, names=exp, include_baseline=baseline, all_commits=all_commits))
        written = save_runs(repo=repo, study=study, runs=runs)
        log.info("saved %d of %d runs into %s", len(written), len(runs), study)
    _guarded(action)


@app.command()
def build(
    study: Path = typer.Option(..., help="study folder written by `save`"),
    notes: Path = typer.Option(None, help="markdown file with a discussion to include after the claims"),
    eps: float = typer.Option(None, help="radius (1/255) of the robust claims; default: the runs' main radius"),
    out: Path = typer.Option(Path("reports"), help="folder of the report: writes <out>/<study name>.md"),
) -> None:
    """Write the study report (markdown + figures) from the study folder alone."""
    path = _guarded(lambda: build_report(study=study, out=out, notes=notes, eps_255=eps))
    log.info("wrote %s", path)


@app.command()
def queue(
    study: Path = typer.Option(..., help="study folder; grid points already saved there are not queued again"),
    seeds: list[int] = typer.Option([0, 1, 2], help="replicate seeds (repeatable)"),
    ratios: list[float] = typer.Option([0.0, 0.05, 0.1, 0.2, 0.3], help="noise ratios of the default noise"),
    random: list[float] = typer.Option([0.3], help="noise ratios of the random-noise control"),
    set_: list[str] = typer.Option([], "--set", help="extra KEY=VALUE for every experiment (dvc exp run -S)"),
    start: bool = typer.Option(False, help="also run the queue (dvc queue start), wait, and save into the study"),
    jobs: int = typer.Option(1, help="experiments run at once with --start"),
    repo: Path = typer.Option(Path("."), help="repository whose committed HEAD the experiments start from"),
) -> None:
    """Queue the study's grid (seeds x noise ratios, plus the random-noise control) as DVC experiments."""
    def action() -> None:
        points = study_grid(seeds=seeds, ratios=ratios, random_ratios=random)
        queue_grid(repo=repo, study=study, points=points, overrides=set_)
        if start:
            run_queue(repo=repo, jobs=jobs)
            grid = {point.name for point in points}
            # every commit's: HEAD may have moved on while the queue ran
            finished = [run for run in runs_from_experiments(repo=repo, all_commits=True) if run.name in grid]
            written = save_runs(repo=repo, study=study, runs=finished)
            log.info("saved %d finished experiments of the grid's %d into %s", len(written), len(grid), study)
    _guarded(action)


if __name__ == "__main__":
    app()
