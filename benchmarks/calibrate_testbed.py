"""Calibrate the synthetic testbed's difficulty: linear-probe accuracy at noise_ratio 0 on the in-domain test,
out-of-domain test and VQA test sets, for a grid of `data.synthetic` settings and out-of-domain shifts.

For each --difficulty row and seed it runs the pipeline's own stage functions in-process, in a temporary folder:
the download stage (generate the data), the pretrain stage on the clean pairs, the features stage, and the
finetune stage for `lp`; then it scores the lp heads on the cached test features. The pretrain stage reads the
download stage's folder directly: at noise_ratio 0 the attack stage would write the same pairs in the same
order, all marked unperturbed, so the trained CLIP is the one `dvc repro` trains at noise_ratio 0 (and no
surrogate is needed). The encoder never sees out-of-domain images, so each --shift value reuses it: the
cls_ood test split is regenerated at that shift (split_specs + generate_split, as the download stage writes
it), embedded by the features stage's `embed_images`, and scored with the same cls_id head. At the download's
own shift the regenerated images and features are checked against what the stages wrote.

Cost: about one default pre-training per (difficulty, seed). Prints a markdown table of mean ± sd over seeds.

    python benchmarks/calibrate_testbed.py --seeds 0 1 2 --difficulty "lesion_contrast=1.0" \\
        --difficulty "lesion_contrast=0.5,lesion_size=0.8,heart_overlap=0.5" --shift 0.2 0.35 0.5 0.7 1.0 \\
        --set data.cls_test=2000 --set pretrain.epochs=8 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medvlm.data.cached_features import load_feature_split
from medvlm.data.manifest import load_images, read_manifest, save_png
from medvlm.data.synthetic import generate_split, split_specs
from medvlm.engine.features import embed_images
from medvlm.eval.evaluate import predict_probabilities
from medvlm.models.clip import load_clip
from medvlm.models.heads import load_head
from medvlm.params import Params, ParamsError, SyntheticParams, parse_params
from medvlm.pipeline.download import download_stage
from medvlm.pipeline.features import features_stage
from medvlm.pipeline.finetune import finetune_stage
from medvlm.pipeline.pretrain import pretrain_stage
from medvlm.runtime import log, resolve_device, setup_logging

REPO = Path(__file__).resolve().parents[1]


def parse_assignments(text: str, what: str) -> dict[str, Any]:
    """'a=1,b=0.5' -> {'a': 1, 'b': 0.5} (values read as YAML)."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{what}: expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = yaml.safe_load(value)
    return pairs


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section.setdefault(part, {})
    section[leaf] = value


def build_params(base: dict[str, Any], overrides: list[str], difficulty: dict[str, Any], seed: int) -> Params:
    """params.yaml + --set overrides + one difficulty row, at noise_ratio 0 with lp heads only; validated."""
    raw = copy.deepcopy(base)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY.PATH=VALUE, got {override!r}")
        set_dotted(raw, key, yaml.safe_load(value))
    for key, value in difficulty.items():
        set_dotted(raw, f"data.synthetic.{key}", value)
    set_dotted(raw, "seed", seed)
    set_dotted(raw, "noise_ratio", 0.0)
    set_dotted(raw, "heads.methods", ["lp"])
    params = parse_params(raw, source="calibration params")
    if params.pretrain.nproc > 1:
        raise SystemExit("pretrain.nproc > 1 relaunches a stage script under torchrun; calibrate with nproc 1")
    if any(source.source != "synthetic" for source in params.data.sources().values()):
        raise SystemExit("every data source must be synthetic: the calibration varies the synthetic generator")
    return params


def accuracy(head_dir: Path, task: str, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device) -> float:
    probabilities = predict_probabilities(load_head(head_dir, task, device), x, batch_size)
    return float((probabilities.argmax(axis=1) == y.numpy()).mean())


def ood_split(params: Params, shift: float) -> tuple[np.ndarray, list[str]]:
    """The cls_ood test images and labels the download stage writes when data.synthetic.shift is `shift`."""
    data = params.data.model_copy(update={"synthetic": params.data.synthetic.model_copy(update={"shift": shift})})
    spec = next(spec for spec in split_specs(data) if spec.kind == "cls_ood")
    batches = list(generate_split(spec, params.seed, data.image_size))
    return np.concatenate([batch.images for batch in batches]), [label for batch in batches for label in batch.labels]


def embed_ood(params: Params, clip, images: np.ndarray, data_root: Path, shift: float) -> torch.Tensor:
    """Features of regenerated out-of-domain images, through PNG files and the features stage's `embed_images`."""
    folder = f"ood-shift-{shift:g}"
    paths = [f"{folder}/{index:06d}.png" for index in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        save_png(image, data_root / path)
    return embed_images(clip, data_root, paths, params.features.batch_size, what=f"cls_ood shift {shift:g}")


def run_setting(params: Params, shifts: list[float], work: Path) -> dict[str, Any]:
    """Train and score one (difficulty, seed); return the accuracies and the seconds each step took."""
    data_root, seconds = work / "data", {}
    raw, features, clip_dir, heads = data_root / "raw", data_root / "features", work / "clip", work / "heads"
    device = resolve_device(params.device)

    def timed(name: str, function, **kwargs):
        started = time.perf_counter()
        result = function(params=params, **kwargs)
        seconds[name] = time.perf_counter() - started
        log.info("calibrate: %s took %.1f s", name, seconds[name])
        return result

    meta = timed("download", download_stage, out=raw, data_root=data_root)
    timed("pretrain", pretrain_stage, data=raw, out=clip_dir, live=work / "live" / "pretrain",
          metrics=work / "pretrain.json", data_root=data_root, checkpoints=None)
    timed("features", features_stage, clip=clip_dir, data=raw, out=features, data_root=data_root)
    timed("finetune", finetune_stage, method="lp", features=features, out=heads / "lp", live=work / "live" / "lp")

    started = time.perf_counter()
    batch_size = params.evaluate.batch_size
    splits = {name: load_feature_split(features, name) for name in ("cls_id_test", "cls_ood_test", "vqa_test")}
    result: dict[str, Any] = {
        "cls_id": accuracy(heads / "lp", "cls_id", splits["cls_id_test"]["x"], splits["cls_id_test"]["y"],
                           batch_size, device),
        "vqa": accuracy(heads / "lp", "vqa", splits["vqa_test"]["x"], splits["vqa_test"]["y"], batch_size, device),
        "cls_ood": {},
    }
    clip = load_clip(clip_dir, device)
    own_shift = params.data.synthetic.shift
    label_index = {label: index for index, label in enumerate(meta["labels"])}
    for shift in sorted({*shifts, own_shift}):
        images, labels = ood_split(params, shift)
        x = embed_ood(params, clip, images, data_root, shift)
        y = torch.tensor([label_index[label] for label in labels])
        if shift == own_shift:  # the regenerated split is the one the stages wrote and embedded
            written = read_manifest(raw, "cls_ood", data_root, split="test")
            if not (np.array_equal(load_images(data_root, list(written["image"])).numpy(), images)
                    and list(written["label"]) == labels):
                raise RuntimeError(f"regenerated cls_ood test split at shift {shift} differs from the download's")
            if not torch.allclose(x, splits["cls_ood_test"]["x"], atol=1e-5):
                raise RuntimeError("re-extracted cls_ood features differ from the features stage's")
        if shift in shifts:
            result["cls_ood"][f"{shift:g}"] = accuracy(heads / "lp", "cls_id", x, y, batch_size, device)
    seconds["score"] = time.perf_counter() - started
    seconds["total"] = sum(seconds.values())
    result["seconds"] = seconds
    return result


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def markdown_table(rows: list[dict[str, Any]], shifts: list[float] | None, seeds: list[int]) -> str:
    """One row per difficulty; a cls_ood column per shift (None: one column, each row's own shift)."""
    keys = [f"{shift:g}" for shift in shifts] if shifts is not None else [None]
    columns = ["cls_id", "vqa", *(f"cls_ood s={key}" if key else "cls_ood (row's shift)" for key in keys)]
    lines = [f"| difficulty | {' | '.join(columns)} |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        runs = [row["seeds"][str(seed)] for seed in seeds]
        cells = [mean_sd([run["cls_id"] for run in runs]), mean_sd([run["vqa"] for run in runs]),
                 *(mean_sd([run["cls_ood"][key] if key else next(iter(run["cls_ood"].values())) for run in runs])
                   for key in keys)]
        lines.append(f"| {row['label']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="params seeds (default: 0 1 2)")
    parser.add_argument("--difficulty", action="append", default=[],
                        help="one grid row: comma-separated data.synthetic KEY=VALUE (repeatable; default: the defaults)")
    parser.add_argument("--shift", type=float, nargs="+", default=None,
                        help="out-of-domain shifts to score (default: each row's data.synthetic.shift)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="any other param, KEY.PATH=YAML_VALUE (repeatable)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="base params file")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    setup_logging()
    base = yaml.safe_load(args.params.read_text())
    grid = [parse_assignments(row, "--difficulty") for row in (args.difficulty or [""])]
    for difficulty in grid:  # fail on a typo before hours of training
        try:
            build_params(base, args.overrides, difficulty, args.seeds[0])
        except ParamsError as exc:
            raise SystemExit(f"error: {exc}") from None

    rows = []
    started = time.perf_counter()
    for number, difficulty in enumerate(grid, start=1):
        label = ", ".join(f"{key}={value}" for key, value in difficulty.items()) or "defaults"
        row: dict[str, Any] = {"label": label, "difficulty": difficulty, "seeds": {}}
        for seed in args.seeds:
            params = build_params(base, args.overrides, difficulty, seed)
            shifts = args.shift if args.shift is not None else [params.data.synthetic.shift]
            log.info("calibrate: row %d/%d (%s), seed %d", number, len(grid), label, seed)
            with tempfile.TemporaryDirectory(prefix="calibrate-") as work:
                run = run_setting(params, shifts, Path(work))
            row["seeds"][str(seed)] = run
            log.info("calibrate: row %d/%d seed %d in %.0f s: cls_id %.3f, vqa %.3f, cls_ood %s", number, len(grid),
                     seed, run["seconds"]["total"], run["cls_id"], run["vqa"],
                     ", ".join(f"s={shift} {acc:.3f}" for shift, acc in run["cls_ood"].items()))
        row["synthetic"] = params.data.synthetic.model_dump()
        rows.append(row)

    print(f"\nLinear-probe accuracy at noise_ratio 0, mean ± sd over seeds {args.seeds} "
          f"({time.perf_counter() - started:.0f} s; classification chance 0.167; "
          f"data.synthetic defaults: {SyntheticParams().model_dump()}):\n")
    print(markdown_table(rows, args.shift, args.seeds))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"benchmark": "calibrate_testbed", "seeds": args.seeds, "shifts": args.shift,
                                             "overrides": args.overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
