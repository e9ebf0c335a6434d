"""open_clip factory for the project's CLIP models, with pixel normalisation inside the module.

Everything outside this file hands the model images as float pixels in [0, 1] (N×1×H×W grayscale or
N×3×H×W); mean/std normalisation happens here, so attacks work in plain pixel space.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from medvlm.io import DataError, load_tensors, read_json, save_tensors, write_json
from medvlm.models.text_tower import encode_token_embeddings, runs_from_embeddings, token_embeddings

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "clip.json"
HF_HUB = "hf-hub:"
"""open_clip's prefix for models whose config and weights live on the Hugging Face hub."""

_registered = False


def register_model_configs() -> None:
    """Make the configs shipped in `medvlm/model_configs/` known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


class MedClip(nn.Module):
    """An open_clip CLIP model plus its tokenizer and pixel normalisation."""

    def __init__(self, model: nn.Module, tokenizer, model_name: str, image_size: int):
        super().__init__()
        self.clip = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.image_size = image_size
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.register_buffer("pixel_mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings of float pixels in [0, 1] (grayscale images are repeated to 3 channels)."""
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        return self.clip.encode_image((pixels - self.pixel_mean) / self.pixel_std, normalize=normalize)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if runs_from_embeddings(self):  # the used part of the context only (text_tower.py)
            return encode_token_embeddings(self, token_embeddings(self, tokens), tokens, normalize=normalize)
        return self.clip.encode_text(tokens, normalize=normalize)

    def encode_texts(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(texts), normalize=normalize)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings and the logit scale: what `ClipLoss` takes.

        A training step calls the model through here so that DistributedDataParallel, which only sees
        `forward`, synchronises the gradients of both towers.
        """
        return self.encode_pixels(pixels), self.encode_tokens(tokens), self.logit_scale()


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def create_clip(model_name: str, image_size: int, device: torch.device | str = "cpu") -> MedClip:
    """A randomly initialised CLIP from a registered open_clip config (or an `hf-hub:` model's config, from
    open_clip's cache), at the data's image size. No pretrained weights are fetched: callers load their own."""
    register_model_configs()
    if not model_name.startswith(HF_HUB) and model_name not in open_clip.list_models():
        raise ValueError(
            f"model.name: unknown open_clip model config {model_name!r}; "
            f"shipped configs: {sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}"
        )
    # open_clip warns "Model initialized randomly" on the root logger; every caller here either wants that or
    # loads its weights next, so the warning would only mislead the logs of stages that load trained weights.
    random_init_warning = _DropMessage("No pretrained weights loaded for model")
    logging.getLogger().addFilter(random_init_warning)
    try:
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False, pretrained_text=False,
                                       force_image_size=image_size, device=device)
    finally:
        logging.getLogger().removeFilter(random_init_warning)
    tokenizer = open_clip.get_tokenizer(model_name)
    return MedClip(model, tokenizer, model_name, image_size).to(device)


def save_clip(clip: MedClip, out_dir: str | Path) -> None:
    """Weights as safetensors plus a small JSON saying how to rebuild the module."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(out_dir / WEIGHTS_FILE, clip.clip.state_dict())
    # The pixel mean/std are the pretrained model's (open_clip's defaults for scratch models): stored so a
    # reloaded model normalises as it was trained without asking open_clip's pretrained registry again.
    write_json(out_dir / CONFIG_FILE, {"model_name": clip.model_name, "image_size": clip.image_size,
                                       "pixel_mean": clip.pixel_mean.flatten().tolist(),
                                       "pixel_std": clip.pixel_std.flatten().tolist()})


def load_clip(model_dir: str | Path, device: torch.device | str = "cpu") -> MedClip:
    """Rebuild a saved CLIP (no pickle anywhere: config JSON + safetensors)."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / CONFIG_FILE)
    clip = create_clip(config["model_name"], int(config["image_size"]), device="cpu")
    for name in ("pixel_mean", "pixel_std"):
        if name in config:  # folders saved before the statistics were stored use open_clip's defaults
            getattr(clip, name).copy_(torch.tensor(config[name]).view(1, 3, 1, 1))
    state = load_tensors(model_dir / WEIGHTS_FILE)
    try:
        clip.clip.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{model_dir / WEIGHTS_FILE}: weights do not match {config['model_name']}: {exc}") from None
    return clip.to(device).eval()
