"""`python -m medvlm.report`: write reports/<name>.md (+ figures) from DVC experiments or git revisions.

    python -m medvlm.report --name sweep                      # the HEAD commit's finished experiments
    python -m medvlm.report --name sweep --exp a --exp b      # only these experiments
    python -m medvlm.report --name branches --rev main --rev noisier
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from medvlm.cli import EXIT_USER_ERROR
from medvlm.io import DataError
from medvlm.report.build import build_report
from medvlm.report.collect import runs_from_experiments, runs_from_revisions
from medvlm.runtime import log, setup_logging


def main(
    name: str = typer.Option(..., help="report name: writes <out>/<name>.md and <out>/<name>/*.png"),
    exp: list[str] = typer.Option([], help="experiment name to include (repeatable; default: all finished)"),
    rev: list[str] = typer.Option([], help="git revision to include instead of experiments (repeatable)"),
    baseline: bool = typer.Option(False, help="also include the baseline commit's own run"),
    all_commits: bool = typer.Option(False, help="experiments of every commit, not only HEAD's"),
    eps: float = typer.Option(None, help="radius (1/255) of the main table's robust columns"),
    notes: Path = typer.Option(None, help="markdown file with a discussion to include after the claims"),
    repo: Path = typer.Option(Path("."), help="repository to read runs from"),
    out: Path = typer.Option(Path("reports"), help="folder of the reports"),
) -> None:
    setup_logging()
    try:
        if rev and exp:
            raise DataError("give either --exp or --rev, not both")
        runs = (runs_from_revisions(repo, rev) if rev else
                runs_from_experiments(repo, exp, include_baseline=baseline, all_commits=all_commits))
        text = notes.read_text() if notes else None
        source = "python -m medvlm.report " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
        path = build_report(runs=runs, name=name, out_dir=out, source=source, eps_255=eps, notes=text)
    except (DataError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    log.info("wrote %s from %d runs", path, len(runs))


if __name__ == "__main__":
    typer.run(main)
