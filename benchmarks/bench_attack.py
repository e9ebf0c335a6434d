"""Image PGD throughput: the project's `pgd_linf` against torchattacks' PGD on the same surrogate.

Both attack the surrogate wrapped as a classifier over a fixed bank of captions
(logits = scale · image_emb @ text_bank.T) with the same untargeted cross-entropy, batch, ε, step and number
of steps, on the same seeded images and labels (the clean predictions). Ours runs twice: in float32 (the
pipeline's default) and with `autocast_bf16=True`; each attack's success (top-1 caption changed, similarity
drop) is printed beside its throughput, so a faster variant can be seen not to be a weaker one.
torchattacks is not a project dependency: `make bench` installs it with `--no-deps` into `.bench-site/`
(never into the venv) and puts it on PYTHONPATH for this script only; without it the script says so and
skips the comparison.

    make bench            # or: PYTHONPATH=.bench-site python benchmarks/bench_attack.py --surrogate models/surrogate
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import typer
from torch import nn

from medvlm.attacks.pgd import pgd_linf
from medvlm.models.clip import MedClip, create_clip, load_clip
from medvlm.runtime import resolve_device

TEXT_BANK = (
    "No acute cardiopulmonary abnormality.",
    "Moderate cardiomegaly.",
    "Small left pleural effusion.",
    "Large right pleural effusion.",
    "A small nodule in the right upper zone.",
    "Moderate left pneumothorax.",
    "Extensive consolidation in the left lower zone.",
    "There is a large mass in the left upper zone.",
)


class CaptionBankClassifier(nn.Module):
    """The surrogate as a classifier: one logit per caption of a fixed bank (what torchattacks expects)."""

    def __init__(self, clip: MedClip, captions: tuple[str, ...]):
        super().__init__()
        self.clip = clip
        with torch.no_grad():
            self.register_buffer("bank", clip.encode_texts(list(captions)))
            self.register_buffer("scale", clip.logit_scale().detach())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.scale * self.clip.encode_pixels(pixels) @ self.bank.T


def _timed(runs, repeats: int) -> list[float]:
    """Median seconds of `repeats` calls of each of `runs`, after one warm-up call each.

    The calls alternate, so load from other processes on a shared machine falls on all alike.
    """
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, record in zip(runs, times):
            started = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            record.append(time.perf_counter() - started)
    return [statistics.median(record) for record in times]


def _success(classifier: CaptionBankClassifier, images: torch.Tensor, adversarial: torch.Tensor,
             labels: torch.Tensor) -> dict[str, float]:
    """How well an attack did: the fraction of images whose top-1 caption of the bank changed, and the mean
    drop of the cosine similarity to the clean top-1 caption."""
    with torch.no_grad():
        def similarity(pixels: torch.Tensor) -> torch.Tensor:
            return (classifier.clip.encode_pixels(pixels) @ classifier.bank.T).gather(1, labels[:, None]).squeeze(1)
        flipped = (classifier(adversarial).argmax(dim=1) != labels).float().mean().item()
        drop = (similarity(images) - similarity(adversarial)).mean().item()
    return {"top1_changed": flipped, "similarity_drop": drop}


def main(
    surrogate: Path = typer.Option(Path("models/surrogate"), help="surrogate folder; a fresh tiny model if absent"),
    batch: int = typer.Option(128, help="images per attack call"),
    size: int = typer.Option(64, help="image size (used when no surrogate folder exists)"),
    steps: int = typer.Option(10, help="PGD steps"),
    eps_255: float = typer.Option(2.0, help="L-inf budget in 1/255 units"),
    step_255: float = typer.Option(0.5, help="step in 1/255 units"),
    repeats: int = typer.Option(5, help="timed calls per implementation (median reported)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    try:
        import torchattacks
    except ImportError:
        typer.echo("skipped: torchattacks is not importable. `make bench` installs it with --no-deps into "
                   ".bench-site/; or run PYTHONPATH=<folder with torchattacks> python benchmarks/bench_attack.py")
        _write_json(json_out, {"benchmark": "attack", "skipped": "torchattacks is not importable"})
        raise typer.Exit(0) from None
    target = resolve_device(device)
    torch.manual_seed(0)
    clip = (load_clip(surrogate, target) if (surrogate / "clip.json").is_file()
            else create_clip("medvlm-tiny-rn", image_size=size, device=target).eval())
    classifier = CaptionBankClassifier(clip, TEXT_BANK).eval()
    images = torch.rand(batch, 1, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    images = images.to(target)
    with torch.no_grad():
        labels = classifier(images).argmax(dim=1)
    eps, step = eps_255 / 255, step_255 / 255

    def ours(random_start: bool = True, bf16: bool = False) -> torch.Tensor:
        objective = lambda pixels: F.cross_entropy(classifier(pixels), labels, reduction="none")  # noqa: E731
        return pgd_linf(objective, images, eps=eps, step=step, steps=steps, random_start=random_start,
                        generator=torch.Generator().manual_seed(1), autocast_bf16=bf16)

    def theirs(random_start: bool = True) -> torch.Tensor:
        return torchattacks.PGD(classifier, eps=eps, alpha=step, steps=steps, random_start=random_start)(images, labels)

    # Same attack: without the random start both take the same signed-gradient steps.
    agreement = (ours(False) - theirs(False)).abs().max().item() * 255
    runs = {"medvlm pgd_linf": ours, "medvlm pgd_linf bf16": lambda: ours(bf16=True), "torchattacks PGD": theirs}
    seconds = dict(zip(runs, _timed(list(runs.values()), repeats)))
    success = {name: _success(classifier, images, run(), labels) for name, run in runs.items()}
    reference = seconds["torchattacks PGD"]
    typer.echo(f"device {target}, threads {torch.get_num_threads()}, batch {batch} × {clip.image_size} px, "
               f"{steps} steps, eps {eps_255}/255, step {step_255}/255, median of {repeats}")
    typer.echo(f"max |ours - torchattacks| without random start: {agreement:.3g}/255")
    for name, taken in seconds.items():
        typer.echo(f"{name:<22}{batch / taken:8.1f} img/s   ratio {reference / taken:.3f}   "
                   f"top-1 changed {success[name]['top1_changed']:.3f}   "
                   f"similarity drop {success[name]['similarity_drop']:.4f}")
    typer.echo(f"(torchattacks {torchattacks.__version__}; ratio = ours / torchattacks throughput)")
    typer.echo(f"throughput ratio (ours / torchattacks): {reference / seconds['medvlm pgd_linf']:.3f}")
    typer.echo(f"throughput ratio (ours bf16 / torchattacks): {reference / seconds['medvlm pgd_linf bf16']:.3f}")
    _write_json(json_out, {"benchmark": "attack", "device": str(target), "batch": batch, "steps": steps,
                           "ours_img_per_s": batch / seconds["medvlm pgd_linf"],
                           "ours_bf16_img_per_s": batch / seconds["medvlm pgd_linf bf16"],
                           "torchattacks_img_per_s": batch / reference,
                           "ratio": reference / seconds["medvlm pgd_linf"],
                           "ratio_bf16": reference / seconds["medvlm pgd_linf bf16"],
                           "success": success, "max_abs_diff_255": agreement})


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    typer.run(main)
