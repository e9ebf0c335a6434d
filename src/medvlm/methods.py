"""The registry of head methods: one `HeadMethod` per light-weight fine-tuning method.

An entry names the method's params section (`heads.<name>` in params.yaml, a `HeadTrainingParams`
subclass), its head class and its loss class. Params validation, the head factory, the loss factory, the
`finetune@<method>` / `robustness@<method>` stages (dvc.yaml loops over `heads.methods`) and the plots all
read this table, so adding a method is one `register_method` call (plus its name in `heads.methods`).

Head and loss are given as "module:Class" paths and imported only when built: validating params must not
import torch (a class object is accepted too, e.g. from a test).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MethodSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeadTrainingParams(MethodSection):
    """What the one head trainer reads (AdamW, per-step cosine schedule); subclasses add loss options."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)

    def loss_options(self, measured_adv_eps: float | None = None) -> dict[str, Any]:
        """The keyword arguments of the method's loss module: every field the trainer does not read.
        `measured_adv_eps`: the task's measured shift of u (engine/feature_shift.py), for a method whose
        budget can be set from it."""
        return self.model_dump(exclude=set(HeadTrainingParams.model_fields))


class LinearProbeParams(HeadTrainingParams):
    lr: float = Field(1e-2, gt=0)


class MlpTuningParams(HeadTrainingParams):
    # BatchNorm in the residual MLP needs two or more samples per training batch.
    batch_size: int = Field(64, ge=2)


class NMTuneParams(MlpTuningParams):
    w_mse: float = Field(1.0, ge=0, description="MSE of n(z_view2) to sg(n(u_view1))")
    w_cov: float = Field(0.04, ge=0, description="off-diagonal covariance of the centred batch of z")
    w_svd: float = Field(0.001, ge=0, description="reward for the top-5 singular-value share of the batch of z")


class RanParams(MlpTuningParams):
    w_con: float = Field(1.0, ge=0, description="consistency MSE(n(z), sg(n(u)))")
    w_cov: float = Field(0.04, ge=0, description="off-diagonal covariance of the centred batch of z")
    w_adv: float = Field(0.1, ge=0, description="learned-centroid margin term")
    margin: float = Field(0.2, ge=0, le=4, description="m: sample margin in squared distance on the unit sphere")
    centroid_margin: float = Field(
        1.0, ge=0, le=4, description="m_c: least squared distance between two class centroids (1.0: >= 60 degrees)")
    adv_eps: float | Literal["measured"] = Field(
        0.0, description="> 0: margin term on feature-space PGD inputs, |delta|_inf <= adv_eps * std(u); 'measured': "
        "the median shift of u under the evaluation's pixel PGD, per task (features/feature_shift.json)")
    adv_steps: int = Field(1, ge=1, description="PGD steps of the feature-space attack (1 = FGSM)")

    @field_validator("adv_eps", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        if value == "measured":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"expected a number >= 0 or 'measured', got {value!r}")
        return float(value)

    def loss_options(self, measured_adv_eps: float | None = None) -> dict[str, Any]:
        options = super().loss_options()
        if options["adv_eps"] == "measured":
            if measured_adv_eps is None:
                raise ValueError("heads.ran.adv_eps is 'measured', but no measured feature shift was given")
            options["adv_eps"] = measured_adv_eps
        return options


@dataclass(frozen=True)
class HeadMethod:
    name: str
    params: type[HeadTrainingParams]
    """Its `heads.<name>` section; the fields beyond `HeadTrainingParams`' are the loss's keyword arguments."""
    head: str | type
    """The head class (a `medvlm.models.heads.Head` whose `method` is `name`), or its "module:Class" path."""
    loss: str | type
    """The loss class (a `medvlm.losses.base.HeadLoss`), or its "module:Class" path."""
    summary: str = ""

    def head_class(self) -> type:
        head = _resolve(self.head)
        if getattr(head, "method", None) != self.name:
            raise ValueError(f"head method {self.name!r}: its head class {head.__name__} has method "
                             f"{getattr(head, 'method', None)!r}; set `method = {self.name!r}` on it")
        return head

    def loss_class(self) -> type:
        return _resolve(self.loss)


def _resolve(target: str | type) -> type:
    if isinstance(target, type):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, HeadMethod] = {}
"""Every registered head method by name, in registration order."""

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_method(method: HeadMethod) -> HeadMethod:
    """Add a head method; its name becomes valid in `heads.methods` and as a `heads.<name>` section."""
    if not _NAME.match(method.name) or method.name == "methods":
        raise ValueError(f"head method name {method.name!r}: use lower-case letters, digits and _ (not 'methods')")
    if method.name in METHODS:
        raise ValueError(f"head method {method.name!r} is already registered")
    if not (isinstance(method.params, type) and issubclass(method.params, HeadTrainingParams)):
        raise ValueError(f"head method {method.name!r}: params must subclass HeadTrainingParams")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> HeadMethod:
    if name not in METHODS:
        raise ValueError(f"unknown head method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


register_method(HeadMethod("lp", LinearProbeParams, "medvlm.models.heads:LinearProbe",
                           "medvlm.losses.classification:CrossEntropyLoss", "linear probing"))
register_method(HeadMethod("mlp", MlpTuningParams, "medvlm.models.heads:ResidualMLPHead",
                           "medvlm.losses.classification:CrossEntropyLoss", "MLP-tuning"))
register_method(HeadMethod("nmtune", NMTuneParams, "medvlm.models.heads:NMTuneHead",
                           "medvlm.losses.nmtune:NMTuneLoss", "NMTune"))
register_method(HeadMethod("ran", RanParams, "medvlm.models.heads:RanHead", "medvlm.losses.ran:RanLoss", "RAN"))
