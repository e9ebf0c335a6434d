"""Only result-shaping params are stage dependencies: changing a knob that sets resources or checkpointing
(`medvlm.params.NOT_RESULT_SHAPING`) leaves `dvc status` clean, while changing a shaping param does not; and
every param is either some stage's dependency or one of those knobs."""

from __future__ import annotations

import json

import pytest
import yaml

from e2e_repo import REPO, copy_of, edit_params, run
from medvlm.params import NOT_RESULT_SHAPING, Params

KNOBS = {"data": {"workers": 2},
         "surrogate": {"checkpoint_every": 7, "nproc": 2, "nnodes": 2, "rdzv_endpoint": "127.0.0.1:29500"},
         "pretrain": {"checkpoint_every": 3, "nproc": 2, "nnodes": 2, "rdzv_endpoint": "127.0.0.1:29500"}}


def _flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys |= _flatten(value, f"{name}.") if isinstance(value, dict) else {name}
    return keys


def test_the_knobs_exercised_here_are_exactly_the_documented_ones():
    assert _flatten(KNOBS) == set(NOT_RESULT_SHAPING)


@pytest.mark.e2e
def test_knobs_that_shape_nothing_leave_dvc_status_clean(pipeline_repo, tmp_path):
    repo = copy_of(pipeline_repo, tmp_path / "repo")
    assert json.loads(run(repo, "dvc", "status", "--json")) == {}
    edit_params(repo, KNOBS)
    assert json.loads(run(repo, "dvc", "status", "--json")) == {}
    # The same check sees a shaping param: the test can fail.
    edit_params(repo, {"data": {"cls_test": 30}})
    assert "download" in json.loads(run(repo, "dvc", "status", "--json"))


def test_every_param_is_a_dependency_of_some_stage_or_a_documented_knob():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = set()
    for stage in stages.values():
        for entry in stage.get("do", stage).get("params", []):
            declared.add(str(entry).replace("${item}", "*"))

    def covered(key: str) -> bool:
        parts = key.split(".")
        prefixes = {".".join(parts[:depth]) for depth in range(1, len(parts) + 1)}
        method_section = len(parts) > 2 and parts[0] == "heads" and "heads.*" in declared
        return bool(prefixes & declared) or method_section

    params = _flatten(Params().model_dump())
    assert not [key for key in NOT_RESULT_SHAPING if covered(key)], "a knob that shapes nothing is a dependency"
    missing = sorted(key for key in params if not covered(key) and key not in NOT_RESULT_SHAPING)
    assert not missing, f"params no stage depends on: {missing}"
