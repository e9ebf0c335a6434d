"""DVC stage `robustness`: one method's accuracy under test-time L∞ PGD through the frozen encoder and head."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.robustness import robustness_stage


def main(
    method: str = typer.Option(..., help="head method whose heads are attacked (one of heads.methods)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    data: Path = typer.Option(Path("data/raw"), help="folder of the downstream manifests and test images"),
    features: Path = typer.Option(Path("data/features"), help="folder of cached features"),
    clip: Path = typer.Option(Path("models/clip"), help="pre-trained CLIP folder (its image encoder is attacked)"),
    heads: Path = typer.Option(Path("models/heads"), help="folder holding one sub-folder of heads per method"),
    out: Path = typer.Option(..., help="metrics JSON to write"),
    items: Path = typer.Option(..., help="per-item results (parquet) to write: correctness clean and per radius"),
) -> None:
    run_stage(robustness_stage, params_path=params, method=method, data=data, features=features, clip=clip,
              heads=heads, out=out, items=items)


if __name__ == "__main__":
    typer.run(main)
