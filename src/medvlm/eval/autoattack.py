"""AutoAttack (APGD-CE, APGD-T) and the black-box Square attack through the frozen image encoder and a head,
from the `pyautoattack` package (Croce and Hein's code, repackaged).

The attacked model is `classify` wrapped as an nn.Module of [0, 1] pixels alone, in eval mode. AutoAttack
re-batches the items it is given, so per-item context (a VQA question's embedding) cannot travel beside
its image. Instead the module finds each input's item by its image: an input AutoAttack passes lies within
ε (L∞) of its own clean image, and farther than ε from every other image of the call when the clean images
are more than 2ε apart. Items are split into rounds where that holds (the questions of one image go to
different rounds), one AutoAttack call per round, so the attack keeps its batches; attacking one question
group per call would run the VQA items almost one by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medvlm.io import DataError

Classifier = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

PACKAGE = "pyautoattack"


def _autoattack_class() -> type:
    try:
        from pyautoattack import AutoAttack  # noqa: PLC0415  (only the robustness stage needs it)
    except ImportError:
        raise DataError("AutoAttack needs the pyautoattack package, which is not installed: "
                        "pip install pyautoattack (or run `make venv`)") from None
    return AutoAttack


def package_version() -> str:
    _autoattack_class()
    import pyautoattack  # noqa: PLC0415

    return f"{PACKAGE} {pyautoattack.__version__}"


def finite_logits(classify: Classifier, where: str) -> Classifier:
    """`classify` that stops the attack, naming `where`, as soon as a logit is NaN or infinite."""
    def checked(pixels: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        logits = classify(pixels, context)
        if not torch.isfinite(logits).all():
            raise DataError(f"{where}: NaN or infinite logits during the attack")
        return logits
    return checked


class ContextByImage(nn.Module):
    """`classify(pixels, context)` as a module of pixels alone: each input's context row is that of the clean
    image nearest to it (L∞), which must lie within `eps`. It counts the images it sees, with and without an
    input gradient, for the cost figures."""

    def __init__(self, classify: Classifier, images: torch.Tensor, context: torch.Tensor | None, eps: float):
        super().__init__()
        self.classify, self.images, self.context, self.eps = classify, images.flatten(1), context, eps
        self.gradient_images = self.forward_images = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and pixels.requires_grad:
            self.gradient_images += len(pixels)
        else:
            self.forward_images += len(pixels)
        if self.context is None:
            return self.classify(pixels, None)
        with torch.no_grad():
            distance = torch.cdist(pixels.detach().flatten(1), self.images, p=float("inf"))
            nearest, item = distance.min(dim=1)
        if bool((nearest > self.eps * (1 + 1e-4) + 1e-6).any()):
            raise RuntimeError(f"an attacked image lies {float(nearest.max()):.3g} from every clean image, beyond "
                               f"the ball of radius {self.eps:.3g}")
        return self.classify(pixels, self.context[item])


def separable_rounds(pixels: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """Index tensors that split the items into rounds whose clean images are pairwise more than 2·eps apart
    (L∞), greedily in item order; identical images (several questions on one image) land in different rounds."""
    distance = torch.cdist(pixels.flatten(1), pixels.flatten(1), p=float("inf"))
    remaining, rounds = list(range(len(pixels))), []
    while remaining:
        chosen: list[int] = []
        for item in remaining:
            if all(float(distance[item, other]) > 2 * eps for other in chosen):
                chosen.append(item)
        rounds.append(torch.tensor(chosen))
        remaining = [item for item in remaining if item not in set(chosen)]
    return rounds


@dataclass(frozen=True)
class AttackOutcome:
    correct: torch.Tensor
    """Bool N (CPU): right on the clean image and on everything the attacks found."""
    gradient_images: int
    """Images × passes that took an input gradient (one per attack step and image)."""
    forward_images: int
    """Images × passes without a gradient (Square's queries, the clean and final checks)."""
    seconds: float


@dataclass(frozen=True)
class AttackPlan:
    """Which AutoAttack attacks run, and how hard (recorded in the metrics beside the result)."""
    attacks: tuple[str, ...]
    iterations: int
    restarts: int
    targets: int
    square_queries: int = 0

    def describe(self) -> dict:
        described = {"package": package_version(), "attacks": list(self.attacks)}
        if "square" in self.attacks:
            return described | {"queries": self.square_queries}
        return described | {"iterations": self.iterations, "restarts": self.restarts, "targets": self.targets}


def white_box_plan(n_classes: int, *, iterations: int, restarts: int, max_targets: int) -> AttackPlan:
    """APGD-CE + APGD-T on min(max_targets, n_classes - 1) target classes. APGD-T's targeted DLR loss reads the
    fourth-largest logit, so with fewer than four classes APGD-CE runs alone."""
    if n_classes < 4:
        return AttackPlan(("apgd-ce",), iterations, restarts, 0)
    return AttackPlan(("apgd-ce", "apgd-t"), iterations, restarts, min(max_targets, n_classes - 1))


def square_plan(queries: int) -> AttackPlan:
    return AttackPlan(("square",), 0, 1, 0, queries)


def autoattack_correct(classify: Classifier, pixels: torch.Tensor, labels: torch.Tensor,
                       context: torch.Tensor | None, *, eps: float, plan: AttackPlan, seed: int, batch_size: int,
                       where: str) -> AttackOutcome:
    """Attack with `plan` in the L∞ ball of radius `eps` (pixels in [0, 1]); an item is correct where the clean
    image and everything the attacks find are classified right."""
    autoattack = _autoattack_class()
    checked = finite_logits(classify, where)
    correct = torch.zeros(len(labels), dtype=torch.bool)
    gradient_images = forward_images = 0
    started = time.perf_counter()
    for rows in ([torch.arange(len(labels))] if context is None else separable_rounds(pixels, eps)):
        on_device = rows.to(pixels.device)
        model = ContextByImage(checked, pixels[on_device], None if context is None else context[on_device], eps)
        adversary = autoattack(model, attacks=list(plan.attacks), device=pixels.device, eps=eps, norm="Linf",
                               seed=seed, version="custom")
        adversary.verbose = False
        for attack in (adversary.apgd, adversary.apgd_targeted):
            attack.n_iter, attack.n_restarts = plan.iterations, plan.restarts
        adversary.apgd_targeted.n_target_classes = plan.targets
        adversary.square.n_queries = plan.square_queries
        _, predicted = adversary.run_standard_evaluation(pixels[on_device], labels[on_device], batch_size=batch_size)
        correct[rows] = (predicted == labels[on_device]).cpu()
        gradient_images += model.gradient_images
        forward_images += model.forward_images
    return AttackOutcome(correct, gradient_images, forward_images, time.perf_counter() - started)
