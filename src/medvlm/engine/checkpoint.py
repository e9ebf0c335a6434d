"""Resumable training: checkpoints of everything the rest of a CLIP training run depends on.

A checkpoint folder (`checkpoints/<stage>/`: outside the stage's DVC outputs, so it survives a failed or
killed run, and git-ignored) holds
- `state.safetensors`: the model weights, every tensor of the optimizer's and scheduler's state, the RNG
  states (torch's CPU and CUDA states and the data-order generator's are uint8 tensors) and the current
  epoch's batch order;
- `state.json`: the rest of the optimizer, scheduler and RNG state as plain JSON (each tensor replaced by a
  reference to its name in the safetensors file), the position (steps done, epoch, next batch of that
  epoch), the per-step losses so far, and the fingerprint of the run;
- `live/`: the DVCLive folder as it was at that step, so the curves continue with no gap and no repeat.
Nothing is pickled: torch's `state_dict` objects are split into tensors and JSON here because `torch.save`
would pickle them, and loading a pickle can run arbitrary code.

The fingerprint (SHA-256 of the training settings except `checkpoint_every`, the seed, the `model` params,
the device type, the training code and every image, caption and flag of the training and validation pairs)
must match for a checkpoint to be resumed: a checkpoint of other params or inputs is discarded with a log
line and training starts over. A checkpoint that cannot be read (not safetensors, not JSON, incomplete) is
refused with an error naming the file, since the atomic writes here never leave one half-written.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from medvlm.data.pairs import ImageCaptionPairs
from medvlm.io import DataError, atomic_dir, load_tensors, read_json, save_tensors, write_json
from medvlm.params import TrainParams
from medvlm.runtime import TrainingInterrupted, log

CHECKPOINT_FORMAT = 1
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
LIVE_SNAPSHOT = "live"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainingPosition:
    """Where a training run stands: enough, with the model/optimizer/scheduler/RNG states, to continue it."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 1
    """The epoch (1-based) the next step belongs to."""
    next_batch: int = 0
    """Index of that epoch's next batch (== its number of batches: only the epoch's validation is left)."""
    order: torch.Tensor | None = None
    """That epoch's shuffled pair indices, batches in a row; None when the epoch's order is not drawn yet."""
    step_losses: list[float] = field(default_factory=list)


def training_fingerprint(*, stage: str, seed: int, model: dict[str, Any], image_size: int, train: TrainParams,
                         device_type: str, pairs: Sequence[ImageCaptionPairs], code: Iterable[Path]) -> str:
    """SHA-256 of everything that shapes a training run's result (not `checkpoint_every` or the multi-machine
    settings, which do not; checkpoints are written by single-process training only)."""
    digest = hashlib.sha256()
    settings = {"format": CHECKPOINT_FORMAT, "stage": stage, "seed": seed, "model": model,
                "image_size": image_size, "device": device_type,
                "train": train.model_dump(mode="json", exclude={"checkpoint_every", "nnodes", "rdzv_endpoint"})}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for split in pairs:
        digest.update(json.dumps([split.ids, split.captions]).encode())
        digest.update(split.images.numpy().tobytes())
        digest.update(split.perturbed.numpy().tobytes())
    for path in sorted(set(code)):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- state dicts <-> tensors + JSON
def _split_tensors(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `value` with every tensor moved into `tensors` (under `name`) and referenced.

    Optimizer state is keyed by int parameter indices, which JSON objects cannot keep; such dicts become
    a list of [key, value] items so the keys come back as ints."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _split_tensors(item, f"{name}.{key}", tensors) for key, item in value.items()}
        return {"__items__": [[key, _split_tensors(item, f"{name}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(item, f"{name}.{index}", tensors) for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}: cannot store a {type(value).__name__} in a checkpoint")


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `_split_tensors` (tuples come back as lists, which every state_dict loader accepts)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__items__" in value:
            return {key: _join_tensors(item, tensors) for key, item in value["__items__"]}
        return {key: _join_tensors(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_join_tensors(item, tensors) for item in value]
    return value


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy": np.random.get_state(legacy=False),
        "python": random.getstate(),
    }


def _restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])
    np.random.set_state(states["numpy"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------- the checkpointer
class TrainingCheckpoints:
    """Saves and restores one training run's checkpoint in `folder`; handles SIGINT/SIGTERM while entered.

    Use: `with TrainingCheckpoints(...) as checkpoints:` around the training; `restore_live(live_dir)` before
    opening DVCLive; `resume(...)` once the model, optimizer, scheduler and generator exist; `poll(...)` after
    every step and at every epoch end (saves when due or when a signal came, then raises
    TrainingInterrupted for a signal); `finish()` once the outputs are written.
    """

    def __init__(self, folder: Path, *, every: int, fingerprint: str, stage: str):
        self.folder = Path(folder)
        self.every = every
        self.fingerprint = fingerprint
        self.stage = stage
        self.signal_received: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._state: dict[str, Any] | None = self._read_matching()
        self._objects: dict[str, Any] = {}
        self._saved_step = self._state["position"]["step"] if self._state else 0

    # -- reading
    def _read_matching(self) -> dict[str, Any] | None:
        """The checkpoint's JSON when it exists and belongs to this run; a stale one is deleted."""
        meta_path = self.folder / STATE_JSON
        if not self.folder.exists():
            return None
        if not meta_path.is_file():
            raise DataError(f"{self.folder}: checkpoint folder without {STATE_JSON}; delete the folder to start "
                            "training over")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or "fingerprint" not in meta:
            raise DataError(f"{meta_path}: not a checkpoint of format {CHECKPOINT_FORMAT}; delete "
                            f"{self.folder} to start training over")
        if meta["fingerprint"] != self.fingerprint:
            log.warning("%s: discarding the checkpoint in %s (step %s): it was made with other params, inputs "
                        "or code; training starts over", self.stage, self.folder, meta.get("position", {}).get("step"))
            shutil.rmtree(self.folder)
            return None
        return meta

    @property
    def resumable(self) -> bool:
        return self._state is not None

    def restore_live(self, live_dir: Path) -> None:
        """Copy the DVCLive snapshot of the checkpoint into `live_dir` (open DVCLive with resume=True after)."""
        if self._state is not None and (self.folder / LIVE_SNAPSHOT).is_dir():
            shutil.copytree(self.folder / LIVE_SNAPSHOT, live_dir, dirs_exist_ok=True)

    def resume(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator) -> TrainingPosition:
        """Remember what to checkpoint; load the checkpoint into it when there is one. Returns the position."""
        self._objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "generator": generator}
        if self._state is None:
            return TrainingPosition()
        tensors_path = self.folder / STATE_TENSORS
        tensors = load_tensors(tensors_path)  # safetensors only: a pickle or a truncated file is a DataError
        meta = self._state
        try:
            weights = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
            model.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(_join_tensors(meta["optimizer"], tensors))
            scheduler.load_state_dict(_join_tensors(meta["scheduler"], tensors))
            _restore_rng_states(_join_tensors(meta["rng"], tensors), generator)
            position = TrainingPosition(step=int(meta["position"]["step"]), epoch=int(meta["position"]["epoch"]),
                                        next_batch=int(meta["position"]["next_batch"]),
                                        order=tensors.get("data.order"), step_losses=list(meta["step_losses"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{tensors_path}: checkpoint does not fit this run ({type(exc).__name__}: {exc}); "
                            f"delete {self.folder} to start training over") from None
        log.info("%s: resuming from the checkpoint in %s at step %d (epoch %d, batch %d)", self.stage, self.folder,
                 position.step, position.epoch, position.next_batch)
        return position

    # -- writing
    def save(self, position: TrainingPosition, live_dir: Path | None) -> None:
        """Write the checkpoint of `position` atomically (the previous one stays until the new one is whole)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor in self._objects["model"].state_dict().items():
            tensors[f"model.{name}"] = tensor
        meta = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "stage": self.stage,
            "position": {"step": position.step, "epoch": position.epoch, "next_batch": position.next_batch},
            "step_losses": position.step_losses,
            "optimizer": _split_tensors(self._objects["optimizer"].state_dict(), "optimizer", tensors),
            "scheduler": _split_tensors(self._objects["scheduler"].state_dict(), "scheduler", tensors),
            "rng": _split_tensors(_rng_states(self._objects["generator"]), "rng", tensors),
        }
        if position.order is not None:
            tensors["data.order"] = position.order
        with atomic_dir(self.folder) as tmp:
            save_tensors(tmp / STATE_TENSORS, tensors)
            write_json(tmp / STATE_JSON, meta)
            if live_dir is not None:
                shutil.copytree(live_dir, tmp / LIVE_SNAPSHOT)
        self._saved_step = position.step
        log.info("%s: checkpoint at step %d saved to %s", self.stage, position.step, self.folder)

    def poll(self, position: TrainingPosition, live_dir: Path | None) -> None:
        """Save when `checkpoint_every` steps passed since the last save, or when a signal came (then stop)."""
        if self.signal_received is not None:
            self.save(position, live_dir)
            name = signal.Signals(self.signal_received).name
            raise TrainingInterrupted(self.signal_received, (
                f"{self.stage}: {name} at step {position.step}; checkpoint saved to {self.folder}. Run the stage "
                "again (dvc repro) to continue from it"))
        if self.every and position.step - self._saved_step >= self.every:
            self.save(position, live_dir)

    def finish(self) -> None:
        """The run's outputs are written: its checkpoint is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_received is not None:  # a second signal: stop now, without waiting for the step
            raise TrainingInterrupted(signum, f"{self.stage}: second {signal.Signals(signum).name}; stopped "
                                              "without saving a checkpoint")
        self.signal_received = signum
        log.warning("%s: %s received; saving a checkpoint after the current step", self.stage,
                    signal.Signals(signum).name)

    def __enter__(self) -> TrainingCheckpoints:
        if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
            self._previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in HANDLED_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}
