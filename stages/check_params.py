"""DVC stage `check_params`: validate params.yaml first, so that a bad value stops the run before DVC deletes any
other stage's outputs; writes a marker every stage depends on."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.check_params import check_params_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    out: Path = typer.Option(Path("checks/params.ok"), help="marker written when the params are valid"),
) -> None:
    run_stage(check_params_stage, params_path=params, out=out)


if __name__ == "__main__":
    typer.run(main)
