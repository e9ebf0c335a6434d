"""Adapters from real data sets' local copies to the project's manifest rows (docs/data.md).

Each adapter reads a data set in its own published layout (docs/data.md) and returns a `SourceTable`:
one row per manifest row, with the original image file (`file`, absolute), the manifest split and the
task's text columns. Classification adapters give `findings` (canonical lower-case names, "normal" for an
image without findings); `medvlm.data.labels` turns those into single labels. Nothing is decoded here:
`medvlm.data.images` does that once, in parallel, for the rows that survive filtering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medvlm.data.sources import chestxray14, chexpert, generic, roco, vqa_json
from medvlm.data.sources.table import SourceTable
from medvlm.params import DataParams


@dataclass(frozen=True)
class Adapter:
    read: Callable[[Path, str, DataParams], SourceTable]
    multi_finding: bool = False
    """True when an image may show several findings (NIH, CheXpert): `data.multi_finding` then decides."""


ADAPTERS: dict[str, Adapter] = {
    "roco": Adapter(roco.read),
    "chestxray14": Adapter(chestxray14.read, multi_finding=True),
    "chexpert": Adapter(chexpert.read, multi_finding=True),
    "vqa_rad": Adapter(vqa_json.read_vqa_rad),
    "slake": Adapter(vqa_json.read_slake),
    "csv": Adapter(generic.read_csv),
    "image_folder": Adapter(generic.read_image_folder),
}
