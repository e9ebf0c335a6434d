"""DVC stage `surrogate`: contrastive CLIP training on the clean pairs (the attacks' target)."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.surrogate import surrogate_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    data: Path = typer.Option(Path("data/raw"), help="folder with pretrain.csv (train and val splits)"),
    out: Path = typer.Option(Path("models/surrogate"), help="model folder to write"),
    live: Path = typer.Option(Path("dvclive/surrogate"), help="DVCLive folder for the training curves"),
    metrics: Path = typer.Option(Path("metrics/surrogate.json"), help="metrics JSON to write"),
    data_root: Path = typer.Option(Path("data"), help="root that manifest image paths are relative to"),
    checkpoints: Path = typer.Option(Path("checkpoints/surrogate"),
                                     help="checkpoint folder kept between runs (resumes an interrupted run)"),
) -> None:
    run_stage(surrogate_stage, params_path=params, data=data, out=out, live=live, metrics=metrics,
              data_root=data_root, checkpoints=checkpoints)


if __name__ == "__main__":
    typer.run(main)
