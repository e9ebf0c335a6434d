"""DVC stage `features`: frozen-CLIP features for every downstream task and split."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.features import features_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    clip: Path = typer.Option(Path("models/clip"), help="folder of the pre-trained CLIP (load_clip)"),
    data: Path = typer.Option(Path("data/raw"), help="folder with the downstream manifests and meta.json"),
    out: Path = typer.Option(Path("data/features"), help="folder the cached features are written to"),
    data_root: Path = typer.Option(Path("data"), help="root the manifests' image paths are relative to"),
) -> None:
    run_stage(features_stage, params_path=params, clip=clip, data=data, out=out, data_root=data_root)


if __name__ == "__main__":
    typer.run(main)
