"""Stage `download`: the synthetic data sets, or real ones (local copies or fetched archives), as manifests and
pre-resized images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvlm.data.download import DOWNLOAD_CACHE, write_data_sets
from medvlm.params import Params


def download_stage(*, params: Params, out: Path, data_root: Path | None = None,
                   cache: Path = DOWNLOAD_CACHE) -> dict[str, Any]:
    return write_data_sets(data=params.data, seed=params.seed, out=out, data_root=data_root, cache=cache)
