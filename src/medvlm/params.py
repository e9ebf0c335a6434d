"""The params.yaml schema: one validated object per stage section.

Every stage loads the whole file through `load_params` before it writes anything, so an unknown key,
a wrong type or an out-of-range value stops the run with a message naming the key and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from medvlm.eval_params import BootstrapParams, EvaluateParams, RobustnessParams
from medvlm.methods import METHODS, HeadTrainingParams
from medvlm.params_base import Section as _Section



__all__ = ["BootstrapParams", "EvaluateParams", "RobustnessParams"]  # re-exported: they live in eval_params.py

NOT_RESULT_SHAPING = ("data.workers", "surrogate.checkpoint_every", "surrogate.nproc", "surrogate.nnodes",
                      "surrogate.rdzv_endpoint", "pretrain.checkpoint_every", "pretrain.nproc", "pretrain.nnodes",
                      "pretrain.rdzv_endpoint")
"""Knobs that set resources or checkpointing and never change a number: no stage depends on them in dvc.yaml,
so changing one re-runs nothing (tests/test_dvc_status.py)."""


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key and the allowed values."""




_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENDPOINT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})$")
"""host:port of a rendezvous: a host name, an IPv4 address or a bracketed IPv6 address, and a port."""


class _SourceParams(_Section):
    """Where one task's data comes from: the built-in generator, or a data set's local copy or archive URL.

    Subclasses narrow `source` to the adapters that can fill the task (docs/data.md)."""

    path: str = Field("", description="local copy: the data set's folder (source csv: the CSV file)")
    url: str = Field("", description="archive (tar, tar.gz, zip) to fetch instead of a local path")
    sha256: str = Field("", description="SHA-256 of the archive at `url` (hex); required with `url`")
    subdir: str = Field("", description="with `url`: the data set's folder (csv: its CSV file) inside the archive")
    max_per_split: int = Field(0, ge=0, description="seeded subsample of at most this many images per split; 0: all")
    skip_missing: bool = Field(False, description="leave out rows whose image file is missing or empty")

    @model_validator(mode="after")
    def _path_or_url(self):
        source = self.source  # type: ignore[attr-defined]  (each subclass declares its allowed sources)
        if source == "synthetic":
            if self.path or self.url:
                raise ValueError("source 'synthetic' takes no path or url")
            return self
        if bool(self.path) == bool(self.url):
            raise ValueError(f"source {source!r} needs exactly one of path (a local copy) or url (an archive to fetch)")
        if self.url and not _SHA256.match(self.sha256.lower()):
            raise ValueError("url needs sha256: the archive's SHA-256 as 64 hex digits")
        if self.subdir and not self.url:
            raise ValueError("subdir applies to a fetched archive (url) only; give the folder as path")
        return self


class PretrainSourceParams(_SourceParams):
    source: Literal["synthetic", "roco", "csv"] = "synthetic"


class ClassificationSourceParams(_SourceParams):
    source: Literal["synthetic", "chestxray14", "chexpert", "csv", "image_folder"] = "synthetic"


class VqaSourceParams(_SourceParams):
    source: Literal["synthetic", "vqa_rad", "slake", "csv"] = "synthetic"


class SyntheticParams(_Section):
    """How hard the built-in synthetic data is. The defaults are the calibrated testbed (docs/testbed.md: the
    linear probe off its ceiling in-domain and off its floor out-of-domain); lesion_contrast, lesion_size,
    effusion_height and pneumothorax_collapse 1, heart_overlap, second_finding_rate and label_noise 0, and
    shift 1 generate the original, much easier data byte for byte."""

    lesion_contrast: float = Field(
        0.6, gt=0, le=2, description="multiplies every finding's signal (nodule density, consolidation opacity, "
        "lung air an effusion replaces, pneumothorax rim and pleural line); < 1: subtler")
    lesion_size: float = Field(0.85, gt=0, le=2, description="multiplies nodule and consolidation radii")
    effusion_height: float = Field(1.0, gt=0, le=2, description="multiplies the effusion's fluid height")
    pneumothorax_collapse: float = Field(
        1.0, gt=0, le=2, description="multiplies 1 - f, the share of its size a collapsed lung loses (f stays > 0)")
    heart_overlap: float = Field(
        0.5, ge=0, le=1, description="0: cardiomegaly heart sizes disjoint from normal ones; 1: heavily overlapping")
    second_finding_rate: float = Field(
        0.1, ge=0, le=1, description="share of abnormal images that also show a second, different finding "
        "(in captions and VQA answers, not in the label)")
    label_noise: float = Field(
        0.0, ge=0, lt=1, description="share of cls_id train labels replaced by a random different class")
    shift: float = Field(
        0.25, ge=0, le=1, description="out-of-domain acquisition: 0 the in-domain one, 1 the other hospital's, "
        "every range endpoint interpolated linearly in between")


class DataParams(_Section):
    image_size: int = Field(64, ge=16, le=512)
    # Sizes of the built-in synthetic generator (used by the tasks whose source is synthetic).
    pretrain_train: int = Field(3000, ge=8, description="pre-training image-caption pairs")
    pretrain_val: int = Field(500, ge=8, description="held-out pairs for retrieval recall")
    cls_train: int = Field(1200, ge=8, description="in-domain classification training images")
    cls_test: int = Field(5000, ge=8, description="in-domain classification test images")
    ood_test: int = Field(5000, ge=8, description="out-of-domain (shifted acquisition) test images")
    vqa_train: int = Field(800, ge=8, description="VQA training images (several questions each)")
    vqa_test: int = Field(1100, ge=8, description="VQA test images (2-4 questions each)")
    synthetic: SyntheticParams = SyntheticParams()
    # Real data sets (docs/data.md).
    pretrain: PretrainSourceParams = PretrainSourceParams()
    cls_id: ClassificationSourceParams = ClassificationSourceParams()
    cls_ood: ClassificationSourceParams = ClassificationSourceParams()
    vqa: VqaSourceParams = VqaSourceParams()
    labels: list[str] = Field(
        default_factory=list,
        description="classes of cls_id and cls_ood, in index order; []: the synthetic set or the labels cls_id has")
    multi_finding: Literal["single", "priority"] = Field(
        "single", description="multi-label sources: keep single-finding images, or take the first of `labels` shown")
    uncertain: Literal["exclude", "negative", "positive"] = Field(
        "exclude", description="CheXpert -1.0 labels: leave the image out, or read the finding as absent / present")
    resize: Literal["crop", "pad", "squash"] = Field(
        "crop", description="non-square images: centre crop, pad with black, or squash to image_size")
    workers: int = Field(0, ge=0, description="processes decoding and resizing real images; 0: one per CPU")

    @model_validator(mode="after")
    def _labels_fit_the_policy(self):
        if len(set(self.labels)) != len(self.labels) or any(not label.strip() for label in self.labels):
            raise ValueError(f"labels must be distinct, non-empty class names (got {self.labels})")
        if self.labels and len(self.labels) < 2:
            raise ValueError("labels needs two or more classes (or [] to take them from the data)")
        if self.multi_finding == "priority" and not self.labels:
            raise ValueError("multi_finding 'priority' picks the first of `labels` an image shows: set labels")
        return self

    def sources(self) -> dict[str, _SourceParams]:
        """Each manifest kind and where its data comes from."""
        return {"pretrain": self.pretrain, "cls_id": self.cls_id, "cls_ood": self.cls_ood, "vqa": self.vqa}


class ModelParams(_Section):
    name: str = Field("medvlm-tiny-rn", min_length=1, description="open_clip model config name")
    init: str = Field(
        "scratch", min_length=1,
        description="scratch | an open_clip pretrained tag of `name` | hf-hub:<id> | a local .safetensors checkpoint")

    def is_scratch(self) -> bool:
        return self.init == "scratch"


class TrainParams(_Section):
    """Contrastive CLIP training (used by both the surrogate and the pretrain stage)."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(50, ge=0)
    checkpoint_every: int = Field(
        50, ge=0, description="optimizer steps between checkpoints in checkpoints/<stage>/ (0: only on SIGINT/SIGTERM)")
    nproc: int = Field(1, ge=1, le=1024, description="training processes per machine (one per GPU); > 1 launches "
                       "torchrun")
    nnodes: int = Field(1, ge=1, le=1024, description="machines training together (torchrun's c10d rendezvous "
                        "at rdzv_endpoint); each runs nproc processes")
    rdzv_endpoint: str = Field("", description="host:port of the c10d rendezvous every machine joins; required "
                               "when nnodes > 1")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, endpoint: str) -> str:
        if not endpoint:
            return endpoint
        match = _ENDPOINT.match(endpoint)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError("must be host:port (a host name or address, a port 1-65535), e.g. node001:29500")
        return endpoint

    @property
    def world_size(self) -> int:
        """Training processes in all: nnodes machines of nproc each."""
        return self.nnodes * self.nproc

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> "TrainParams":
        if self.nnodes == 1 and self.batch_size % self.nproc:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of nproc ({self.nproc}): "
                             "each training process takes an equal slice of the global batch")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of nnodes x nproc "
                             f"({self.nnodes} x {self.nproc} = {self.world_size} training processes): each takes "
                             "an equal slice of the global batch")
        return self


class SurrogateParams(TrainParams):
    """The attacks' target. 0 epochs keeps the initial model as it is: only with pretrained `model.init`."""

    epochs: int = Field(ge=0)


class ImageAttackParams(_Section):
    objective: Literal["targeted", "untargeted"] = "targeted"
    eps_255: float = Field(2.0, ge=0, le=255, description="L-inf budget in 1/255 pixel units")
    step_255: float = Field(0.5, gt=0, le=255, description="PGD step in 1/255 pixel units")
    steps: int = Field(10, ge=1)
    random_start: bool = True
    bf16: bool = Field(
        False, description="PGD forward/backward under bfloat16 autocast: faster on AMX CPUs and GPUs, not "
                           "bit-identical to float32 (off keeps the float32 noisy set)"
    )


class CaptionAttackParams(_Section):
    max_words: int = Field(1, ge=1, description="words a caption may have substituted, at most")
    vocabulary: Literal["keywords", "tokenizer"] = Field(
        "keywords", description="substitutes: the corpus's anatomy/condition keywords, or any tokenizer word"
    )
    same_group: bool = Field(
        True, description="keywords vocabulary: substitute within a keyword's group (side for side, size for size)"
    )
    candidates: int = Field(16, ge=1, description="first-order best substitutions scored exactly per word changed")


class AttackParams(_Section):
    batch_size: int = Field(128, ge=1)
    success_candidates: int = Field(
        64, ge=2, description="captions each perturbed image is ranked against for the success rate"
    )
    gallery_pairs: int = Field(4, ge=1, le=32, description="perturbed pairs shown in the gallery PNG")
    image: ImageAttackParams = ImageAttackParams()
    caption: CaptionAttackParams = CaptionAttackParams()


class AugmentParams(_Section):
    """Random changes behind the two augmented views of every training image (features stage).

    Laterality-preserving only: a finding's side is part of the label and of VQA answers, so there is
    deliberately no flip here; crop, rotation and intensity changes stay mild enough to keep every finding
    in the frame and on its side (docs/method.md)."""

    crop_scale_min: float = Field(0.8, gt=0, le=1, description="random resized crop keeps this area fraction or more")
    crop_ratio_max: float = Field(1.1, ge=1, le=2, description="crop aspect ratio drawn from [1/r, r]")
    degrees: float = Field(5.0, ge=0, le=30, description="rotation drawn from [-degrees, degrees]")
    brightness: float = Field(0.2, ge=0, lt=1, description="brightness factor drawn from [1-b, 1+b]")
    contrast: float = Field(0.2, ge=0, lt=1, description="contrast factor drawn from [1-c, 1+c]")


class FeatureParams(_Section):
    batch_size: int = Field(256, ge=1)
    augment: AugmentParams = AugmentParams()
    shift_images: int = Field(
        64, ge=1, description="training images per task on which the shift of u under the evaluation's pixel "
        "PGD is measured (the budget of heads.ran.adv_eps: measured)")


class HeadParams(_Section):
    """`heads`: the methods to train, and one section per registered method (`medvlm.methods`); rebuilt by
    `params_model` when a method is registered after import."""

    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)

    @field_validator("methods")
    @classmethod
    def _registered(cls, methods: list[str]) -> list[str]:
        unknown = [name for name in methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown head method(s) {unknown}; registered: {list(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct, got {methods}")
        return methods

    def settings(self, method: str) -> HeadTrainingParams:
        """The `heads.<method>` section."""
        return getattr(self, method)


def _heads_model() -> type[HeadParams]:
    sections = {name: (method.params, method.params()) for name, method in METHODS.items()}
    return create_model("HeadParams", __base__=HeadParams, **sections)


_BUILTIN_HEADS = _heads_model()


class Params(_Section):
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    noise_ratio: float = Field(0.05, ge=0, lt=1)
    noise_type: Literal["image", "caption", "both"] = "image"
    noise_kind: Literal["adversarial", "random"] = "adversarial"
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    surrogate: SurrogateParams = SurrogateParams(epochs=6)
    attack: AttackParams = AttackParams()
    pretrain: TrainParams = TrainParams(epochs=8)
    features: FeatureParams = FeatureParams()
    heads: _BUILTIN_HEADS = _BUILTIN_HEADS()  # type: ignore[valid-type]
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _several_machines_need_a_rendezvous(self):
        for name in ("surrogate", "pretrain"):
            train = getattr(self, name)
            if train.nnodes > 1 and not train.rdzv_endpoint:
                raise ValueError(f"{name}.rdzv_endpoint: required when {name}.nnodes > 1 ({train.nnodes}): the "
                                 "host:port of the c10d rendezvous every machine joins, e.g. the first node's "
                                 "hostname and a free port (docs/scaling.md)")
        return self

    @model_validator(mode="after")
    def _untrained_surrogate_needs_weights(self):
        if self.surrogate.epochs == 0 and self.model.is_scratch():
            raise ValueError("surrogate.epochs: 0 keeps the initial model as the surrogate, which needs pretrained "
                             "weights; model.init is 'scratch' (set surrogate.epochs >= 1 or a pretrained init)")
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of `loc` (for 'unknown key' messages)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format_error(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(params_model(), loc))
        return f"{key}: unknown key; allowed keys here: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections: its message names the keys
        return message
    return f"{key}: {message} (got {error.get('input')!r})"


_models: dict[tuple, type[Params]] = {}


def params_model() -> type[Params]:
    """The Params model for the head methods registered now: `Params` itself for the built-in ones, else a
    subclass whose `heads` has a section per registered method."""
    key = tuple((name, id(method)) for name, method in METHODS.items())
    if key not in _models:
        static = set(_BUILTIN_HEADS.model_fields) - {"methods"} == set(METHODS) and all(
            _BUILTIN_HEADS.model_fields[name].annotation is method.params for name, method in METHODS.items())
        heads = _BUILTIN_HEADS if static else _heads_model()
        _models[key] = Params if static else create_model("Params", __base__=Params, heads=(heads, heads()))
    return _models[key]


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-loaded params mapping; raise ParamsError naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys to values at the top level")
    try:
        return params_model().model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_format_error(err) for err in exc.errors())
        raise ParamsError(f"{source} is invalid:\n  {lines}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))

