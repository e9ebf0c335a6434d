"""Accuracy under test-time L∞ attacks through the frozen image encoder and a head.

For each task (in-domain and out-of-domain classification, VQA with the question held fixed) a seeded
subset of the test images is attacked at every ε of `evaluate.robust.eps_255` by PGD, maximising the head's
cross-entropy. At the main ε, on the first items of that subset:
- a stronger PGD (`check_steps`) re-attacks the first `check_images` that survived PGD-`steps`; if PGD-`steps`
  has converged, the two agree;
- AutoAttack (APGD-CE + APGD-T, eval/autoattack.py) attacks the first `autoattack.n_images`; robust accuracy
  there is the worst case per item over PGD-`steps` and AutoAttack;
- the gradient-masking checks: the black-box Square attack on the first `masking.square_images`, and PGD at
  `masking.large_eps_255` on the AutoAttack items, which must fool about every one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medvlm.attacks.pgd import linf_ball, random_start_in
from medvlm.eval.autoattack import autoattack_correct, finite_logits, square_plan, white_box_plan
from medvlm.data.cached_features import fuse_vqa, load_feature_split, read_features_meta
from medvlm.data.manifest import load_images, to_pixels
from medvlm.eval.bootstrap import accuracy_interval
from medvlm.tasks import TASKS, eps_key, read_test_manifest
from medvlm.io import DataError, write_items, write_json
from medvlm.models.clip import MedClip, load_clip
from medvlm.models.heads import Head, load_head
from medvlm.params import BootstrapParams, RobustnessParams
from medvlm.runtime import log, seed_everything

Classifier = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""Maps pixels N×1×H×W in [0, 1] (and per-image context, e.g. question embeddings) to logits N×C."""

FEATURE_TOLERANCE = 1e-3
"""Largest |difference| allowed between the encoder's clean features and the cached ones."""


def robust_correct(classify: Classifier, pixels: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None,
                   *, eps: float, step: float, steps: int, random_start: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool N: True where the clean image and every PGD iterate (random start included) are classified right.

    Hand-written rather than `attacks.pgd.pgd_linf`, which returns only the last iterate: here an image
    counts as fooled at the first iterate that fools it (AutoAttack's accounting, never weaker than judging
    the last iterate), and fooled images leave the batch, so later steps get cheaper as accuracy falls.
    With eps = 0 this is exactly clean correctness.
    """
    with torch.no_grad():
        correct = classify(pixels, context).argmax(dim=1) == labels
    if eps == 0:
        return correct
    active = correct.nonzero().squeeze(1)  # only images still classified right can be fooled
    clean = pixels[active]
    lower, upper = linf_ball(clean, eps)
    adversarial = random_start_in(clean, eps, lower, upper, generator) if random_start else clean.clone()
    for iteration in range(steps + 1):
        if active.numel() == 0:
            break
        batch_context = None if context is None else context[active]
        adversarial.requires_grad_(iteration < steps)
        with torch.set_grad_enabled(iteration < steps):
            logits = classify(adversarial, batch_context)
        fooled = logits.argmax(dim=1) != labels[active]
        correct[active[fooled]] = False
        if iteration == steps:
            break
        loss = F.cross_entropy(logits, labels[active], reduction="sum")  # per-image terms: sum keeps each gradient
        (gradient,) = torch.autograd.grad(loss, adversarial)
        keep = ~fooled
        active, lower, upper = active[keep], lower[keep], upper[keep]
        adversarial = torch.clamp(adversarial.detach()[keep] + step * gradient[keep].sign(), lower, upper)
    return correct


def encoder_head_classifier(clip: MedClip, head: Head, vqa: bool) -> Classifier:
    """Pixels -> normalised image embedding (fused with the fixed question embedding for VQA) -> head."""
    def classify(pixels: torch.Tensor, questions: torch.Tensor | None) -> torch.Tensor:
        image = clip.encode_pixels(pixels, normalize=True).float()
        return head(fuse_vqa(image, questions) if vqa else image)
    return classify


def attack_subsets(n_items: int, sizes: tuple[int, ...], seed: int, task_index: int) -> list[torch.Tensor]:
    """Nested seeded subsets (sorted indices) of a test set: the first `size` items of one permutation that
    depends only on (seed, task), so every run with the same seed attacks the same items; all when smaller."""
    generator = torch.Generator().manual_seed(seed * 1000 + task_index)
    order = torch.randperm(n_items, generator=generator)
    return [order[:size].sort().values for size in sizes]


def batched_robust_correct(classify: Classifier, pixels: torch.Tensor, labels: torch.Tensor,
                           context: torch.Tensor | None, *, eps: float, steps: int, robust: RobustnessParams,
                           generator: torch.Generator) -> torch.Tensor:
    """`robust_correct` in batches of `robust.batch_size`, at `eps` in 1/255 units with the step rule and
    random start of `robust`."""
    chunks = []
    for start in range(0, len(labels), robust.batch_size):
        part = slice(start, start + robust.batch_size)
        chunks.append(robust_correct(classify, pixels[part], labels[part],
                                     None if context is None else context[part],
                                     eps=eps / 255, step=robust.step_fraction * eps / 255, steps=steps,
                                     random_start=robust.random_start, generator=generator))
    return torch.cat(chunks)


def strong_pgd_check(classify: Classifier, pixels: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None,
                     weak: torch.Tensor, *, robust: RobustnessParams, generator: torch.Generator) -> torch.Tensor:
    """Bool N (CPU): robust under PGD-`steps` (`weak`, CPU) and under PGD-`check_steps` from a fresh random start.

    Only the images PGD-`steps` did not fool are attacked again: an image counts as robust only if it
    survives both, so the check measures what the stronger attack adds and spends nothing on images that
    are already fooled.
    """
    strong = weak.clone()
    survivors = weak.nonzero().squeeze(1)
    if len(survivors):
        on_device = survivors.to(pixels.device)
        strong[survivors] = batched_robust_correct(classify, pixels[on_device], labels[on_device],
                                             None if context is None else context[on_device],
                                             eps=robust.main_eps_255, steps=robust.check_steps, robust=robust,
                                             generator=generator).cpu()
    return strong


def _survivors_under(attack: Callable[..., Any], pgd_correct: torch.Tensor, first: int,
                     part: Callable[[torch.Tensor], tuple]) -> tuple[torch.Tensor, Any]:
    """Worst case per item over PGD (`pgd_correct`, CPU) and `attack` on the first `first` items; `attack` only
    attacks what PGD left standing, since an item PGD fooled is fooled whatever the other attack does. Returns
    the worst case and the attack's outcome on the survivors (None when there were none)."""
    worst = pgd_correct[:first].clone()
    survivors = worst.nonzero().squeeze(1)
    if len(survivors) == 0:
        return worst, None
    outcome = attack(*part(survivors))
    worst[survivors] = outcome.correct
    return worst, outcome


def worst_case_and_masking_checks(classify: Classifier, pixels: torch.Tensor, labels: torch.Tensor,
                                  context: torch.Tensor | None, *, pgd_correct: torch.Tensor,
                                  robust: RobustnessParams, n_classes: int, seed: int, generator: torch.Generator,
                                  where: str) -> tuple[dict[str, Any], dict[str, tuple[slice, Any]]]:
    """AutoAttack and the masking checks on the first items of the main subset (`pixels`, in its order), with
    `pgd_correct` (CPU) PGD-`steps`' result there at the main ε. AutoAttack and Square attack only the items
    PGD did not fool (the worst case needs nothing else, and it saves most of their cost). Returns the
    metrics and, per new item column, (positions in the main subset, bool values)."""
    eps = robust.main_eps_255 / 255
    aa = slice(0, min(robust.autoattack.n_images, len(labels)))
    square = slice(0, min(robust.masking.square_images, len(labels)))

    def part(rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = rows.to(pixels.device) if isinstance(rows, torch.Tensor) else rows
        return pixels[rows], labels[rows], None if context is None else context[rows]

    settings = robust.autoattack
    plan = white_box_plan(n_classes, iterations=settings.iterations, restarts=settings.restarts,
                          max_targets=settings.max_targets)
    black_box = square_plan(robust.masking.square_queries)
    at_main = f"eps {robust.main_eps_255:g}/255"
    worst, autoattack = _survivors_under(
        lambda *inputs: autoattack_correct(classify, *inputs, eps=eps, plan=plan, seed=seed,
                                           batch_size=settings.batch_size, where=f"{where} AutoAttack {at_main}"),
        pgd_correct, aa.stop, part)
    square_worst, squared = _survivors_under(
        lambda *inputs: autoattack_correct(classify, *inputs, eps=eps, plan=black_box, seed=seed,
                                           batch_size=settings.batch_size, where=f"{where} Square {at_main}"),
        pgd_correct, square.stop, part)
    large = batched_robust_correct(finite_logits(classify, f"{where} PGD eps {robust.masking.large_eps_255:g}/255"),
                             *part(aa), eps=robust.masking.large_eps_255, steps=robust.steps, robust=robust,
                             generator=generator).cpu()
    with torch.no_grad():
        images, answers, questions = part(slice(0, max(aa.stop, square.stop)))
        clean = (classify(images, questions).argmax(dim=1) == answers).cpu()

    def accuracy(values: torch.Tensor) -> float:
        return float(values.float().mean())

    def fooled(worst_: torch.Tensor, pgd: torch.Tensor) -> dict[str, int]:
        return {"pgd_survivors": int(pgd.sum()), "fooled": int(pgd.sum()) - int(worst_.sum())}

    # Times go to the log, not the metrics: the metrics files must be the same bytes for the same params.
    gradient_images = autoattack.gradient_images if autoattack else 0
    aa_seconds, square_seconds = (outcome.seconds if outcome else 0.0 for outcome in (autoattack, squared))
    log.info("%s: AutoAttack %.1f s for %d image-gradient passes (%.2f ms each), Square %.1f s", where,
             aa_seconds, gradient_images, 1000 * aa_seconds / max(gradient_images, 1), square_seconds)
    pgd_key = f"pgd{robust.steps}_accuracy"
    metrics = {
        "autoattack": {"eps_255": robust.main_eps_255, "n": aa.stop, **plan.describe(),
                       "clean_accuracy": accuracy(clean[aa]), pgd_key: accuracy(pgd_correct[aa]),
                       "worst_case_accuracy": accuracy(worst), **fooled(worst, pgd_correct[aa]),
                       "gradient_images": gradient_images},
        "masking": {"square": {"eps_255": robust.main_eps_255, "n": square.stop, **black_box.describe(),
                               "clean_accuracy": accuracy(clean[square]), pgd_key: accuracy(pgd_correct[square]),
                               "worst_case_accuracy": accuracy(square_worst),
                               **fooled(square_worst, pgd_correct[square]),
                               "queries_made": squared.forward_images if squared else 0},
                    "large_eps": {"eps_255": robust.masking.large_eps_255, "n": aa.stop, "steps": robust.steps,
                                  "clean_accuracy": accuracy(clean[aa]), "accuracy": accuracy(large)}},
    }
    columns = {"worst_case": (aa, worst.numpy()), "square": (square, square_worst.numpy()),
               "large_eps": (aa, large.numpy())}
    return metrics, columns


def _task_inputs(task_name: str, *, split: dict[str, torch.Tensor], data: Path, features: Path, data_root: Path,
                 rows: torch.Tensor, image_dim: int, device: torch.device,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, pd.DataFrame]:
    """(pixels, labels, question embeddings or None, cached clean features, the rows' manifest entries) of the
    subset `rows` of `split`."""
    frame = read_test_manifest(task_name, data=data, data_root=data_root, features=features, n_rows=len(split["y"]))
    entries = frame.iloc[rows.numpy()]
    pixels = to_pixels(load_images(data_root, list(entries["image"]))).to(device)
    cached = split["x"][rows]
    questions = cached[:, image_dim:2 * image_dim].to(device) if TASKS[task_name].kind == "vqa" else None
    return pixels, split["y"][rows].to(device), questions, cached[:, :image_dim], entries


def _check_features_match(clip: MedClip, pixels: torch.Tensor, cached: torch.Tensor, where: str) -> None:
    with torch.no_grad():
        fresh = clip.encode_pixels(pixels[:64], normalize=True).float().cpu()
    gap = float((fresh - cached[:64]).abs().max())
    if gap > FEATURE_TOLERANCE:
        raise DataError(f"{where}: cached features differ from the encoder's by up to {gap:.2g}; "
                        "they were not computed with this CLIP (re-run features)")


def attack_heads(*, method: str, data: Path, features: Path, clip: Path, heads: Path, out: Path, items: Path,
                 data_root: Path, robust: RobustnessParams, bootstrap: BootstrapParams, seed: int,
                 device: torch.device) -> dict[str, Any]:
    """Attack `heads/<method>` through the CLIP in `clip` on every test task; write metrics JSON to `out` and the
    per-item correctness (clean and at every radius; NA where a radius did not attack the item) to `items`."""
    seed_everything(seed)
    image_dim = int(read_features_meta(features)["dims"]["cls_id"])
    model = load_clip(clip, device=device).eval().requires_grad_(False)

    results: dict[str, Any] = {"main_eps_255": robust.main_eps_255}
    tables = []
    attacked = 0
    start_time = time.perf_counter()
    for task_index, (task_name, task) in enumerate(TASKS.items()):
        split = load_feature_split(features, task.test_split)
        if robust.main_n_images > len(split["y"]):
            raise DataError(f"evaluate.robust.main_n_images: {robust.main_n_images} is larger than the "
                            f"{task_name} test set ({len(split['y'])} items in {features}/{task.test_split}"
                            ".safetensors)")
        rows, small = attack_subsets(len(split["y"]), (robust.main_n_images, robust.n_images), seed,
                                     task_index)
        pixels, labels, questions, cached, entries = _task_inputs(
            task_name, split=split, data=data, features=features, data_root=data_root, rows=rows,
            image_dim=image_dim, device=device)
        _check_features_match(model, pixels, cached, f"{features}/{task.test_split}.safetensors")
        head = load_head(Path(heads) / method, task.head, device).requires_grad_(False)
        classify = encoder_head_classifier(model, head, vqa=task.kind == "vqa")
        generator = torch.Generator().manual_seed(seed)
        in_small = torch.isin(rows, small)  # the other radii attack these positions of the main subset

        task_results: dict[str, Any] = {"n": len(small), "n_main": len(rows)}
        table = pd.DataFrame({"task": task_name, "item": entries["id"].to_numpy(),
                              "group": entries["image"].to_numpy(), "label": labels.cpu().numpy()})
        correct_at: dict[float, torch.Tensor] = {}
        for eps in tqdm([0.0, *robust.eps_255], desc=f"{method} {task_name} PGD-{robust.steps}", unit="eps"):
            where = torch.ones_like(in_small) if eps in (0.0, robust.main_eps_255) else in_small
            on_device = where.to(pixels.device)
            checked = finite_logits(classify, f"robustness {method} {task_name} PGD eps {eps:g}/255")
            correct_at[eps] = batched_robust_correct(checked, pixels[on_device], labels[on_device],
                                               None if questions is None else questions[on_device], eps=eps,
                                               steps=robust.steps, robust=robust, generator=generator).cpu()
            attacked += len(correct_at[eps]) * (robust.steps if eps else 1)
            key = "clean" if eps == 0 else eps_key(eps)
            column = pd.array([pd.NA] * len(rows), dtype="boolean")
            column[where.numpy()] = correct_at[eps].numpy()
            table[key] = column
            task_results[key] = {
                "accuracy": float(correct_at[eps].float().mean()),
                "n": len(correct_at[eps]),
                "ci": accuracy_interval(correct_at[eps].numpy(), params=bootstrap, seed=seed),
            }
        check = slice(0, robust.check_images)
        weak = correct_at[robust.main_eps_255][check]
        strong = strong_pgd_check(finite_logits(classify, f"robustness {method} {task_name} PGD-{robust.check_steps} "
                                                f"eps {robust.main_eps_255:g}/255"), pixels[check], labels[check],
                                  None if questions is None else questions[check], weak, robust=robust,
                                  generator=generator)
        survivors = int(weak.sum())
        attacked += survivors * robust.check_steps
        task_results["convergence"] = {
            "eps_255": robust.main_eps_255,
            "n": len(weak),
            "steps": robust.steps,
            "accuracy": float(weak.float().mean()),
            "strong_steps": robust.check_steps,
            "strong_accuracy": float(strong.float().mean()),
        }
        strong, columns = worst_case_and_masking_checks(
            classify, pixels, labels, questions, pgd_correct=correct_at[robust.main_eps_255], robust=robust,
            n_classes=head.n_classes, seed=seed, generator=generator, where=f"robustness {method} {task_name}")
        task_results.update(strong)
        for key, (positions, values) in columns.items():
            column = pd.array([pd.NA] * len(rows), dtype="boolean")
            column[positions] = values
            table[key] = column
        attacked += strong["autoattack"]["gradient_images"] + len(columns["large_eps"][1]) * robust.steps
        results[task_name] = task_results
        tables.append(table)
        log.info("%s %s: clean %.3f, %s; PGD-%d vs PGD-%d then PGD-%d at eps %g/255 on %d images: %.3f vs %.3f",
                 method, task_name, task_results["clean"]["accuracy"],
                 ", ".join(f"{eps:g}/255 {task_results[eps_key(eps)]['accuracy']:.3f} (n={task_results[eps_key(eps)]['n']})"
                           for eps in robust.eps_255),
                 robust.steps, robust.steps, robust.check_steps, robust.main_eps_255, len(weak),
                 task_results["convergence"]["accuracy"], task_results["convergence"]["strong_accuracy"])
        aa_result, square_result = task_results["autoattack"], task_results["masking"]["square"]
        log.info("%s %s at eps %g/255 on %d items: PGD-%d %.3f, worst case with AutoAttack (%s) %.3f (%d of %d "
                 "survivors fooled); with Square %.3f on %d (%d of %d fooled); PGD at %g/255 %.3f",
                 method, task_name, robust.main_eps_255, aa_result["n"], robust.steps,
                 aa_result[f"pgd{robust.steps}_accuracy"], "+".join(aa_result["attacks"]),
                 aa_result["worst_case_accuracy"], aa_result["fooled"], aa_result["pgd_survivors"],
                 square_result["worst_case_accuracy"], square_result["n"],
                 square_result["fooled"], square_result["pgd_survivors"], robust.masking.large_eps_255,
                 task_results["masking"]["large_eps"]["accuracy"])
    seconds = time.perf_counter() - start_time
    log.info("%s: %d image-gradient steps (upper bound) in %.1f s (%.0f images x steps/s)", method, attacked,
             seconds, attacked / max(seconds, 1e-9))
    write_items(items, pd.concat(tables, ignore_index=True))
    write_json(out, results)
    return results
