"""DVC stage `finetune@<method>`: one light-weight head per task on the cached features."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.finetune import finetune_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    method: str = typer.Option(..., help="head method, one of heads.methods in params.yaml"),
    features: Path = typer.Option(Path("data/features"), help="folder of cached features"),
    out: Path = typer.Option(None, help="folder for the heads [default: models/heads/<method>]"),
    live: Path = typer.Option(None, help="DVCLive folder [default: dvclive/finetune/<method>]"),
) -> None:
    run_stage(finetune_stage, params_path=params, method=method, features=features,
              out=out or Path("models/heads") / method, live=live or Path("dvclive/finetune") / method)


if __name__ == "__main__":
    typer.run(main)
