"""DVC stage `download`: generate the synthetic chest-radiograph data set (manifests + PNGs) into data/raw."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.data.download import download_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    out: Path = typer.Option(Path("data/raw"), help="output folder; manifest image paths are relative to its parent"),
) -> None:
    run_stage(download_stage, params_path=params, out=out)


if __name__ == "__main__":
    typer.run(main)
