"""Image PGD throughput: the project's `pgd_linf` against torchattacks' PGD on the same surrogate.

Both attack the surrogate wrapped as a classifier over a fixed bank of captions
(logits = scale · image_emb @ text_bank.T) with the same untargeted cross-entropy, batch, ε, step and number
of steps, on the same seeded images and labels (the clean predictions). torchattacks is not a project
dependency: `make bench` installs it with `--no-deps` into `.bench-site/` (never into the venv) and puts it
on PYTHONPATH for this script only; without it the script says so and skips the comparison.

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


def _timed_pair(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of `repeats` calls of each, after one warm-up call each.

    The calls alternate, so load from other processes on a shared machine falls on both alike.
    """
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, record in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            record.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


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

    def ours(random_start: bool = True) -> torch.Tensor:
        objective = lambda pixels: F.cross_entropy(classifier(pixels), labels, reduction="none")  # noqa: E731
        return pgd_linf(objective, images, eps=eps, step=step, steps=steps, random_start=random_start,
                        generator=torch.Generator().manual_seed(1))

    def theirs(random_start: bool = True) -> torch.Tensor:
        return torchattacks.PGD(classifier, eps=eps, alpha=step, steps=steps, random_start=random_start)(images, labels)

    # Same attack: without the random start both take the same signed-gradient steps.
    agreement = (ours(False) - theirs(False)).abs().max().item() * 255
    ours_s, theirs_s = _timed_pair(ours, theirs, repeats)
    typer.echo(f"device {target}, threads {torch.get_num_threads()}, batch {batch} × {clip.image_size} px, "
               f"{steps} steps, eps {eps_255}/255, step {step_255}/255, median of {repeats}")
    typer.echo(f"max |ours - torchattacks| without random start: {agreement:.3g}/255")
    typer.echo(f"medvlm pgd_linf     {batch / ours_s:8.1f} img/s")
    typer.echo(f"torchattacks PGD    {batch / theirs_s:8.1f} img/s   (torchattacks {torchattacks.__version__})")
    typer.echo(f"throughput ratio (ours / torchattacks): {theirs_s / ours_s:.3f}")
    _write_json(json_out, {"benchmark": "attack", "device": str(target), "batch": batch, "steps": steps,
                           "ours_img_per_s": batch / ours_s, "torchattacks_img_per_s": batch / theirs_s,
                           "ratio": theirs_s / ours_s, "max_abs_diff_255": agreement})


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    typer.run(main)
