"""DVC stage `attack`: the noisy pre-training set (image/caption noise, adversarial or random, on a seeded
share of the train pairs), its stats and a gallery PNG."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.attack import attack_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    surrogate: Path = typer.Option(Path("models/surrogate"), help="clean CLIP the attack targets"),
    data: Path = typer.Option(Path("data/raw"), help="folder with the clean pretrain.csv (and meta.json)"),
    out: Path = typer.Option(Path("data/noisy"), help="output folder (inside the data root)"),
    metrics: Path = typer.Option(Path("metrics/attack.json"), help="attack statistics (JSON)"),
    data_root: Path = typer.Option(Path("data"), help="folder that manifest image paths are relative to"),
) -> None:
    run_stage(attack_stage, params_path=params, surrogate=surrogate, data=data, out=out, metrics=metrics,
              data_root=data_root)


if __name__ == "__main__":
    typer.run(main)
