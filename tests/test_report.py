"""The study report on a synthetic study: per-item tables with planted effects, written as run folders, then
grouped into conditions, tested claim by claim and written as markdown (no git or DVC needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import permutation_test
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from medvlm.report.__main__ import app
from medvlm.report.build import build_report
from medvlm.report.claims import study_claims
from medvlm.report.collect import ReportError, runs_from_revisions
from medvlm.report.conditions import group_conditions
from medvlm.report.contrasts import evaluate_claims
from medvlm.report.save import save_runs
from medvlm.report.study import load_study

METHODS = ("lp", "mlp", "nmtune", "ran")
TASKS = ("cls_id", "cls_ood", "vqa")
N_ITEMS, N_MAIN, N_OTHER = 240, 120, 40  # per task and seed: test items, attacked at the main radius, at the others
BASE = {"cls_id": 0.5, "cls_ood": 0.5, "vqa": 0.55}


def planted(ratio: float, kind: str, method: str, task: str, metric: str) -> float:
    """The study's true accuracies: RAN +0.2 everywhere; adversarial noise in (0, 0.3] +0.2 clean in-domain only;
    random noise at 0.3 -0.25 clean out-of-domain below adversarial; robust accuracy unaffected by noise."""
    value = (0.3 if metric == "robust" else BASE[task]) + 0.2 * (method == "ran")
    if metric == "clean" and ratio > 0:
        value += 0.2 * (task == "cls_id") - 0.25 * (kind == "random" and task == "cls_ood")
    return value


def correct(seed: int, task: str, cell: str, p: float, n: int = N_ITEMS) -> np.ndarray:
    """Correctness with marginal accuracy p; 70 % of items share one latent per (seed, task), so cells pair."""
    shared = np.random.default_rng([seed, TASKS.index(task)]).random(n)
    own = np.random.default_rng([seed, TASKS.index(task), zlib.crc32(cell.encode())])
    mine, independent = own.random(n), own.random(n) < 0.3
    return np.where(independent, mine, shared) < p


def items(task: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([f"{task}-{k}" for k in range(N_ITEMS)])
    groups = np.array([f"img{k // 3}.png" for k in range(N_ITEMS)]) if task == "vqa" else ids  # 3 questions/image
    return ids, groups


def params(seed: int, ratio: float, kind: str = "adversarial", **changes) -> dict:
    p = {"seed": seed, "device": "cpu", "noise_ratio": ratio, "noise_type": "image", "noise_kind": kind,
         "data": {"cls_test": N_ITEMS, "workers": 0}, "model": {"name": "medvlm-tiny-rn", "init": "scratch"},
         "surrogate": {"epochs": 1, "nproc": 1}, "attack": {"batch_size": 16, "image": {"eps_255": 2.0}},
         "heads": {"methods": list(METHODS)},
         "evaluate": {"batch_size": 64, "robust": {"eps_255": [1, 2, 4], "main_eps_255": 2,
                                                   "main_n_images": N_MAIN, "n_images": N_OTHER}}}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = p
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return p


def write_run(study: Path, name: str, run_params: dict, shift: float = 0.0, methods=METHODS) -> Path:
    """A run folder as `save` writes it; `shift` moves every accuracy of this seed (training variance)."""
    seed, ratio, kind = run_params["seed"], run_params["noise_ratio"], run_params["noise_kind"]
    condition = f"{ratio}-{kind}-{run_params['model']['init']}"
    folder = study / "runs" / name
    (folder / "items" / "robust").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(run_params))
    (folder / "rev.txt").write_text(f"{zlib.crc32(name.encode()):08x}" * 5 + "\n")
    clean = []
    for method in methods:
        robust = []
        for task in TASKS:
            ids, groups = items(task)
            ok = correct(seed, task, f"{condition}-{method}-clean", planted(ratio, kind, method, task, "clean") + shift)
            clean.append(pd.DataFrame({"method": method, "task": task, "item": ids, "group": groups, "label": 1,
                                       "prediction": np.where(ok, 1, 0), "correct": ok}))
            order = np.random.default_rng([seed, 99, TASKS.index(task)]).permutation(N_ITEMS)[:N_MAIN]
            table = pd.DataFrame({"task": task, "item": ids[order], "group": groups[order], "label": 1,
                                  "clean": ok[order]})
            p = planted(ratio, kind, method, task, "robust") + shift
            for eps, accuracy in (("eps_1", p + 0.2), ("eps_2", p), ("eps_4", p / 2)):
                column = pd.array(correct(seed, task, f"{condition}-{method}-{eps}", accuracy)[order], dtype="boolean")
                if eps != "eps_2":
                    column[N_OTHER:] = pd.NA  # the other radii attack the first N_OTHER of the main subset
                table[eps] = column
            robust.append(table)
        pd.concat(robust).to_parquet(folder / "items" / "robust" / f"{method}.parquet", index=False)
    pd.concat(clean).to_parquet(folder / "items" / "clean.parquet", index=False)
    metrics = {"evaluate.json": {"chance": {"cls_id": {"uniform": 1 / 6}, "cls_ood": {"uniform": 1 / 6},
                                            "vqa": {"majority": 0.25}}},
               "pretrain.json": {"retrieval": {"i2t_r5": 0.3 + ratio, "t2i_r5": 0.31}},
               "attack.json": {"success_rate": 0.8 if ratio else 0.0}}
    for file, content in metrics.items():
        (folder / "metrics" / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / "metrics" / file).write_text(json.dumps(content))
    return folder


def sweep(study: Path) -> Path:
    """3 seeds x {0, 0.05, 0.1, 0.3 adversarial, 0.3 random}. The ratio-0 runs differ in noise params and in
    resource params (neither shapes a result at ratio 0), so they still form one condition."""
    for seed in range(3):
        write_run(study, f"clean-s{seed}", params(seed, 0.0, noise_type=("image", "caption", "both")[seed],
                                                  attack__image__eps_255=2.0 + seed, evaluate__batch_size=8 + seed))
        for ratio in (0.05, 0.1, 0.3):
            write_run(study, f"adv-{ratio}-s{seed}", params(seed, ratio, device=("cpu", "cuda", "auto")[seed]))
        write_run(study, f"random-0.3-s{seed}", params(seed, 0.3, "random"))
    return study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return sweep(tmp_path_factory.mktemp("study") / "sweep")


@pytest.fixture(scope="module")
def rows(study):
    conditions = group_conditions(runs=load_study(study=study))
    return evaluate_claims(claims=study_claims(conditions=conditions, methods=METHODS), robust_metric="eps_2")


def pick(rows, claim, method, task, metric, what=""):
    (row,) = [r for r in rows if (r.claim, r.contrast.method, r.contrast.task, r.contrast.metric) ==
              (claim, method, task, metric) and what in r.contrast.what]
    return row


def test_runs_differing_only_in_seed_form_one_condition(study, tmp_path):
    conditions = group_conditions(runs=load_study(study=study))
    assert [(c.name, c.seeds) for c in conditions] == [
        ("noise_ratio=0", (0, 1, 2)), ("noise_ratio=0.05, noise_kind=adversarial", (0, 1, 2)),
        ("noise_ratio=0.1, noise_kind=adversarial", (0, 1, 2)), ("noise_ratio=0.3, noise_kind=adversarial", (0, 1, 2)),
        ("noise_ratio=0.3, noise_kind=random", (0, 1, 2))]
    assert [run.name for run in conditions[0].runs] == ["clean-s0", "clean-s1", "clean-s2"]

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    write_run(copy, "clean-again", params(1, 0.0, noise_type="caption"))
    with pytest.raises(ReportError, match=r"runs clean-again and clean-s1 are the same condition with the same seed"):
        group_conditions(runs=load_study(study=copy))


def test_planted_effects_give_the_right_verdicts(rows):
    for method in METHODS:
        moderate = pick(rows, "a", method, "cls_id", "clean")
        assert moderate.verdict == "holds" and moderate.result.estimate == pytest.approx(0.2, abs=0.06)
        assert moderate.contrast.what.startswith("mean of 0.05, 0.1 − 0") and moderate.items == (240, 240, 240)
        assert pick(rows, "b", method, "cls_id", "clean").verdict == "contradicted"  # planted +0.2, claimed −
        assert pick(rows, "b", method, "cls_ood − cls_id", "clean").verdict == "holds"
        assert pick(rows, "d", method, "cls_ood", "clean").verdict == "holds"  # two-sided: adversarial above random
        no_effect = pick(rows, "e", method, "cls_ood", "robust")
        assert no_effect.verdict == "not detectable at this power"
        assert no_effect.items == (N_MAIN,) * 3 and 0.05 < no_effect.result.mdd < 0.3
        assert no_effect.result.low < 0 < no_effect.result.high
    for other in ("lp", "mlp", "nmtune"):
        for task in TASKS:
            assert pick(rows, "c", f"ran − {other}", task, "robust").verdict == "holds"
    assert {r.verdict for r in rows if r.claim == "e"} == {"not detectable at this power"}


def test_holm_is_applied_within_each_claim(rows):
    for claim in "abcde":
        family = [r for r in rows if r.claim == claim]
        assert family and all(r.result is not None for r in family)
        expected = multipletests([r.result.p for r in family], method="holm")[1]
        assert np.allclose([r.p_adjusted for r in family], expected)
    assert len([r for r in rows if r.claim == "c"]) == 3 * 3 * 2


def test_seed_level_shifts_widen_the_se(tmp_path):
    """The same planted effect with each seed shifted differently: the item noise is unchanged, the SE grows."""
    ses = {}
    for label, shifts in (("agree", (0, 0, 0)), ("apart", (-0.15, 0, 0.15))):
        study = tmp_path / label
        for seed, shift in enumerate(shifts):
            write_run(study, f"clean-s{seed}", params(seed, 0.0), methods=("lp", "ran"))
            write_run(study, f"high-s{seed}", params(seed, 0.3), shift=shift, methods=("lp", "ran"))
        conditions = group_conditions(runs=load_study(study=study))
        found = evaluate_claims(claims=study_claims(conditions=conditions, methods=("lp", "ran")),
                                robust_metric="eps_2")
        ses[label] = pick(found, "e", "lp", "cls_id", "robust").result.se
    assert ses["apart"] > 1.5 * ses["agree"]


def test_single_seed_uses_the_permutation_test_and_is_flagged(tmp_path):
    study = tmp_path / "one-seed"
    write_run(study, "clean", params(0, 0.0), methods=("lp", "ran"))
    write_run(study, "high", params(0, 0.3), methods=("lp", "ran"))
    conditions = group_conditions(runs=load_study(study=study))
    found = evaluate_claims(claims=study_claims(conditions=conditions, methods=("lp", "ran")), robust_metric="eps_2")
    assert pick(found, "b", "lp", "cls_id", "clean").verdict == "contradicted"  # one seed still sees +0.2
    row = pick(found, "e", "lp", "vqa", "robust")  # no planted effect: a p-value far from 0
    assert row.result.seeds == 1 and row.result.test == "sign-flip" and row.result.p > 0.05
    # The same test by hand: sign flips of each image's summed difference (over N) of 0.3 - 0, on the robust items.
    runs = {run.name: run for run in conditions[0].runs + conditions[1].runs}
    high, low = (runs[name].scores(method="lp", task="vqa", metric="eps_2") for name in ("high", "clean"))
    assert high.index.equals(low.index)  # same seed: the same attacked items
    contributions = ((high["correct"] - low["correct"]).groupby(high["group"]).sum() / len(high)).to_numpy()
    expected = permutation_test((contributions,), lambda x, axis: x.sum(axis=axis), permutation_type="samples",
                                vectorized=True, rng=np.random.default_rng(1))
    assert row.result.p == pytest.approx(expected.pvalue, abs=0.03)  # Monte Carlo: different draws
    text = build_report(study=study, out=tmp_path / "reports", root=tmp_path, resamples=200).read_text()
    assert "| b | lp | cls_id | clean | 0.3 − 0 |" in text and "| 1† |" in text
    assert "one seed, so the interval (and the sign-flip permutation test) covers item noise only" in text


def test_conditions_without_a_shared_baseline_are_not_compared(tmp_path):
    study = tmp_path / "mixed"
    for seed in range(2):
        write_run(study, f"clean-s{seed}", params(seed, 0.0), methods=("lp", "ran"))
        write_run(study, f"high-s{seed}", params(seed, 0.3, model__init="openai", data__cls_test=300),
                  methods=("lp", "ran"))
    conditions = group_conditions(runs=load_study(study=study))
    claims = {claim.key: claim for claim in study_claims(conditions=conditions, methods=("lp", "ran"))}
    for key in ("b", "e"):
        assert claims[key].contrasts == ()
        (note,) = claims[key].notes
        assert note.startswith("cannot compare: no noise-free (noise_ratio=0) condition for noise_ratio=0.3")
        assert "differs in `data.cls_test`, `model.init`" in note
    assert claims["c"].contrasts  # RAN vs LP within the noisy condition needs no baseline


def test_build_writes_the_report_from_the_study_folder_alone(study, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(study, work / "reports" / "sweep")
    (work / "notes.md").write_text("Hand-written discussion.")
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no git, no dvc
    result = CliRunner().invoke(app, ["build", "--study", "reports/sweep", "--notes", "notes.md"])
    assert result.exit_code == 0, result.output
    text = (work / "reports" / "sweep.md").read_text()
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    assert "`python -m medvlm.report build --study reports/sweep --notes notes.md --out reports`" in text
    assert "## Discussion\n\nHand-written discussion." in text
    assert "| clean-s1 | " in text and "| noise_ratio=0 | 1 |" in text  # the runs table: condition and seed
    assert "| a | lp | cls_id | clean | mean of 0.05, 0.1 − 0 |" in text
    assert "moderate ratios present: 0.05, 0.1" in text and "†" not in text.split("## Runs")[1]  # 3 seeds everywhere
    assert "| 0.3 − 0 | VQA | robust |" in text  # the MDD table
    assert "In-domain test items per seed (from the item tables): 240 clean, 120 at the main radius ε=2/255, " \
           "40 at ε=1/255, 40 at ε=4/255" in text
    for figure in ("clean_vs_noise.png", "robust_vs_noise.png"):
        assert f"![" in text and f"(sweep/figures/{figure})" in text
        assert (work / "reports" / "sweep" / "figures" / figure).stat().st_size > 5000
    assert "pre-training i2t R@5" in text
    assert "| noise_ratio=0.3, noise_kind=random | 0, 1, 2 | 0.600 ± 0.000 |" in text


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_save_copies_params_metrics_and_items_from_the_dvc_cache(tmp_path):
    source = write_run(tmp_path / "made", "run", params(0, 0.3, heads__methods=["lp"]), methods=("lp",))
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    (repo / "rev.txt").unlink()
    _git(repo, "init", "-q", "-b", "main")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*dvc, "add", "-q", "items/clean.parquet", "items/robust/lp.parquet"], cwd=repo, check=True,
                   capture_output=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "run")
    study = tmp_path / "study"
    (written,) = save_runs(repo=repo, study=study, runs=runs_from_revisions(repo=repo, revisions=["main"]))
    assert written == study / "runs" / "main"
    assert (written / "rev.txt").read_text().strip() == subprocess.run(
        ["git", "rev-parse", "main"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert json.loads((written / "metrics" / "attack.json").read_text()) == {"success_rate": 0.8}
    saved = pd.read_parquet(written / "items" / "clean.parquet")
    assert saved["correct"].tolist() == pd.read_parquet(source / "items" / "clean.parquet")["correct"].tolist()
    assert saved["group"].dtype == "category" and saved["label"].dtype == "int32"
    assert save_runs(repo=repo, study=study, runs=runs_from_revisions(repo=repo, revisions=["main"])) == []

    (repo / "params.yaml").write_text(yaml.safe_dump(params(0, 0.3, heads__methods=["lp", "ran"])))
    _git(repo, "commit", "-q", "-am", "a second method whose items were never produced")
    with pytest.raises(ReportError, match=r"run main \(.*items/robust/ran.parquet"):
        save_runs(repo=repo, study=study, runs=runs_from_revisions(repo=repo, revisions=["main"]))
    assert sorted(path.name for path in (study / "runs").iterdir()) == ["main"]  # nothing half-written


N_CHECK = 60


def _checked_study(root: Path, *, masked: bool) -> Path:
    """3 seeds x {0, 0.3}, LP only, where PGD's robust accuracy rises by 0.4 at 0.3. masked: AutoAttack and Square
    bring it back to 0.2 at both ratios (the rise was gradient masking); else they lower it by 0.05 only."""
    study = root / ("masked" if masked else "real")
    for seed in range(3):
        for ratio in (0.0, 0.3):
            folder = write_run(study, f"s{seed}-r{ratio}", params(seed, ratio, heads__methods=["lp"]), methods=("lp",))
            path = folder / "items" / "robust" / "lp.parquet"
            parts = []
            for task, table in pd.read_parquet(path).groupby("task", sort=False):
                table = table.reset_index(drop=True)
                pgd = 0.3 + 0.4 * (ratio > 0)
                table["eps_2"] = pd.array(correct(seed, task, f"{ratio}-pgd", pgd, N_MAIN), dtype="boolean")
                for column, p in (("worst_case", 0.2 if masked else pgd - 0.05), ("square", 0.2 if masked else pgd),
                                  ("large_eps", 0.0)):
                    values = pd.array(correct(seed, task, f"{ratio}-{column}", p, N_MAIN), dtype="boolean")
                    values[N_CHECK:] = pd.NA  # the checks attack the first items of the main subset
                    table[column] = values
                parts.append(table)
            pd.concat(parts).to_parquet(path, index=False)
    return study


@pytest.mark.parametrize("masked", [True, False])
def test_claim_e_is_stated_only_where_it_survives_autoattack_and_square(tmp_path, masked):
    study = _checked_study(tmp_path, masked=masked)
    text = build_report(study=study, out=tmp_path / "out", root=tmp_path, resamples=200).read_text()
    conditions = group_conditions(runs=load_study(study=study))
    claims = study_claims(conditions=conditions, methods=("lp",))
    rows = evaluate_claims(claims=claims, robust_metric="eps_2")
    assert pick(rows, "e", "lp", "cls_id", "robust").verdict == "holds"  # PGD alone sees the rise either way
    assert "## Robust accuracy checked: AutoAttack, Square and a large radius" in text
    assert "| e-AA | lp | cls_id | worst_case | 0.3 − 0 |" in text
    assert "| noise_ratio=0.3 | lp | in-domain | 60 |" in text  # the checks table, on the 60 checked items
    assert (tmp_path / "out" / "..").exists() and (study / "figures" / "worst_case_vs_noise.png").stat().st_size > 5000
    if masked:
        assert "**Claim (e) is not established.**" in text and "survives AutoAttack and Square together for none" in text
    else:
        assert "**Claim (e) survives AutoAttack and Square**" in text and "lp on in-domain" in text
