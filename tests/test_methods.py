"""The head-method registry: a new method is one `register_method` call, and then params validation, the head
and loss factories, the finetune stage and the evaluate stage all know it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from medvlm.losses import LossResult, build_loss
from medvlm.losses.base import HeadLoss
from medvlm.methods import METHODS, HeadMethod, HeadTrainingParams, register_method
from medvlm.models.heads import Head, build_head, load_head
from medvlm.params import ParamsError, parse_params
from medvlm.pipeline.evaluate import evaluate_stage
from medvlm.pipeline.finetune import finetune_stage
from medvlm.tasks import TASKS, head_tasks
from test_evaluate import write_stage_inputs
from test_heads import write_features


class ToyParams(HeadTrainingParams):
    temperature: float = Field(1.0, gt=0, description="divides the logits in the loss")


class ToyHead(Head):
    """A linear probe whose feature transform flips the sign: different from lp, trivially checkable."""

    method = "toy"

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        return -features


class ToyLoss(HeadLoss):
    inputs = ("x", "y")

    def __init__(self, *, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, head: Head, batch: dict[str, torch.Tensor]) -> LossResult:
        logits = head(batch["x"]) / self.temperature
        return LossResult(terms={"toy_ce": F.cross_entropy(logits, batch["y"])}, logits=logits)


@pytest.fixture
def toy_method():
    method = register_method(HeadMethod("toy", ToyParams, ToyHead, ToyLoss, "a test method"))
    yield method
    METHODS.pop("toy")


def toy_params(**toy):
    return parse_params({"device": "cpu", "heads": {"methods": ["lp", "toy"], "lp": {"epochs": 20, "batch_size": 8},
                                                    "toy": {"epochs": 20, "batch_size": 8, "lr": 0.05, **toy}},
                         "evaluate": {"bootstrap": {"samples": 200}}})


def test_an_unregistered_method_is_refused_by_params_validation():
    with pytest.raises(ParamsError, match=r"heads.methods: unknown head method\(s\) \['toy'\]"):
        toy_params()


def test_a_registered_method_validates_builds_trains_and_is_evaluated(toy_method, tmp_path):
    params = toy_params(temperature=2.0)
    assert params.heads.settings("toy") == ToyParams(epochs=20, batch_size=8, lr=0.05, temperature=2.0)
    with pytest.raises(ParamsError, match=r"heads.toy.temperature: Input should be greater than 0"):
        toy_params(temperature=0)
    assert isinstance(build_head("toy", 4, 3), ToyHead)
    assert build_loss("toy", temperature=3.0).temperature == 3.0

    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    for method in params.heads.methods:
        finetune_stage(params=params, method=method, features=features, out=heads / method,
                       live=tmp_path / "dvclive" / "finetune" / method)
    for task in head_tasks():
        assert isinstance(load_head(heads / "toy", task), ToyHead)
        assert (tmp_path / "dvclive" / "finetune" / "toy" / "plots" / "metrics" / task / "toy_ce.tsv").is_file()

    inputs = write_stage_inputs(tmp_path, methods=("lp", "toy"))
    result = evaluate_stage(params=params, features=features, heads=heads, out=tmp_path / "evaluate.json", **inputs)
    assert set(result["toy"]) == set(TASKS)
    assert result["toy"]["cls_id"]["accuracy"] == 1.0  # separable features: the toy head learns them too
    assert (inputs["plots"] / "confusion" / "toy_cls_id.csv").is_file()


def test_a_name_is_registered_once_and_must_be_a_plain_identifier(toy_method):
    with pytest.raises(ValueError, match="already registered"):
        register_method(HeadMethod("toy", ToyParams, ToyHead, ToyLoss))
    with pytest.raises(ValueError, match="lower-case"):
        register_method(HeadMethod("Bad-Name", ToyParams, ToyHead, ToyLoss))
    with pytest.raises(ValueError, match="subclass HeadTrainingParams"):
        register_method(HeadMethod("other", dict, ToyHead, ToyLoss))  # type: ignore[arg-type]
