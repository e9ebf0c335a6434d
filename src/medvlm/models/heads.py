"""Light-weight heads that classify cached frozen features, and how they are saved and rebuilt.

Every head follows one shape: a feature transform z = transform(u) followed by a linear classifier
logits = W z + b. Linear probing keeps z = u; the residual-MLP heads (MLP-tuning, NMTune, RAN) replace
`transform` and may carry extra parameters (RAN's class centroids) that their losses read from the head.
`HeadOutput` holds u, z and the logits, so one forward pass serves every loss term. The residual-MLP
heads hold BatchNorm: they must be in eval mode at inference (`load_head` and the trainer leave them so),
where a sample's logits no longer depend on the rest of its batch.

On disk a head is `<name>.safetensors` (weights) plus `<name>.json` ({"method", "in_dim", "n_classes",
"hyper"}), enough to rebuild it through `build_head` without unpickling anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medvlm.io import DataError, load_tensors, read_json, save_tensors, write_json
from medvlm.methods import get_method


@dataclass(frozen=True)
class HeadOutput:
    """What one forward pass of a head produces: input features u, transformed features z, logits."""

    features: torch.Tensor
    transformed: torch.Tensor
    logits: torch.Tensor


class Head(nn.Module, ABC):
    """Base of all heads: `transform(u) -> z`, then `classifier(z) -> logits`."""

    method: ClassVar[str]

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ValueError(f"a head needs in_dim >= 1 and n_classes >= 2, "
                             f"got in_dim={in_dim}, n_classes={n_classes}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.classifier = nn.Linear(in_dim, n_classes)

    @abstractmethod
    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """The feature transform z = transform(u), same shape as u."""

    def hyper_params(self) -> dict[str, Any]:
        """Constructor arguments beyond in_dim/n_classes, stored in the JSON config."""
        return {}

    def outputs(self, features: torch.Tensor) -> HeadOutput:
        transformed = self.transform(features)
        return HeadOutput(features=features, transformed=transformed, logits=self.classifier(transformed))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.outputs(features).logits

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "in_dim": self.in_dim, "n_classes": self.n_classes,
                "hyper": self.hyper_params()}


class LinearProbe(Head):
    """Linear probing: logits = W u + b on the frozen feature itself."""

    method = "lp"

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        return features


class ResidualMLPHead(Head):
    """MLP-tuning: z = u + α⊙MLP(u), MLP = Linear(D,4D) -> BatchNorm -> ReLU -> Linear(4D,D), α ∈ R^D
    initialised to 1, then logits = W z + b.

    The first Linear has no bias: BatchNorm subtracts the batch mean right after it, so a bias there
    cancels exactly and would be a parameter whose gradient is identically zero.
    """

    method = "mlp"
    hidden_ratio: ClassVar[int] = 4

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__(in_dim, n_classes)
        hidden = self.hidden_ratio * in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, in_dim))
        self.alpha = nn.Parameter(torch.ones(in_dim))

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(features, self.alpha, self.mlp(features))


class NMTuneHead(ResidualMLPHead):
    """NMTune's head is MLP-tuning's; what differs is the loss (two views and three regularisers)."""

    method = "nmtune"


class RanHead(ResidualMLPHead):
    """RAN: the residual-MLP head plus one learned centroid per class, read by RAN's margin term.

    Centroids start as standard-normal vectors, which in D dimensions are nearly orthogonal once
    normalised, so the classes start apart; they are not used to classify (the logits are W z + b).
    """

    method = "ran"

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__(in_dim, n_classes)
        self.centroids = nn.Parameter(torch.randn(n_classes, in_dim))


def build_head(method: str, in_dim: int, n_classes: int, **hyper: Any) -> Head:
    """A fresh head of a registered method (`medvlm.methods`)."""
    return get_method(method).head_class()(in_dim, n_classes, **hyper)


def head_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    """(weights, config) paths of the head saved as `name` in `directory`."""
    directory = Path(directory)
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def save_head(head: Head, directory: str | Path, name: str) -> None:
    weights, config = head_paths(directory, name)
    save_tensors(weights, head.state_dict())
    write_json(config, head.config())


def load_head(directory: str | Path, name: str, device: torch.device | str = "cpu") -> Head:
    """Rebuild a saved head from its JSON config and safetensors weights, in eval mode."""
    weights, config_path = head_paths(directory, name)
    config = read_json(config_path)
    missing = [key for key in ("method", "in_dim", "n_classes", "hyper") if key not in config]
    if missing:
        raise DataError(f"{config_path}: head config lacks keys {missing}")
    try:
        head = build_head(config["method"], int(config["in_dim"]), int(config["n_classes"]), **config["hyper"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{config_path}: cannot build the head it describes ({exc})") from None
    try:
        head.load_state_dict(load_tensors(weights), strict=True)
    except RuntimeError as exc:
        raise DataError(f"{weights}: weights do not match the head in {config_path.name}: {exc}") from None
    return head.to(device).eval()
