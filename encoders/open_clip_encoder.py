"""open_clip image towers (its ViT, ModifiedResNet and timm-backed towers) as `VisionEncoder`s."""
from __future__ import annotations

from typing import Any

import open_clip
from torch import Tensor

from mmllm.config import ConfigError, EncoderConfig

from .base import VisionEncoder, tile_size, weights_file


class OpenClipEncoder(VisionEncoder):
    """The image tower of an open_clip model.

    `cfg.model` names an open_clip config (`open_clip.list_models()`); `cfg.options` override it
    key by key, nested dicts merged, so a tiny random tower is "ViT-B-32" plus e.g.
    `{"embed_dim": 32, "vision_cfg": {"width": 64, "layers": 2, "patch_size": 8}, "text_cfg": {...}}`.
    open_clip builds and loads whole CLIP models (its checkpoints hold both towers), so the model
    is built through `open_clip.create_model` and only `.visual` is kept. `cfg.pretrained` as a path
    is a full open_clip checkpoint read by open_clip's own loader (safetensors, or
    `torch.load(weights_only=True)`); True means the model's first pretrained tag (a hub download).
    """

    family = "open_clip"

    def __init__(self, cfg: EncoderConfig) -> None:
        image_size = tile_size(cfg.image_size)
        base = open_clip.get_model_config(cfg.model)
        if base is None:
            raise ConfigError(f"unknown open_clip model {cfg.model!r}; valid names: open_clip.list_models()")
        config = _merged(base, cfg.options)
        overrides = {key: config[key] for key in cfg.options}
        # Built at the tile size (an int when square: open_clip's ResNet tower takes only ints);
        # patch dropout off because it would drop tokens from the fixed grid.
        size = image_size[0] if image_size[0] == image_size[1] else image_size
        overrides["vision_cfg"] = {**config["vision_cfg"], "image_size": size, "patch_dropout": 0.0}
        clip = open_clip.create_model(
            cfg.model,
            pretrained=_checkpoint(cfg),
            force_image_size=size,  # timm-backed towers ignore vision_cfg's size; this resizes them
            pretrained_text=False,  # the text tower is dropped: never fetch its weights
            **overrides,
        )
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        super().__init__(clip.visual, image_size, preprocess["mean"], preprocess["std"])

    def feature_map(self, pixel_values: Tensor) -> Tensor:
        # Every open_clip tower type implements forward_intermediates; the last block's output
        # without the class token is the patch grid. The final norm belongs to the tokens except
        # after an attention pooler (CoCa), where it normalises the pooled queries instead.
        out = self.model.forward_intermediates(
            pixel_values,
            indices=1,
            intermediates_only=True,
            normalize_intermediates=getattr(self.model, "attn_pool", None) is None,
            output_fmt="NCHW",
        )
        return out["image_intermediates"][-1]


def _checkpoint(cfg: EncoderConfig) -> str | None:
    """What open_clip's `pretrained` argument gets: None (random), a pretrained tag, or a local file."""
    if cfg.pretrained is not True:
        return weights_file(cfg)
    tags = open_clip.list_pretrained_tags_by_model(cfg.model)
    if not tags:
        raise ConfigError(f"open_clip has no pretrained weights for {cfg.model!r}; give a local file")
    return tags[0]


def _merged(base: Any, override: Any) -> Any:
    """`override` on top of `base`, recursing into dicts, so options can change one field of vision_cfg."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merged(base.get(key), value) for key, value in override.items()}}
    return override
