"""End-to-end `dvc repro` of the default pipeline: wall time, peak memory, time per stage, no-op re-run.

Runs in a temporary git copy of this repository (the tracked and not-ignored files of the working tree,
without dvc.lock or metrics/) with a fresh DVC cache, so every stage runs, exactly as after a clean clone.
Peak memory is the largest sum of resident memory over the whole process tree (dvc and every stage
process), sampled every 0.1 s with psutil (a dvc dependency); the largest single process is reported too.
Budgets (docs/benchmarks.md): default pipeline <= 5 min (aim 3) and <= 4 GB on 2 cores; no-op re-run <= 1.5 s;
one `dvc exp run -S noise_ratio=0.1` on top of it (attack and later stages only) <= 2.5 min.

    python benchmarks/bench_repro.py                       # the default params.yaml
    python benchmarks/bench_repro.py --set pretrain.epochs=1 --set surrogate.epochs=1   # a quicker variant
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
BUDGET_SECONDS, AIM_SECONDS, BUDGET_MB, NOOP_BUDGET_SECONDS, EXP_BUDGET_SECONDS = 300.0, 180.0, 4096.0, 1.5, 150.0


def copy_repo(target: Path, overrides: list[str]) -> None:
    """Tracked + untracked-not-ignored files of this checkout into `target`, committed to a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if overrides:
        params = yaml.safe_load((target / "params.yaml").read_text())
        for override in overrides:
            key, _, value = override.partition("=")
            *parents, leaf = key.split(".")
            section = params
            for part in parents:
                section = section[part]
            section[leaf] = yaml.safe_load(value)
        (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=target, env=_env(), check=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "bench")
    env.setdefault("GIT_AUTHOR_EMAIL", "bench@example.invalid")
    env["GIT_COMMITTER_NAME"], env["GIT_COMMITTER_EMAIL"] = env["GIT_AUTHOR_NAME"], env["GIT_AUTHOR_EMAIL"]
    env["DVC_NO_ANALYTICS"] = "1"
    return env


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled on a background thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_tree = self.peak_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes = []
            for process in processes:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:  # it ended between listing and reading
                    pass
            self.peak_tree = max(self.peak_tree, sum(sizes))
            self.peak_process = max(self.peak_process, max(sizes, default=0))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed_repro(repo: Path, env: dict[str, str], *command: str) -> dict:
    """Run `dvc repro` (or `command`) in `repo`, streaming its output; return wall time, peak memory and stage
    times."""
    command = command or ("dvc", "repro")
    started = time.perf_counter()
    process = subprocess.Popen(list(command), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    memory = TreeMemory(process.pid)
    stage_starts: list[tuple[str, float]] = []
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        match = re.search(r"Running stage '([^']+)'", line)
        if match:
            stage_starts.append((match.group(1), time.perf_counter()))
    status = process.wait()
    ended = time.perf_counter()
    memory.stop()
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({status}):\n{''.join(lines[-40:])}")
    stages = {name: (stage_starts[i + 1][1] if i + 1 < len(stage_starts) else ended) - at
              for i, (name, at) in enumerate(stage_starts)}
    return {"wall_s": ended - started, "peak_tree_mb": memory.peak_tree / 2**20,
            "peak_process_mb": memory.peak_process / 2**20, "stage_s": stages}


def main(
    overrides: list[str] = typer.Option([], "--set", help="params override KEY.PATH=YAML_VALUE (repeatable)"),
    keep: bool = typer.Option(False, help="keep the temporary copy (its path is printed)"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-repro-"))
    repo = tmp / "repo"
    repo.mkdir()
    try:
        copy_repo(repo, overrides)
        env = _env()
        # The copy's own code, whichever checkout the venv's editable install points at.
        env["PYTHONPATH"] = str(repo / "src")
        full = timed_repro(repo, env)
        started = time.perf_counter()
        noop = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, check=True)
        noop_s = time.perf_counter() - started
        if "Running stage" in noop.stdout:
            raise RuntimeError(f"the second dvc repro re-ran stages:\n{noop.stdout}")
        for command in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "baseline run"]):
            subprocess.run(command, cwd=repo, env=env, check=True)
        experiment = timed_repro(repo, env, "dvc", "exp", "run", "-S", "noise_ratio=0.1")
    finally:
        if keep:
            print(f"kept {repo}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ndvc repro of the default pipeline{' with ' + ', '.join(overrides) if overrides else ''} "
          f"({os.cpu_count()} CPUs), fresh cache:")
    for name, seconds in full["stage_s"].items():
        print(f"  {name:<18} {seconds:7.1f} s")
    print(f"wall {full['wall_s']:.1f} s (budget {BUDGET_SECONDS:.0f}, aim {AIM_SECONDS:.0f}); "
          f"peak memory {full['peak_tree_mb']:.0f} MB for the process tree, {full['peak_process_mb']:.0f} MB "
          f"for one process (budget {BUDGET_MB:.0f}); no-op re-run {noop_s:.1f} s (budget {NOOP_BUDGET_SECONDS:g}); "
          f"dvc exp run -S noise_ratio=0.1 {experiment['wall_s']:.1f} s (budget {EXP_BUDGET_SECONDS:.0f})")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"benchmark": "repro", "overrides": overrides, **full, "noop_s": noop_s,
                                        "exp_run_s": experiment["wall_s"], "exp_run_stage_s": experiment["stage_s"],
                                        "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    typer.run(main)
