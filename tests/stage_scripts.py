"""Run a stage script (stages/<name>.py) in-process through its typer entry point, as `python stages/...` would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]


def stage_app(name: str) -> typer.Typer:
    """A typer app whose one command is the `main` of stages/<name>.py (for typer's CliRunner)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = typer.Typer()
    app.command()(module.main)
    return app
