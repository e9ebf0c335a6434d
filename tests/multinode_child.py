"""What the spawned processes of tests/test_multinode.py run: kept apart so that they import little."""

from __future__ import annotations

import torch.distributed as dist

from medvlm.engine.distributed import Workers
from medvlm.params import ParamsError


def agree(rank: int, port: int, fingerprints: list[str], errors) -> None:
    """Join a gloo group of len(fingerprints) on 127.0.0.1:`port`; put this rank's refusal, if any, on `errors`."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(fingerprints))
    try:
        Workers(rank=rank, world_size=len(fingerprints)).require_same(fingerprints[rank], section="pretrain")
        errors.put((rank, ""))
    except ParamsError as exc:
        errors.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()
