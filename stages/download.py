"""DVC stage `download`: each task's data (synthetic, or a real data set's local copy or archive URL) as
manifests + pre-resized PNGs in data/raw."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.data.download import DOWNLOAD_CACHE
from medvlm.pipeline.download import download_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    out: Path = typer.Option(Path("data/raw"), help="output folder; manifest image paths are relative to its parent"),
    cache: Path = typer.Option(DOWNLOAD_CACHE, help="where archives of sources given by url are fetched and extracted"),
) -> None:
    run_stage(download_stage, params_path=params, out=out, cache=cache)


if __name__ == "__main__":
    typer.run(main)
