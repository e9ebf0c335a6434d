"""Several processes for the contrastive CLIP loop: torchrun + DistributedDataParallel.

The `surrogate` and `pretrain` stages train on `nproc` processes (one per GPU, or CPU processes with gloo)
when their `nproc` param is above 1: the stage re-executes itself under `torch.distributed.run`
(`relaunch_under_torchrun`), every worker joins the process group from torchrun's environment
(`join_workers`), and the loop then

- draws the same seeded global batch on every rank and trains on this rank's contiguous slice of it
  (`Workers.shard`), so the optimiser sees the same global batch as one process would;
- computes open_clip's `ClipLoss` with `local_loss` and `gather_with_grad`: each rank scores its own pairs
  against the gathered features of the whole global batch, and gradients flow back through the gather;
  DDP's gradient mean over equal slices then equals the one-process gradient of the global batch;
- logs the loss averaged over ranks, and writes files from one rank only (`Workers.writer`).

On several machines (`nnodes` > 1) every machine runs the same stage command; each one's torchrun joins the
c10d rendezvous at `rdzv_endpoint`, and the global batch is split over all nnodes x nproc processes. The
writer is local rank 0 of the machine where DVC runs the stage (DVC sets DVC_STAGE in its environment), so
the outputs land in the workspace DVC records even without a shared filesystem; global rank 0 when no
machine, or every machine, was started by DVC. Since each machine reads its own params, data and code, the
ranks compare fingerprints of them before the first step (`Workers.require_same`).

Batch norm (the ResNet image tower) is synchronised across GPUs; on CPU (gloo) PyTorch has no synchronised
batch norm, so there each rank normalises with its own slice's statistics (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medvlm.io import atomic_dir
from medvlm.params import ParamsError
from medvlm.runtime import TrainingError, log

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every worker; `env://` initialisation reads the same variables."""

DVC_STAGE_ENV = "DVC_STAGE"
"""Set by DVC in the environment of every stage command it runs: marks the machine whose workspace DVC records."""


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    writer: int = 0
    """The global rank that writes the outputs and logs progress (rank 0 unless chosen by `_writer_rank`)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == self.writer

    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (whose length is a multiple of world_size).

        Contiguous slices in rank order make the gathered features the global batch in its own order.
        """
        size = len(global_batch) // self.world_size
        return global_batch[self.rank * size:(self.rank + 1) * size]

    def clip_loss_options(self) -> dict:
        """open_clip `ClipLoss` arguments: feature gathering with gradients when there are several ranks."""
        if not self.distributed:
            return {}
        return {"local_loss": True, "gather_with_grad": True, "rank": self.rank, "world_size": self.world_size}

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around `model` when distributed (batch norm synchronised on GPUs); the model itself otherwise."""
        if not self.distributed:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device])
        return DistributedDataParallel(model)

    def require_same(self, fingerprint: str, section: str) -> None:
        """Stop every rank unless all of them computed the same `fingerprint` of their params, data and code.

        Each machine reads its own workspace: one with another params.yaml, stale data or other code would
        silently train on something else (DDP averages whatever gradients it is given)."""
        if not self.distributed:
            return
        fingerprints: list[str | None] = [None] * self.world_size
        dist.all_gather_object(fingerprints, fingerprint)
        differing = [rank for rank, other in enumerate(fingerprints) if other != fingerprints[0]]
        if differing:
            raise ParamsError(f"{section}: training processes {differing} see other params, data or code than rank "
                              "0; every machine must run the stage on the same params.yaml, inputs and code")

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over ranks (every rank gets it); the value itself with one process."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def join_workers(device: torch.device, *, batch_size: int, section: str) -> tuple[Workers, torch.device]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); one process when not under torchrun.

    Returns this process's `Workers` and its device (`cuda:<LOCAL_RANK>` on GPUs). Non-zero ranks log
    warnings only, so each message appears once.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Workers(), device
    workers = Workers(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    if batch_size % workers.world_size:
        raise ParamsError(f"{section}.batch_size ({batch_size}) must be a multiple of the number of training "
                          f"processes ({workers.world_size}): each takes an equal slice of the global batch")
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"{section}.nproc: process {local_rank} of this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} visible); use at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    workers = Workers(rank=workers.rank, world_size=workers.world_size, writer=_writer_rank(workers, device))
    # open_clip 3.3's ClipLoss gathers with torch.distributed.nn.all_gather (differentiable, what
    # gather_with_grad needs); torch deprecates it in favour of an API open_clip does not use yet.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                            category=FutureWarning)
    # When one worker fails, torchrun stops the others with SIGTERM: exit through Python's unwinding so that
    # rank 0's atomic output folders are removed rather than left half-written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log.info("%s: rank %d of %d is local rank %s of machine %s (%s)%s", section, workers.rank, workers.world_size,
             os.environ["LOCAL_RANK"], os.environ.get("GROUP_RANK", "0"), socket.gethostname(),
             "; it writes the outputs" if workers.is_main else "")
    if not workers.is_main:
        log.setLevel(logging.WARNING)
    log.info("%s: %d training processes (%s backend), global batch %d, %d per process", section,
             workers.world_size, dist.get_backend(), batch_size, batch_size // workers.world_size)
    return workers, device


def _writer_rank(workers: Workers, device: torch.device) -> int:
    """The lowest global rank that is local rank 0 of a machine DVC runs the stage on; rank 0 if none is.

    torchrun's c10d rendezvous orders machines by host name and process id, so global rank 0 need not be on
    the machine where `dvc repro` runs; its workspace is where the outputs must go.
    """
    started_by_dvc = os.environ.get("LOCAL_RANK") == "0" and DVC_STAGE_ENV in os.environ
    candidate = torch.tensor([workers.rank if started_by_dvc else workers.world_size], device=device)
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN)
    lowest = int(candidate.item())
    return 0 if lowest == workers.world_size else lowest


def leave_workers(workers: Workers) -> None:
    if workers.distributed and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, argv: Sequence[str], *, nnodes: int = 1, rdzv_endpoint: str = "",
                     rdzv_id: str = "medvlm") -> list[str]:
    """The torchrun command line that runs `argv` as `nproc` workers here, on one machine or as one of
    `nnodes` machines joining the c10d rendezvous at `rdzv_endpoint` under the id `rdzv_id` (every machine
    must pass the same endpoint and id; none needs a node rank)."""
    if nnodes == 1:
        options = ["--standalone"]
    elif not rdzv_endpoint:
        raise TrainingError(f"nnodes {nnodes} > 1 needs rdzv_endpoint (host:port of the c10d rendezvous)")
    else:
        options = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                   f"--rdzv-id={rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *options, f"--nproc-per-node={nproc}", *argv]


def relaunch_under_torchrun(nproc: int, argv: Sequence[str] | None = None, *, nnodes: int = 1,
                            rdzv_endpoint: str = "", rdzv_id: str = "medvlm") -> None:
    """Run this stage script again as `nproc` torchrun workers on this machine and wait for them; with
    `nnodes` > 1 as this machine's share of a run that the same command started on every machine joins.

    `argv` (default: this process's command line) must start with the stage script's path.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).suffix != ".py" or not Path(argv[0]).is_file():
        what = f"nproc {nproc} > 1" if nnodes == 1 else f"nnodes {nnodes} > 1"
        raise TrainingError(f"{what} needs the stage to be started as a script "
                            f"(python stages/<stage>.py ...), not from {argv[:1]}")
    command = torchrun_command(nproc, argv, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)
    where = "" if nnodes == 1 else f" on this machine, one of {nnodes} joining the rendezvous at {rdzv_endpoint}"
    log.info("launching %d training processes%s: %s", nproc, where, " ".join(command))
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise TrainingError(f"the {nproc * nnodes} torchrun training processes failed (exit status "
                            f"{finished.returncode}); their messages are above")


class _SilentLive:
    """What non-zero ranks log to instead of DVCLive: rank 0 alone writes the training curves."""

    def log_metric(self, name: str, value: float) -> None:
        del name, value

    def next_step(self) -> None:
        pass


@contextlib.contextmanager
def main_rank_dirs(workers: Workers, *targets: Path) -> Iterator[tuple[Path | None, ...]]:
    """`atomic_dir` for each target on rank 0; on the other ranks, None for each and nothing written."""
    if not workers.is_main:
        yield tuple(None for _ in targets)
        return
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(atomic_dir(target)) for target in targets)


def main_rank_live(live_dir: Path | None) -> contextlib.AbstractContextManager:
    """DVCLive writing into `live_dir` on rank 0 (the only rank given a folder); a silent logger elsewhere."""
    if live_dir is None:
        return contextlib.nullcontext(_SilentLive())
    # resume=True: continue curves restored from a checkpoint (an empty folder starts at step 0 either way)
    return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=True)
