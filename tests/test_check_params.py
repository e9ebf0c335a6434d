"""The check_params stage: the schema plus what a stage would find out late, a marker of constant content, and
imports light enough to run on every params change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvlm.params import ParamsError, parse_params
from medvlm.pipeline.check_params import MARKER_TEXT, check_params, check_params_stage, model_config_names
from stage_scripts import stage_app

REPO = Path(__file__).resolve().parents[1]


def test_known_model_configs_include_ours_and_open_clips():
    names = model_config_names()
    assert {"medvlm-tiny-rn", "medvlm-tiny-vit", "ViT-B-16", "RN50"} <= names


def test_an_unknown_model_config_is_refused_naming_the_key():
    with pytest.raises(ParamsError, match=r"model.name: unknown open_clip model config 'medvlm-huge'"):
        check_params(parse_params({"model": {"name": "medvlm-huge"}}))
    check_params(parse_params({"model": {"name": "hf-hub:some/model"}}))  # resolved by open_clip at run time


def test_a_robust_subset_larger_than_a_synthetic_test_set_is_refused_naming_the_key():
    with pytest.raises(ParamsError, match=r"evaluate.robust.main_n_images: 300 is larger than the cls_ood test set "
                                          r"\(data.ood_test: 200\)"):
        check_params(parse_params({"data": {"ood_test": 200}}))
    check_params(parse_params({"data": {"ood_test": 300}}))


def test_the_marker_is_the_same_bytes_every_time(tmp_path):
    out = tmp_path / "checks" / "params.ok"
    check_params_stage(params=parse_params({}), out=out)
    first = out.read_bytes()
    check_params_stage(params=parse_params({"seed": 3, "noise_ratio": 0.2}), out=out)
    assert out.read_bytes() == first == MARKER_TEXT.encode()


def test_the_stage_script_refuses_bad_params_and_writes_no_marker(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["noise_ratio"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "checks" / "params.ok"
    result = CliRunner().invoke(stage_app("check_params"), ["--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    assert result.exit_code == 2 and "noise_ratio: Input should be less than 1" in result.output
    assert not out.exists()


def test_the_stage_imports_neither_torch_nor_open_clip():
    code = ("import sys; sys.argv = ['check_params', '--help']; import runpy\n"
            "try:\n    runpy.run_path('stages/check_params.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(name for name in ('torch', 'open_clip') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
