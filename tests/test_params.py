"""params.yaml validation: every bad value stops a stage, names the key, and writes nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvlm.params import (
    EvaluateParams,
    FeatureParams,
    Params,
    ParamsError,
    SyntheticParams,
    load_params,
    parse_params,
)
from e2e_repo import merge
from stage_scripts import stage_app

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())

# (override, the key the message must name, a fragment of the allowed values / rule)
BAD_PARAMS = [
    ({"noise_ratio": 1.0}, "noise_ratio", "less than 1"),
    ({"noise_ratio": -0.1}, "noise_ratio", "greater than or equal to 0"),
    ({"noise_ratio": "lots"}, "noise_ratio", "valid number"),
    ({"noise_type": "audio"}, "noise_type", "'image'"),
    ({"noise_kind": "gaussian"}, "noise_kind", "'adversarial' or 'random'"),
    ({"attack": {"caption": {"max_words": 0}}}, "attack.caption.max_words", "greater than or equal to 1"),
    ({"attack": {"caption": {"vocabulary": "bert"}}}, "attack.caption.vocabulary", "'keywords' or 'tokenizer'"),
    ({"device": "tpu"}, "device", "'auto', 'cpu' or 'cuda'"),
    ({"pretrain": {"epochs": 0}}, "pretrain.epochs", "greater than or equal to 1"),
    ({"surrogate": {"epochs": 1.5}}, "surrogate.epochs", "valid integer"),
    ({"attack": {"image": {"eps_255": -1}}}, "attack.image.eps_255", "greater than or equal to 0"),
    ({"attack": {"image": {"objective": "chaos"}}}, "attack.image.objective", "'targeted' or 'untargeted'"),
    ({"heads": {"methods": ["lp", "svm"]}}, "heads.methods", "unknown head method(s) ['svm']; registered: ['lp'"),
    ({"heads": {"methods": []}}, "heads.methods", "at least 1"),
    ({"unknown_top": 1}, "unknown_top", "allowed keys here: seed, device"),
    ({"data": {"colour": "grey"}}, "data.colour", "allowed keys here: image_size, pretrain_train"),
    ({"heads": {"lp": {"momentum": 0.9}}}, "heads.lp.momentum", "allowed keys here: epochs, batch_size"),
    ({"heads": {"ran": {"w_adv": -0.1}}}, "heads.ran.w_adv", "greater than or equal to 0"),
    ({"heads": {"ran": {"adv_eps": "big"}}}, "heads.ran.adv_eps", "a number >= 0 or 'measured'"),
    ({"heads": {"ran": {"adv_eps": -0.1}}}, "heads.ran.adv_eps", "a number >= 0 or 'measured'"),
    ({"heads": {"ran": {"centroid_margin": 5}}}, "heads.ran.centroid_margin", "less than or equal to 4"),
    ({"heads": {"ran": {"w_svd": 1}}}, "heads.ran.w_svd", "allowed keys here: epochs, batch_size, lr, weight_decay, w_con"),
    ({"heads": {"nmtune": {"w_cov": -1}}}, "heads.nmtune.w_cov", "greater than or equal to 0"),
    ({"heads": {"mlp": {"batch_size": 1}}}, "heads.mlp.batch_size", "greater than or equal to 2"),
    ({"features": {"augment": {"degrees": 90}}}, "features.augment.degrees", "less than or equal to 30"),
    ({"features": {"augment": {"hflip": True}}}, "features.augment.hflip", "allowed keys here: crop_scale_min"),
    ({"data": {"cls_id": {"source": "mimic"}}}, "data.cls_id.source", "'synthetic', 'chestxray14', 'chexpert', 'csv' or 'image_folder'"),
    ({"data": {"vqa": {"source": "roco", "path": "x"}}}, "data.vqa.source", "'synthetic', 'vqa_rad', 'slake' or 'csv'"),
    ({"data": {"pretrain": {"source": "roco"}}}, "data.pretrain", "needs exactly one of path"),
    ({"data": {"pretrain": {"source": "roco", "path": "a", "url": "https://x/a.zip", "sha256": "0" * 64}}},
     "data.pretrain", "needs exactly one of path"),
    ({"data": {"pretrain": {"source": "roco", "url": "https://x/a.zip"}}}, "data.pretrain", "url needs sha256"),
    ({"data": {"pretrain": {"source": "synthetic", "path": "x"}}}, "data.pretrain", "takes no path or url"),
    ({"data": {"multi_finding": "priority"}}, "data", "multi_finding 'priority'"),
    ({"data": {"labels": ["normal", "normal"]}}, "data", "labels must be distinct"),
    ({"data": {"resize": "stretch"}}, "data.resize", "'crop', 'pad' or 'squash'"),
    ({"data": {"uncertain": "ones"}}, "data.uncertain", "'exclude', 'negative' or 'positive'"),
    ({"data": {"source": "synthetic"}}, "data.source", "allowed keys here"),
    ({"data": {"synthetic": {"shift": 1.5}}}, "data.synthetic.shift", "less than or equal to 1"),
    ({"data": {"synthetic": {"heart_overlap": -0.1}}}, "data.synthetic.heart_overlap", "greater than or equal to 0"),
    ({"data": {"synthetic": {"label_noise": 1.0}}}, "data.synthetic.label_noise", "less than 1"),
    ({"data": {"synthetic": {"lesion_contrast": 0}}}, "data.synthetic.lesion_contrast", "greater than 0"),
    ({"data": {"synthetic": {"lesion_size": 2.5}}}, "data.synthetic.lesion_size", "less than or equal to 2"),
    ({"data": {"synthetic": {"second_finding_rate": "some"}}}, "data.synthetic.second_finding_rate", "valid number"),
    ({"data": {"synthetic": {"blur": 1}}}, "data.synthetic.blur", "allowed keys here: lesion_contrast, lesion_size"),
    ({"evaluate": {"robust": {"eps_255": [1, -2]}}}, "evaluate.robust.eps_255", "every radius must be >= 0"),
    ({"evaluate": {"robust": {"eps_255": [2, 2]}}}, "evaluate.robust.eps_255", "radii must be distinct"),
    ({"evaluate": {"robust": {"main_eps_255": 3}}}, "evaluate.robust", "main_eps_255 must be one of eps_255"),
    ({"evaluate": {"robust": {"main_n_images": 50}}}, "evaluate.robust", "main_n_images (50) must be >= n_images"),
    ({"evaluate": {"robust": {"check_steps": 10}}}, "evaluate.robust", "check_steps must exceed steps"),
    ({"evaluate": {"robust": {"step_fraction": 0}}}, "evaluate.robust.step_fraction", "greater than 0"),
    ({"evaluate": {"robust": {"autoattack": {"n_images": 400}}}}, "evaluate.robust",
     "autoattack.n_images (400) must be <= main_n_images (300)"),
    ({"evaluate": {"robust": {"masking": {"square_images": 301}}}}, "evaluate.robust",
     "masking.square_images (301) must be <= main_n_images"),
    ({"evaluate": {"robust": {"masking": {"large_eps_255": 4}}}}, "evaluate.robust",
     "masking.large_eps_255 (4) must exceed every radius"),
    ({"evaluate": {"robust": {"autoattack": {"iterations": 0}}}}, "evaluate.robust.autoattack.iterations",
     "greater than or equal to 1"),
    ({"evaluate": {"bootstrap": {"confidence": 1.2}}}, "evaluate.bootstrap.confidence", "less than 1"),
]


def merged(override: dict) -> dict:
    return merge(copy.deepcopy(DEFAULTS), override)


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert 0 <= params.noise_ratio < 1
    assert params.heads.methods == ["lp", "mlp", "nmtune", "ran"]
    # params.yaml spells out the schema's head and feature defaults, so the file is the one place to read them
    assert params.heads == Params().heads and params.features == FeatureParams()
    assert params.evaluate == EvaluateParams()
    assert params.data.synthetic == SyntheticParams()


@pytest.mark.parametrize(("override", "key", "rule"), BAD_PARAMS, ids=[case[1] for case in BAD_PARAMS])
def test_bad_params_name_the_key_and_rule(override, key, rule):
    with pytest.raises(ParamsError) as excinfo:
        parse_params(merged(override))
    message = str(excinfo.value)
    assert f"{key}:" in message
    assert rule in message


def test_real_data_preset_is_valid_and_differs_only_where_documented(tmp_path):
    from medvlm.preset import apply_preset  # a preset holds only changed keys: apply it onto params.yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    preset = apply_preset(preset=REPO / "presets" / "real-data.yaml", params=params_file)
    assert preset == load_params(params_file)
    assert {kind: s.source for kind, s in preset.data.sources().items()} == {
        "pretrain": "roco", "cls_id": "chestxray14", "cls_ood": "chexpert", "vqa": "vqa_rad"}
    assert preset.surrogate.epochs == 0 and preset.model.init == "openai"
    assert preset.heads == load_params(REPO / "params.yaml").heads


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(scalar)


STAGE_OUTPUT_OPTIONS = {
    "download": ["--out", "{tmp}/data/raw"],
    "surrogate": ["--out", "{tmp}/models/surrogate", "--live", "{tmp}/live", "--metrics", "{tmp}/m.json"],
    "attack": ["--out", "{tmp}/data/noisy", "--metrics", "{tmp}/m.json"],
    "pretrain": ["--out", "{tmp}/models/clip", "--live", "{tmp}/live", "--metrics", "{tmp}/m.json"],
    "features": ["--out", "{tmp}/data/features"],
    "finetune": ["--method", "lp", "--out", "{tmp}/models/heads/lp", "--live", "{tmp}/live"],
    "robustness": ["--method", "lp", "--out", "{tmp}/m.json", "--items", "{tmp}/items.parquet"],
    "evaluate": ["--out", "{tmp}/m.json", "--plots", "{tmp}/evaluation", "--items", "{tmp}/items.parquet"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_OUTPUT_OPTIONS))
@pytest.mark.parametrize(("override", "key", "rule"), BAD_PARAMS[::3], ids=[c[1] for c in BAD_PARAMS[::3]])
def test_every_stage_refuses_bad_params_before_writing(tmp_path, stage, override, key, rule):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(merged(override)))
    out_dir = tmp_path / "out"
    args = [a.format(tmp=out_dir) for a in STAGE_OUTPUT_OPTIONS[stage]]
    result = CliRunner().invoke(stage_app(stage), ["--params", str(params_file), *args])
    assert result.exit_code == 2, result.output
    assert f"{key}:" in result.output and rule in result.output
    assert not out_dir.exists(), "a stage wrote output despite invalid params"
