"""The CLIP a training stage starts from, per `model.init`.

- `scratch`: random weights of the `model.name` config, built at the data's image size.
- an open_clip pretrained tag of `model.name` (e.g. ViT-B-16 + `openai`) or `hf-hub:<org>/<repo>` (e.g.
  BiomedCLIP; the hub repo carries the architecture, so `model.name` is not used): downloaded by open_clip
  into its cache on first use, for machines that can reach the internet. The model keeps its own input size,
  so `data.image_size` must match it; the tokenizer and the pixel mean/std are the pretrained model's.
- a local `.safetensors` checkpoint of the `model.name` architecture (for example `models/clip/
  model.safetensors` of an earlier run): loaded strictly, so a file for another architecture or image size
  stops with the keys that do not fit. Weights are never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from medvlm.io import DataError, load_tensors
from medvlm.models.clip import HF_HUB, MedClip, create_clip, register_model_configs
from medvlm.params import ModelParams, ParamsError

CHECKPOINT_SUFFIX = ".safetensors"


def init_kind(init: str) -> str:
    """scratch | checkpoint | hf-hub | tag."""
    if init == "scratch":
        return "scratch"
    if init.endswith(CHECKPOINT_SUFFIX):
        return "checkpoint"
    if init.startswith(HF_HUB):
        return "hf-hub"
    return "tag"


def _native_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _scratch(name: str, image_size: int, device: torch.device | str) -> MedClip:
    try:
        return create_clip(name, image_size, device)
    except ValueError as exc:  # unknown model config: a params problem, reported as one
        raise ParamsError(str(exc)) from None


def _from_checkpoint(params: ModelParams, image_size: int, device: torch.device | str) -> MedClip:
    path = Path(params.init)
    clip = _scratch(params.name, image_size, "cpu")
    state = load_tensors(path)
    try:
        clip.clip.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # torch lists the missing, unexpected and mis-shaped keys: show the first few
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise DataError(f"{path}: checkpoint does not fit model.name {params.name!r} at {image_size} px: "
                        f"{details[:600]}") from None
    return clip.to(device)


def _pretrained(params: ModelParams, image_size: int, device: torch.device | str) -> MedClip:
    register_model_configs()
    if init_kind(params.init) == "hf-hub":
        name, pretrained = params.init, None
    else:
        name, pretrained = params.name, params.init
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ParamsError(f"model.init: {pretrained!r} is not a pretrained tag of model.name {name!r} "
                              f"(tags: {tags or 'none'}); other values: scratch, hf-hub:<id>, a .safetensors file")
        # The model is rebuilt from `name` alone by later stages, so the name must carry the tag's activation.
        if open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu") and \
                not open_clip.get_model_config(name).get("quick_gelu"):
            raise ParamsError(f"model.init {pretrained!r} was trained with QuickGELU, which model.name {name!r} "
                              f"lacks: set model.name: {name}-quickgelu")
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device="cpu", require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"model.init {params.init!r}: could not load the pretrained weights ({exc}); a machine "
                        "without internet needs them in open_clip's cache or as a local .safetensors file") from None
    native = _native_size(model)
    if native != image_size:
        raise ParamsError(f"model.init {params.init!r} takes {native} px images but the data are {image_size} px: "
                          f"set data.image_size: {native}")
    return MedClip(model, tokenizer, name, image_size).to(device)


def initial_clip(params: ModelParams, image_size: int, device: torch.device | str = "cpu") -> MedClip:
    """The CLIP a training stage starts from, on `device`, in train mode."""
    kind = init_kind(params.init)
    if kind == "scratch":
        return _scratch(params.name, image_size, device)
    if kind == "checkpoint":
        return _from_checkpoint(params, image_size, device)
    return _pretrained(params, image_size, device)
