"""Tune RAN on a validation split carved from the training data, then ablate each of its terms there.

For each seed it runs the pipeline's own stage functions in-process in a work folder (download, surrogate,
attack, pretrain, features: the default run's frozen encoder and cached features, and the measured feature
shift), then trains RAN variants on three quarters of each head task's training images and scores the held-out
quarter clean and under the evaluation's PGD at its main radius (medvlm.tuning). Test items are never read.

Phase 1, the sweep: the current default against the adversarial margin at the measured budget and a larger
margin weight. The rule, fixed before any number was seen: the variant with the highest mean validation robust
accuracy replaces the current default only if its paired robust contrast against it holds (Holm within the
sweep, p < 0.05, positive) and its clean contrast is not contradicted; otherwise the current default stays.
Phase 2, the ablation: the chosen variant with each term removed in turn, contrasted against it.

    python benchmarks/tune_ran.py --seeds 0 1 2 --json reports/ran-tuning.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from calibrate_testbed import set_dotted  # the benchmarks folder is on sys.path when a script in it runs
from medvlm.data.cached_features import read_feature_shifts
from medvlm.models.clip import load_clip
from medvlm.params import Params, ParamsError, parse_params
from medvlm.pipeline.attack import attack_stage
from medvlm.pipeline.download import download_stage
from medvlm.pipeline.features import features_stage
from medvlm.pipeline.pretrain import pretrain_stage
from medvlm.pipeline.surrogate import surrogate_stage
from medvlm.runtime import log, resolve_device, setup_logging
from medvlm.tuning import contrast_rows, load_task_data, mean_accuracy, score_variant

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "current default"
SWEEP = {
    REFERENCE: {},
    "margin weight 1": {"w_adv": 1.0},
    "adversarial margin": {"adv_eps": "measured"},
    "adversarial margin, weight 1": {"adv_eps": "measured", "w_adv": 1.0},
}
ABLATION = {"no consistency": {"w_con": 0.0}, "no covariance": {"w_cov": 0.0}, "no margin": {"w_adv": 0.0},
            "no centroid separation": {"centroid_margin": 0.0}}


def build_params(base: dict[str, Any], overrides: list[str], seed: int) -> Params:
    raw = json.loads(json.dumps(base))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY.PATH=VALUE, got {override!r}")
        set_dotted(raw, key, yaml.safe_load(value))
    set_dotted(raw, "seed", seed)
    params = parse_params(raw, source="tuning params")
    if params.pretrain.nproc > 1 or params.surrogate.nproc > 1:
        raise SystemExit("nproc > 1 relaunches a stage script under torchrun; tune with nproc 1")
    return params


def upstream(params: Params, work: Path) -> None:
    """The default run's stages up to the cached features, in `work` (skipped when already there)."""
    data_root = work / "data"
    if (data_root / "features" / "meta.json").is_file():
        log.info("tune: %s already has features, reusing them", work)
        return
    raw, noisy = data_root / "raw", data_root / "noisy"
    download_stage(params=params, out=raw, data_root=data_root)
    surrogate_stage(params=params, data=raw, out=work / "surrogate", live=work / "live" / "surrogate",
                    metrics=work / "surrogate.json", data_root=data_root)
    attack_stage(params=params, surrogate=work / "surrogate", data=raw, out=noisy, metrics=work / "attack.json",
                 data_root=data_root)
    pretrain_stage(params=params, data=noisy, out=work / "clip", live=work / "live" / "pretrain",
                   metrics=work / "pretrain.json", data_root=data_root)
    features_stage(params=params, clip=work / "clip", data=raw, out=data_root / "features", data_root=data_root)


def run_variants(variants: dict[str, dict[str, Any]], params_by_seed: dict[int, Params], works: dict[int, Path],
                 scores: dict, groups: dict) -> None:
    for seed, params in params_by_seed.items():
        work, device = works[seed], resolve_device(params.device)
        clip = load_clip(work / "clip", device=device)
        tasks = load_task_data(features=work / "data" / "features", data=work / "data" / "raw",
                               data_root=work / "data", seed=seed, device=device)
        groups[seed] = {data.split.task: data.split.groups for data in tasks}
        for name, change in variants.items():
            settings = params.heads.ran.model_copy(update=change)
            settings = type(settings).model_validate(settings.model_dump())  # re-validated
            started = time.perf_counter()
            scores.setdefault(name, {})[seed] = {
                data.split.task: score_variant(method="ran", settings=settings, clip=clip, task_data=data,
                                               robust=params.evaluate.robust, seed=seed, device=device)
                for data in tasks}
            log.info("tune: seed %d, %s: %s (%.0f s)", seed, name, ", ".join(
                f"{task} clean {result['clean'].mean():.3f} robust {result['robust'].mean():.3f}"
                for task, result in scores[name][seed].items()), time.perf_counter() - started)


def table(rows: list[dict[str, Any]], scores: dict, reference: str) -> str:
    lines = ["| variant | clean (mean ± sd) | robust (mean ± sd) | metric | change vs " + reference
             + " | 95 % interval | Holm p | verdict | MDD |", "|" + "---|" * 9]
    base_clean, base_robust = (mean_accuracy(scores, reference, metric) for metric in ("clean", "robust"))
    lines.append(f"| {reference} (reference) | {base_clean[0]:.3f} ± {base_clean[1]:.3f} | "
                 f"{base_robust[0]:.3f} ± {base_robust[1]:.3f} | | | | | | |")
    for row in rows:
        clean, robust = (mean_accuracy(scores, row["variant"], metric) for metric in ("clean", "robust"))
        lines.append(f"| {row['variant']} | {clean[0]:.3f} ± {clean[1]:.3f} | {robust[0]:.3f} ± {robust[1]:.3f} | "
                     f"{row['metric']} | {row['estimate']:+.3f} | [{row['low']:+.3f}, {row['high']:+.3f}] | "
                     f"{row['p_holm']:.3f} | {row['verdict']} | {row['mdd']:.3f} |")
    return "\n".join(lines)


def choose(rows: list[dict[str, Any]], scores: dict) -> str:
    best = max((name for name in scores if name != REFERENCE), key=lambda name: mean_accuracy(scores, name, "robust")[0])
    verdicts = {(row["variant"], row["metric"]): row["verdict"] for row in rows}
    if verdicts[(best, "robust")] == "holds" and verdicts[(best, "clean")] != "contradicted":
        return best
    return REFERENCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY.PATH=YAML_VALUE")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tune-ran"), help="per-seed pipeline folders (reused)")
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    base = yaml.safe_load(args.params.read_text())
    try:
        params_by_seed = {seed: build_params(base, args.overrides, seed) for seed in args.seeds}
    except ParamsError as exc:
        raise SystemExit(f"error: {exc}") from None
    started = time.perf_counter()
    works = {seed: args.work / f"seed-{seed}" for seed in args.seeds}
    for seed, params in params_by_seed.items():
        upstream(params, works[seed])
    log.info("tune: upstream stages done in %.0f s", time.perf_counter() - started)

    scores: dict = {}
    groups: dict = {}
    run_variants(SWEEP, params_by_seed, works, scores, groups)
    sweep_rows = contrast_rows(scores=scores, reference=REFERENCE, groups=groups)
    chosen = choose(sweep_rows, scores)
    ablation = {chosen: SWEEP[chosen]} | {name: SWEEP[chosen] | change for name, change in ABLATION.items()}
    if SWEEP[chosen].get("adv_eps") == "measured":
        ablation["clean margin inputs"] = SWEEP[chosen] | {"adv_eps": 0.0}
    ablation_scores: dict = {chosen: scores[chosen]}
    run_variants({name: change for name, change in ablation.items() if name != chosen}, params_by_seed, works,
                 ablation_scores, groups)
    ablation_rows = contrast_rows(scores=ablation_scores, reference=chosen, groups=groups, sign=-1)

    print(f"\nRAN on the validation split, seeds {args.seeds} ({time.perf_counter() - started:.0f} s); accuracy is "
          "the mean over the head tasks; robust: PGD at the evaluation's main radius\n")
    print("Sweep:\n\n" + table(sweep_rows, scores, REFERENCE))
    print(f"\nChosen: {chosen} {SWEEP[chosen]}\n")
    print("Ablation (sign -1: removing a term is expected to lower accuracy):\n\n"
          + table(ablation_rows, ablation_scores, chosen))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "benchmark": "tune_ran", "seeds": args.seeds, "overrides": args.overrides, "sweep": SWEEP,
            "ablation": ablation, "chosen": chosen, "sweep_contrasts": sweep_rows, "ablation_contrasts": ablation_rows,
            "accuracy": {name: {metric: mean_accuracy(all_scores, name, metric) for metric in ("clean", "robust")}
                         for all_scores in (scores, ablation_scores) for name in all_scores},
            "measured_adv_eps": {seed: {task: shift["adv_eps"] for task, shift in
                                        read_feature_shifts(works[seed] / "data" / "features").items()}
                                 for seed in args.seeds}}, indent=2))


if __name__ == "__main__":
    main()
