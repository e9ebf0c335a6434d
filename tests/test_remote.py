"""A shared cache: a DVC remote (a local folder standing in for S3 or SSH) carries an experiment's stage runs
from one clone to another through DVC's run cache; a remote that cannot be reached fails with DVC's own
error and leaves the workspace as it was.

What the round trip needs (DVC 3): the first clone pushes the baseline's outputs (`dvc push`, before the
experiment) and, after `dvc exp run`, the stage runs and the experiment's outputs with `python -m medvlm.share
push` (`dvc push --run-cache` leaves out the headline stage's uncached metric: medvlm/share.py);
the second, a fresh `git clone` of the baseline, pulls both (`dvc pull --run-cache`) and runs the
experiment with `dvc exp run --pull`, which fetches the outputs of the runs it finds in the run cache
(without `--pull` it finds them but, their outputs missing from its cache, runs the stages again).
Every stage comes back and none runs: DVC 3 records no run of a stage with an uncached output other than a
declared metric, so every output but metrics/headline.json is cached (dvc.yaml).
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_repo import copy_of, env, run, stages_run

pytestmark = pytest.mark.e2e

EXPERIMENT = "heads.ran.w_adv=0"
"""Never committed; re-runs the ran head and what reads it (finetune@ran, robustness@ran, evaluate, headline)."""


def _metrics(repo: Path) -> dict[str, str]:
    return {str(path.relative_to(repo)): path.read_text() for path in sorted((repo / "metrics").rglob("*.json"))}


def test_an_experiment_run_in_one_clone_comes_back_from_the_shared_run_cache_in_another(pipeline_repo, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    one = copy_of(pipeline_repo, tmp_path / "one")
    run(one, "dvc", "remote", "add", "-d", "shared", str(remote))
    run(one, "dvc", "push")  # the baseline's outputs, which a fresh clone of the commit pulls
    ran_one = stages_run(run(one, "dvc", "exp", "run", "-S", EXPERIMENT))
    assert {"finetune@ran", "robustness@ran", "evaluate"} <= ran_one and "finetune@lp" not in ran_one, ran_one
    pushed = run(one, sys.executable, "-m", "medvlm.share", "push")  # the stage runs and the experiment's outputs
    assert re.search(r"and [1-9]\d* files its run records name", pushed), pushed  # at least the headline

    two = tmp_path / "two"
    run(tmp_path, "git", "clone", "-q", str(pipeline_repo), str(two))
    run(two, "dvc", "remote", "add", "-d", "shared", str(remote))
    run(two, "dvc", "pull", "--run-cache")
    assert run(two, "dvc", "status", "--json").strip() == "{}"  # the baseline is complete before the experiment
    output = run(two, "dvc", "exp", "run", "--pull", "-S", EXPERIMENT)

    restored = set(re.findall(r"Stage '([^']+)' is cached - skipping run", output))
    assert restored == ran_one and stages_run(output) == set(), output  # every stage from the run cache
    assert _metrics(two) == _metrics(one)


def _snapshot(repo: Path) -> tuple[dict[str, str], set[str]]:
    """Every file's SHA-256 and every folder, outside .git and .dvc."""
    files, folders = {}, set()
    for path in repo.rglob("*"):
        relative = path.relative_to(repo)
        if relative.parts[0] in (".git", ".dvc"):
            continue
        if path.is_dir():
            folders.add(str(relative))
        else:
            files[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files, folders


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["missing folder", "a file", "refused connection"])
def test_an_unreachable_remote_fails_with_dvcs_error_and_leaves_the_workspace_as_it_was(
        pipeline_repo, tmp_path, kind):
    (tmp_path / "a-file").write_text("not a remote\n")
    url = {"missing folder": str(tmp_path / "no-such-remote"), "a file": str(tmp_path / "a-file"),
           "refused connection": f"http://127.0.0.1:{_closed_port()}/remote"}[kind]
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(pipeline_repo), str(clone))
    run(clone, "dvc", "remote", "add", "-d", "shared", url)
    files, folders = _snapshot(clone)

    pulled = subprocess.run(["dvc", "pull"], cwd=clone, env=env(), capture_output=True, text=True, timeout=300,
                            check=False)
    output = pulled.stdout + pulled.stderr
    assert pulled.returncode != 0, output
    expected = ("ERROR: unexpected error - [Errno 20] Not a directory" if kind == "a file"
                else "ERROR: failed to pull data from the cloud")
    assert expected in output, output

    after_files, after_folders = _snapshot(clone)
    assert after_files == files and folders <= after_folders  # no output, not even part of one
    # DVC makes the parent folders of the outputs it tried to check out; they stay empty.
    assert all(not any(p.is_file() for p in (clone / folder).rglob("*")) for folder in after_folders - folders)
    assert run(clone, "git", "status", "--porcelain").split() == ["M", ".dvc/config"]


def test_share_push_to_an_unreachable_remote_fails_with_dvcs_error(pipeline_repo, tmp_path):
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(pipeline_repo), str(clone))
    (tmp_path / "a-file").write_text("not a remote\n")
    run(clone, "dvc", "remote", "add", "-d", "shared", str(tmp_path / "a-file"))
    files, folders = _snapshot(clone)
    pushed = subprocess.run([sys.executable, "-m", "medvlm.share", "push"], cwd=clone, env=env(),
                            capture_output=True, text=True, timeout=300, check=False)
    assert pushed.returncode == 2 and "error:" in pushed.stderr, pushed.stdout + pushed.stderr
    assert _snapshot(clone) == (files, folders)
