"""Queue the study's grid of experiments (seeds × noise ratios, plus the random-noise control), run the queue,
and save what finished into the study folder.

Each grid point is one `dvc exp run --queue -n NAME -S seed=… -S noise_ratio=… [-S noise_kind=random]`, with
the same extra `-S` overrides for all of them. A point whose run folder is already in the study is not
queued again, so a sweep can be built up over several sessions (delete a run's folder to re-run it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medvlm.report.collect import command
from medvlm.report.study import RUNS_DIR
from medvlm.runtime import log

POLL_SECONDS = 20.0


@dataclass(frozen=True)
class GridPoint:
    seed: int
    noise_ratio: float
    noise_kind: str = "adversarial"

    @property
    def name(self) -> str:
        """Experiment name: a git ref component, so no dots (`study-s0-r0p1`, `study-s2-r0p3-random`)."""
        ratio = f"{self.noise_ratio:g}".replace(".", "p")
        return f"study-s{self.seed}-r{ratio}" + ("" if self.noise_kind == "adversarial" else f"-{self.noise_kind}")

    def settings(self) -> list[str]:
        return [f"seed={self.seed}", f"noise_ratio={self.noise_ratio:g}", f"noise_kind={self.noise_kind}"]


def study_grid(*, seeds: Sequence[int], ratios: Sequence[float], random_ratios: Sequence[float]) -> list[GridPoint]:
    """Seed-major order, so that the first seed's conditions finish (and can be read) first."""
    points = []
    for seed in seeds:
        points += [GridPoint(seed, ratio) for ratio in ratios]
        points += [GridPoint(seed, ratio, "random") for ratio in random_ratios]
    return points


def _dvc(repo: Path, *args: str) -> str:
    return command(repo, "dvc", *args)


def queue_grid(*, repo: Path, study: Path, points: Sequence[GridPoint], overrides: Sequence[str]) -> list[str]:
    """Queue every point neither saved in `study` nor already in DVC's queue; return the queued names."""
    saved = {path.name for path in (Path(study) / RUNS_DIR).iterdir()} if (Path(study) / RUNS_DIR).is_dir() else set()
    in_queue = {entry["name"] for entry in _queue_status(repo) if entry["status"] in ("Queued", "Running")}
    queued = []
    for point in points:
        if point.name in saved or point.name in in_queue:
            log.info("%s: already %s, not queued again", point.name, f"in {study}" if point.name in saved else "queued")
            continue
        settings = [arg for setting in (*point.settings(), *overrides) for arg in ("-S", setting)]
        _dvc(repo, "exp", "run", "--queue", "-n", point.name, *settings)
        queued.append(point.name)
    log.info("queued %d experiments: %s", len(queued), ", ".join(queued) or "none")
    return queued


def run_queue(*, repo: Path, jobs: int) -> None:
    """`dvc queue start -j jobs`, then wait until nothing is queued or running; failed experiments are named."""
    start = time.perf_counter()
    _dvc(repo, "queue", "start", "-j", str(jobs))
    while True:
        pending = [entry for entry in _queue_status(repo) if entry["status"] in ("Queued", "Running")]
        if not pending:
            break
        time.sleep(POLL_SECONDS)
    failed = [entry["name"] for entry in _queue_status(repo) if entry["status"] == "Failed"]
    log.info("queue finished in %.0f s%s", time.perf_counter() - start,
             f"; failed: {', '.join(failed)} (see `dvc queue logs NAME`)" if failed else "")


def _queue_status(repo: Path) -> list[dict[str, str]]:
    """Rows of `dvc queue status` (it has no JSON output): name and status per experiment."""
    rows = []
    for line in _dvc(repo, "queue", "status").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in ("Queued", "Running", "Success", "Failed"):
            rows.append({"name": fields[1], "status": fields[-1]})
    return rows
