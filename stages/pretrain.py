"""DVC stage `pretrain`: contrastive CLIP training on the noisy pairs."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.pretrain import pretrain_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    data: Path = typer.Option(Path("data/noisy"), help="folder with pretrain.csv (noisy train, clean val)"),
    out: Path = typer.Option(Path("models/clip"), help="model folder to write"),
    live: Path = typer.Option(Path("dvclive/pretrain"), help="DVCLive folder for the training curves"),
    metrics: Path = typer.Option(Path("metrics/pretrain.json"), help="metrics JSON to write"),
    data_root: Path = typer.Option(Path("data"), help="root that manifest image paths are relative to"),
    checkpoints: Path = typer.Option(Path("checkpoints/pretrain"),
                                     help="checkpoint folder kept between runs (resumes an interrupted run)"),
) -> None:
    run_stage(pretrain_stage, params_path=params, data=data, out=out, live=live, metrics=metrics,
              data_root=data_root, checkpoints=checkpoints)


if __name__ == "__main__":
    typer.run(main)
