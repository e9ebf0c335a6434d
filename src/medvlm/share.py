"""Share stage runs through a DVC remote: `dvc push --run-cache`, plus the files it leaves out.

    python -m medvlm.share push [--remote NAME]     # instead of `dvc push --run-cache`
    dvc pull --run-cache && dvc exp run --pull ...  # on the other clone, as usual

DVC records a run of the `headline` stage in its run cache, and copies its uncached metric
(metrics/headline.json, in git so that `dvc metrics diff` needs no cache) into the local cache with it. But
`dvc push --run-cache` uploads only the run records and the cached outputs, so on another clone the record
names a file the remote lacks, and the stage runs again (DVC 3.67). `push` does what `dvc push --run-cache`
does, then uploads every file a run record names that the local cache holds; the remote skips those it has.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

EXIT_USER_ERROR = 2


def run_record_files(runs: Path) -> set[str]:
    """md5 of every output named by the run records under `runs` (the run cache, `.dvc/cache/runs`)."""
    hashes = set()
    for record in runs.rglob("*"):
        if record.is_file():
            for out in (yaml.safe_load(record.read_text()) or {}).get("outs", []):
                if "md5" in out:
                    hashes.add(out["md5"])
    return hashes


def push_runs(*, root: Path, remote: str | None) -> tuple[int, int]:
    """`dvc push --run-cache` in the repo at `root`, then the run records' files it skipped; returns (files
    pushed by the first, files pushed by the second)."""
    from dvc.repo import Repo  # noqa: PLC0415  (slow to import)
    from dvc_data.hashfile.hash_info import HashInfo  # noqa: PLC0415

    with Repo(str(root)) as repo:
        pushed = repo.push(remote=remote, run_cache=True)
        cache = repo.cache.local
        named = [HashInfo("md5", value) for value in sorted(run_record_files(Path(repo.cache.legacy.path) / "runs"))]
        present = [info for info in named if cache.exists(info.value)]
        result = repo.cloud.push(present, remote=remote)
    return pushed, len(result.transferred)


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])


@app.callback()
def _commands() -> None:
    """Keeps `push` a named command (typer runs a lone command without its name otherwise)."""


@app.command("push")
def push(remote: str = typer.Option(None, help="DVC remote to push to (default: the repo's default remote)"),
         root: Path = typer.Option(Path("."), help="the repository")) -> None:
    """Push the stage runs and outputs of this clone, so that another clone restores them instead of running."""
    from dvc.exceptions import DvcException  # noqa: PLC0415

    try:
        pushed, extra = push_runs(root=root, remote=remote)
    except (DvcException, OSError) as exc:  # OSError: DVC's own for a local remote that is not a folder
        typer.echo(f"error: cannot push to the DVC remote: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    typer.echo(f"{pushed} files pushed with the run cache, and {extra} files its run records name")


if __name__ == "__main__":
    app()
