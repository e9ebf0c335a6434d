"""End-to-end `dvc repro` of the default pipeline: wall time, peak memory, time per stage, no-op re-run, one
`dvc exp run`, and a queued sweep of experiments run one and two at a time.

Runs in a temporary git copy of this repository (the tracked and not-ignored files of the working tree,
without dvc.lock or metrics/) with a fresh DVC cache, so every stage runs, exactly as after a clean clone.
Peak memory is the largest sum of resident memory over the whole process tree (dvc and every stage
process), sampled every 0.1 s with psutil (a dvc dependency); the largest single process is reported too.
Budgets (docs/benchmarks.md): default pipeline <= 5 min (aim 3) and <= 4 GB on 2 cores; no-op re-run <= 1.5 s;
one `dvc exp run -S noise_ratio=0.1` on top of it (attack and later stages only) <= 2.5 min.

`--before REV` measures the same (without the sweep) on the committed files of revision REV first, in a copy
of its own, so that one run gives the figures before and after a change on the same machine state.

    python benchmarks/bench_repro.py                       # the default params.yaml
    python benchmarks/bench_repro.py --before 46a0ac2      # and the same at an older commit
    python benchmarks/bench_repro.py --set pretrain.epochs=1 --set surrogate.epochs=1 --no-sweep   # quicker
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


SWEEP_RATIOS = (0.15, 0.2, 0.25, 0.3)
"""The queued sweep: one experiment per noise ratio, each re-running attack and every later stage."""


def copy_repo(target: Path, overrides: list[str], rev: str | None = None) -> None:
    """Tracked + untracked-not-ignored files of this checkout (or the files committed at `rev`) into `target`,
    without dvc.lock and metrics/, committed to a fresh git repo."""
    if rev is None:
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.splitlines()
        for name in files:
            source = REPO / name
            if source.is_file() and not name.startswith(("metrics/", "dvc.lock")):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        shutil.rmtree(target / "metrics", ignore_errors=True)
        (target / "dvc.lock").unlink(missing_ok=True)
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


def measure(repo: Path, env: dict[str, str]) -> dict:
    """A fresh-cache `dvc repro`, a no-op re-run, then one committed-baseline `dvc exp run -S noise_ratio=0.1`."""
    full = timed_repro(repo, env)
    started = time.perf_counter()
    noop = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, check=True)
    noop_s = time.perf_counter() - started
    if "Running stage" in noop.stdout:
        raise RuntimeError(f"the second dvc repro re-ran stages:\n{noop.stdout}")
    for command in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "baseline run"]):
        subprocess.run(command, cwd=repo, env=env, check=True)
    experiment = timed_repro(repo, env, "dvc", "exp", "run", "-S", "noise_ratio=0.1")
    return {**full, "noop_s": noop_s, "exp_run_s": experiment["wall_s"], "exp_run_stage_s": experiment["stage_s"]}


def timed_sweep(repo: Path, env: dict[str, str], jobs: int, threads: int | None) -> dict:
    """Queue one experiment per SWEEP_RATIOS value and run the queue with `dvc queue start -j jobs` (with
    OMP_NUM_THREADS=threads if given); time the whole queue and each experiment's `dvc exp exec-run` process
    (seen by polling the process table every 0.2 s). The run cache is cleared first, so every run of the
    sweep computes its stages even when an earlier sweep ran the same params."""
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    for ratio in SWEEP_RATIOS:
        subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"noise_ratio={ratio}"], cwd=repo, env=env,
                       capture_output=True, text=True, check=True)
    queue_env = dict(env, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    # No pipes: the workers it leaves running would hold them open, and run() would wait for the whole queue.
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=queue_env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    seen: dict[int, list[float]] = {}  # exec-run pid -> [first seen, last seen] (perf_counter)
    parents: dict[int, int] = {}
    while True:
        now = time.perf_counter()
        running = [process for process in psutil.process_iter(["cmdline", "ppid"])
                   if "exec-run" in (process.info["cmdline"] or [])]
        for process in running:
            seen.setdefault(process.pid, [now, now])[1] = now
            parents[process.pid] = process.info["ppid"]
        experiments = [pid for pid in seen if parents[pid] not in seen]  # not a child of another exec-run
        if len(experiments) >= len(SWEEP_RATIOS) and not running:
            break
        if now - started > 3600:
            raise RuntimeError(f"the queued sweep did not finish within an hour ({len(experiments)} started)")
        time.sleep(0.2)
    status = ""
    for _ in range(150):  # the workers collect each result after its process ends
        status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True,
                                check=True).stdout
        if not re.search(r"\b(Running|Queued)\b", status):
            break
        time.sleep(2)
    wall = time.perf_counter() - started
    if status.count("Success") < len(SWEEP_RATIOS):
        raise RuntimeError(f"the queued sweep did not succeed:\n{status}")
    per_experiment = sorted(seen[pid][1] - seen[pid][0] for pid in experiments)
    return {"jobs": jobs, "omp_num_threads": threads, "ratios": list(SWEEP_RATIOS), "wall_s": wall,
            "experiment_s": per_experiment}


def _report(title: str, result: dict, rev: str | None = None) -> None:
    print(f"\n{title}{' at ' + rev if rev else ''} ({os.cpu_count()} CPUs), fresh cache:")
    for name, seconds in result["stage_s"].items():
        print(f"  {name:<18} {seconds:7.1f} s")
    print(f"wall {result['wall_s']:.1f} s (budget {BUDGET_SECONDS:.0f}, aim {AIM_SECONDS:.0f}); "
          f"peak memory {result['peak_tree_mb']:.0f} MB for the process tree, {result['peak_process_mb']:.0f} MB "
          f"for one process (budget {BUDGET_MB:.0f}); no-op re-run {result['noop_s']:.1f} s "
          f"(budget {NOOP_BUDGET_SECONDS:g}); dvc exp run -S noise_ratio=0.1 {result['exp_run_s']:.1f} s "
          f"(budget {EXP_BUDGET_SECONDS:.0f})")


def main(
    overrides: list[str] = typer.Option([], "--set", help="params override KEY.PATH=YAML_VALUE (repeatable)"),
    before: str = typer.Option(None, help="also measure this git revision first (its committed files)"),
    sweep: bool = typer.Option(True, help="time a queued 4-experiment sweep with -j 1 and with -j 2"),
    keep: bool = typer.Option(False, help="keep the temporary copies (their paths are printed)"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-repro-"))
    results: dict = {"benchmark": "repro", "overrides": overrides, "cpus": os.cpu_count()}
    try:
        env = _env()
        if before:
            old = tmp / "before"
            old.mkdir()
            copy_repo(old, overrides, rev=before)
            results["before"] = {"rev": before, **measure(old, dict(env, PYTHONPATH=str(old / "src")))}
            _report("dvc repro of the default pipeline", results["before"], rev=before)
        repo = tmp / "repo"
        repo.mkdir()
        copy_repo(repo, overrides)
        # The copy's own code, whichever checkout the venv's editable install points at.
        env["PYTHONPATH"] = str(repo / "src")
        results.update(measure(repo, env))
        _report(f"dvc repro of the default pipeline{' with ' + ', '.join(overrides) if overrides else ''}", results)
        if sweep:
            results["sweep"] = [timed_sweep(repo, env, jobs=1, threads=None),
                                timed_sweep(repo, env, jobs=2, threads=max(1, (os.cpu_count() or 2) // 2))]
            for entry in results["sweep"]:
                threads = f" with OMP_NUM_THREADS={entry['omp_num_threads']}" if entry["omp_num_threads"] else ""
                print(f"queued sweep of {len(entry['ratios'])} experiments (noise_ratio {entry['ratios']}), "
                      f"dvc queue start -j {entry['jobs']}{threads}: {entry['wall_s']:.0f} s in all; per experiment "
                      + ", ".join(f"{seconds:.0f}" for seconds in entry["experiment_s"]) + " s")
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
