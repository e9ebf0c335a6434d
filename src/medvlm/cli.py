"""What every stage script shares: load and validate params first, turn known errors into one clear line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from medvlm.io import DataError
from medvlm.params import ParamsError, load_params
from medvlm.runtime import TrainingError, TrainingInterrupted, setup_logging

EXIT_USER_ERROR = 2


def run_stage(function: Callable[..., Any], *, params_path: Path, **kwargs: Any) -> Any:
    """Validate params.yaml, then call `function(params=..., **kwargs)`.

    Bad params, bad data, an unwritable output and diverged training exit with status 2 and a message instead
    of a traceback; training stopped by SIGINT/SIGTERM (after saving a checkpoint) exits with 128 + the signal
    number, as a shell reports a process killed by it; anything else is a bug and keeps its traceback.
    """
    setup_logging()
    try:
        params = load_params(params_path)
        return function(params=params, **kwargs)
    except TrainingInterrupted as exc:
        typer.echo(f"interrupted: {exc}", err=True)
        raise typer.Exit(128 + exc.signum) from None
    except (ParamsError, DataError, TrainingError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
