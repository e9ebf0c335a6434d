"""Presets (src/medvlm/preset.py): override files merged into params.yaml by `apply`, or passed to
`dvc exp run` as `-S` arguments by `flags`; both validated before anything is written or printed."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.cli_parse import to_path_overrides
from dvc.utils.hydra import apply_overrides, to_hydra_overrides
from typer.testing import CliRunner

from medvlm.params import ParamsError, load_params
from medvlm.preset import PresetError, app, apply_preset, preset_flags

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO / "presets" / "real-data.yaml"


def leaves(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


@pytest.fixture
def params_copy(tmp_path) -> Path:
    target = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", target)
    return target


def write_preset(tmp_path: Path, text: str) -> Path:
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    return preset


def comments(text: str) -> list[str]:
    return [match.group(0).strip() for line in text.splitlines() if (match := re.search(r"#.*$", line))]


def test_apply_real_data_sets_every_preset_key_and_keeps_the_rest(params_copy):
    before_text = params_copy.read_text()
    validated = apply_preset(preset=REAL_DATA, params=params_copy)
    after_text = params_copy.read_text()
    assert validated == load_params(params_copy)
    before, after = leaves(yaml.safe_load(before_text)), leaves(yaml.safe_load(after_text))
    preset = leaves(yaml.safe_load(REAL_DATA.read_text()))
    assert preset and all(after[key] == value for key, value in preset.items())
    untouched = {key: value for key, value in before.items() if key not in preset}
    assert {key: value for key, value in after.items() if key not in preset} == untouched
    assert comments(after_text) == comments(before_text)  # every comment kept, in order
    keys_before, keys_after = (re.findall(r"^\s*(\w+):", text, re.MULTILINE) for text in (before_text, after_text))
    assert [key for key in keys_after if key in keys_before] == keys_before  # key order kept, new keys only added
    assert validated.data.pretrain.source == "roco" and validated.model.init == "openai"
    assert apply_preset(preset=REAL_DATA, params=params_copy) == validated  # idempotent
    assert params_copy.read_text() == after_text


def test_an_empty_preset_leaves_params_byte_identical(tmp_path, params_copy):
    before = params_copy.read_bytes()
    apply_preset(preset=write_preset(tmp_path, "# nothing changed\n"), params=params_copy)
    assert params_copy.read_bytes() == before


@pytest.mark.parametrize("function", [apply_preset, preset_flags])
@pytest.mark.parametrize(("text", "key"), [
    ("data:\n  cls_id:\n    sorce: chexpert\n", "data.cls_id.sorce"),
    ("modle:\n  name: x\n", "modle"),
    ("data:\n  pretrain:\n    source: roco\n    pth: /x\n", "data.pretrain.pth"),  # beside a key params.yaml lacks
])
def test_an_unknown_key_is_refused_naming_key_and_file(tmp_path, params_copy, function, text, key):
    before = params_copy.read_bytes()
    preset = write_preset(tmp_path, text)
    with pytest.raises(PresetError) as excinfo:
        function(preset=preset, params=params_copy)
    assert f"'{key}'" in str(excinfo.value) and str(preset) in str(excinfo.value)
    assert params_copy.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "preset.yaml"]  # no temporary left


@pytest.mark.parametrize("function", [apply_preset, preset_flags])
@pytest.mark.parametrize(("text", "key", "rule"), [
    ("surrogate:\n  epochs: -1\n", "surrogate.epochs:", "greater than or equal to 0"),
    ("data:\n  cls_id:\n    source: mimic\n", "data.cls_id.source:", "'chestxray14'"),
    ("data:\n  pretrain:\n    source: roco\n", "data.pretrain:", "needs exactly one of path"),
    ("heads:\n  methods: lp\n", "heads.methods:", "valid list"),
])
def test_a_bad_value_is_refused_naming_the_key(tmp_path, params_copy, function, text, key, rule):
    before = params_copy.read_bytes()
    with pytest.raises(ParamsError) as excinfo:
        function(preset=write_preset(tmp_path, text), params=params_copy)
    assert key in str(excinfo.value) and rule in str(excinfo.value)
    assert params_copy.read_bytes() == before


def test_the_cli_exits_2_with_the_message_and_writes_nothing(tmp_path, params_copy):
    before = params_copy.read_bytes()
    preset = write_preset(tmp_path, "data:\n  cls_id:\n    sorce: x\n")
    for command in ("apply", "flags"):
        result = CliRunner().invoke(app, [command, str(preset), "--params", str(params_copy)])
        assert result.exit_code == 2 and "data.cls_id.sorce" in result.output, result.output
    assert params_copy.read_bytes() == before


TRICKY = """\
data:
  labels: ["1", "a,b", "c: d", "x=y", "${x}", 'say "hi"', 'back\\slash\\', "pleural effusion", "null", "True"]
  cls_id: {source: csv, path: "/data/a:b,c/labels.csv"}
model:
  name: "0.5"
  init: "hf-hub:org/model-1e5"
pretrain:
  lr: 1e-05
  epochs: 3
surrogate:
  lr: 0.00001
"""


@pytest.mark.parametrize("preset_text", [None, TRICKY], ids=["real-data", "tricky"])
def test_flags_parse_back_with_dvc_to_what_apply_gives(tmp_path, params_copy, preset_text):
    preset = REAL_DATA if preset_text is None else write_preset(tmp_path, preset_text)
    applied_copy = tmp_path / "applied.yaml"
    shutil.copyfile(params_copy, applied_copy)
    expected = apply_preset(preset=preset, params=applied_copy)

    result = CliRunner().invoke(app, ["flags", str(preset), "--params", str(params_copy)])
    assert result.exit_code == 0, result.output
    args = shlex.split(result.stdout)
    assert args == preset_flags(preset=preset, params=params_copy) and args[::2] == ["-S"] * (len(args) // 2)
    overrides = args[1::2]
    # as `dvc exp run -S` does: group by file (no value's colon taken for a file name), refuse sweeps, apply
    assert to_path_overrides(overrides) == {"params.yaml": overrides}
    assert not any(override.is_sweep_override() for override in to_hydra_overrides(overrides))
    apply_overrides(params_copy, overrides)
    assert load_params(params_copy) == expected


def test_flags_refuse_a_value_dvc_would_rewrite_into_another_type(tmp_path, params_copy):
    preset = write_preset(tmp_path, 'model:\n  name: "yes"\n')  # DVC writes it bare; YAML 1.1 reads a boolean
    with pytest.raises(PresetError, match="cannot carry"):
        preset_flags(preset=preset, params=params_copy)
    assert apply_preset(preset=preset, params=params_copy).model.name == "yes"  # apply keeps the quotes


def test_apply_works_on_a_params_file_dvc_rewrote(tmp_path, params_copy):
    """After `dvc exp run -S` params.yaml has block lists; replacing one by a flow list must stay valid YAML."""
    apply_overrides(params_copy, ["data.labels=[a, b]", "heads.methods=[lp, ran]"])
    assert "  - a\n" in params_copy.read_text()
    validated = apply_preset(preset=REAL_DATA, params=params_copy)
    assert validated == load_params(params_copy) and validated.data.labels[-1] == "pleural effusion"
    assert validated.heads.methods == ["lp", "ran"]
