"""One table of every `make bench` result, each against its reference or budget (reads the benches' JSON).

Ratio column: for throughputs, ours / the reference (>= 1: at least as fast); for times and memory,
measured / budget (<= 1: within budget). The "before" column holds bench_repro's figures at its `--before`
revision, measured in the same run. Missing or skipped benchmarks are listed as such.

    python benchmarks/summary.py .bench-results
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

Row = tuple[str, str, str, str, str]
"""benchmark, ours, reference / budget, ratio, meets"""


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(what: str, result: dict | None) -> list[Row]:
    reason = "not run" if result is None else f"skipped: {result['skipped']}"
    return [(what, "-", "-", "-", reason)]


def _verdict(ratio: float, higher_is_better: bool) -> str:
    return "yes" if (ratio >= 1.0 if higher_is_better else ratio <= 1.0) else "NO"


def pretrain_rows(result: dict | None) -> list[Row]:
    what = "pre-training samples/s"
    if result is None or "skipped" in result:
        return _missing(what, result)
    return [(f"{what} ({result['model']}, {result['device']}, batch {result['batch']})",
             f"{result['ours_samples_per_s']:.1f}",
             f"open_clip_train --workers {result['open_clip_train_workers']}: "
             f"{result['open_clip_train_samples_per_s']:.1f}",
             f"{result['ratio']:.2f}", _verdict(result["ratio"], True))]


def attack_rows(result: dict | None) -> list[Row]:
    what = "image PGD img/s"
    if result is None or "skipped" in result:
        return _missing(what, result)
    return [(f"{what} ({result['device']}, batch {result['batch']}, {result['steps']} steps)",
             f"{result['ours_img_per_s']:.1f}", f"torchattacks PGD: {result['torchattacks_img_per_s']:.1f}",
             f"{result['ratio']:.2f}", _verdict(result["ratio"], True))] + (
        [(f"{what}, bf16 autocast ({result['device']}, batch {result['batch']}, {result['steps']} steps)",
          f"{result['ours_bf16_img_per_s']:.1f}", f"torchattacks PGD: {result['torchattacks_img_per_s']:.1f}",
          f"{result['ratio_bf16']:.2f}", _verdict(result["ratio_bf16"], True))] if "ratio_bf16" in result else [])


def heads_rows(result: dict | None) -> list[Row]:
    if result is None or "skipped" in result:
        return _missing("head training", result)
    rows = []
    for method, times in result["methods"].items():
        budget = times["budget_s"]
        what = f"head training {method} s ({result['n']} x {result['dim']}, best)"
        if budget:
            ratio = times["best_s"] / budget
            rows.append((what, f"{times['best_s']:.2f}", f"budget {budget:g}", f"{ratio:.2f}", _verdict(ratio, False)))
        else:
            rows.append((what, f"{times['best_s']:.2f}", "no budget", "-", "-"))
    return rows


def repro_rows(result: dict | None) -> list[tuple[Row, str]]:
    """Each row with the same figure at the `--before` revision ("-" when it was not measured)."""
    if result is None or "skipped" in result:
        return [(row, "-") for row in _missing("dvc repro", result)]
    old = result.get("before") or {}

    def was(key: str, digits: int = 0) -> str:
        return f"{old[key]:.{digits}f}" if key in old else "-"

    wall, peak, noop = result["wall_s"], result["peak_tree_mb"], result["noop_s"]
    label = f" ({len(result['overrides'])} params overridden)" if result["overrides"] else ""
    rows = [
        ((f"dvc repro wall s, default pipeline{label}", f"{wall:.0f}", "aim 180 (budget 300)",
          f"{wall / 180:.2f}", _verdict(wall / 300, False) + (" (aim met)" if wall <= 180 else " (aim missed)")),
         was("wall_s")),
        (("dvc repro peak memory MB (process tree)", f"{peak:.0f}", "budget 4096", f"{peak / 4096:.2f}",
          _verdict(peak / 4096, False)), was("peak_tree_mb")),
        (("no-op dvc repro s", f"{noop:.1f}", "budget 1.5", f"{noop / 1.5:.2f}", _verdict(noop / 1.5, False)),
         was("noop_s", 1)),
        (("dvc exp run -S noise_ratio=0.1 s", f"{result['exp_run_s']:.0f}", "budget 150",
          f"{result['exp_run_s'] / 150:.2f}", _verdict(result["exp_run_s"] / 150, False)), was("exp_run_s")),
    ]
    for entry in result.get("sweep", []):
        threads = f", OMP_NUM_THREADS={entry['omp_num_threads']}" if entry["omp_num_threads"] else ""
        each = "/".join(f"{seconds:.0f}" for seconds in entry["experiment_s"])
        rows.append(((f"queued sweep of {len(entry['ratios'])} exp runs, -j {entry['jobs']}{threads}: all s "
                      f"(each s)", f"{entry['wall_s']:.0f} ({each})", "no budget", "-", "-"), "-"))
    return rows


def mfu_rows(result: dict | None) -> list[Row]:
    what = "GPU MFU, ViT-B/16 CLIP step, 224 px, bf16"
    if result is None or "skipped" in result:
        return _missing(what, result)
    peak = f"{result['peak_tflops']:.0f} TFLOP/s peak" if result["peak_tflops"] else "peak unknown"
    mfu = f"{result['mfu']:.3f}" if result["mfu"] is not None else "n/a"
    return [(f"{what} ({result['device_name']}, batch {result['batch']})",
             f"{result['achieved_tflops']:.1f} TFLOP/s", peak, mfu, "-")]


def main(folder: Path = typer.Argument(Path(".bench-results"), help="folder with the benches' JSON files")) -> None:
    others = [*pretrain_rows(_load(folder, "pretrain")), *attack_rows(_load(folder, "attack")),
              *heads_rows(_load(folder, "heads"))]
    repro = _load(folder, "repro")
    rows = [(row, "-") for row in others] + repro_rows(repro) + [(row, "-") for row in mfu_rows(_load(folder, "mfu"))]
    before = f"before ({repro['before']['rev']})" if repro and repro.get("before") else "before"
    header = ("benchmark", before, "ours", "reference / budget", "ratio", "meets")
    table = [(name, was, ours, reference, ratio, meets) for (name, ours, reference, ratio, meets), was in rows]
    widths = [max(len(row[i]) for row in (header, *table)) for i in range(len(header))]
    print("\nmake bench: ratio = ours / reference for throughputs (>= 1 meets), measured / budget for times and "
          "memory (<= 1 meets); MFU = achieved / peak")
    for row in (header, tuple("-" * width for width in widths), *table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    typer.run(main)
