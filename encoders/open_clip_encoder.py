"""open_clip image towers (its ViT, ModifiedResNet and timm-backed towers) as `VisionEncoder`s."""
from __future__ import annotations

from typing import Any

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from .base import VisionEncoder, layer_index, tile_size, weights_file
from .config import ConfigError, EncoderConfig
from .timm_encoder import prune_timm_model


class OpenClipEncoder(VisionEncoder):
    """The image tower of an open_clip model.

    `cfg.model` names an open_clip config (`open_clip.list_models()`); `cfg.options` override it
    key by key, nested dicts merged, so a tiny random tower is "ViT-B-32" plus e.g.
    `{"embed_dim": 32, "vision_cfg": {"width": 64, "layers": 2, "patch_size": 8}, "text_cfg": {...}}`.
    open_clip builds and loads whole CLIP models (its checkpoints hold both towers), so the model
    is built through `open_clip.create_model` and only `.visual` is kept. `cfg.pretrained` as a path
    is a full open_clip checkpoint read by open_clip's own loader (safetensors, or
    `torch.load(weights_only=True)`); True means the model's first pretrained tag (a hub download).
    `feature_layer` picks a block of the ViT tower, a timm level of a timm-backed tower; the
    ModifiedResNet (RN50, ...) has no prune API, so it only gives its last stage (-1).
    """

    family = "open_clip"

    def __init__(self, cfg: EncoderConfig, weights: bool = True) -> None:
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
        checkpoint = _checkpoint(cfg)
        clip = open_clip.create_model(
            cfg.model,
            pretrained=checkpoint if weights else None,
            force_preprocess_cfg=None if weights else _tag_preprocess(cfg.model, checkpoint),
            force_image_size=size,  # timm-backed towers ignore vision_cfg's size; this resizes them
            pretrained_text=False,  # the text tower is dropped: never fetch its weights
            device=torch.get_default_device(),  # where the other families build (meta, for `tower_shape`)
            **overrides,
        )
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        self.layer = _prune_tower(clip.visual, cfg)
        super().__init__(clip.visual, image_size, preprocess["mean"], preprocess["std"])

    def set_gradient_checkpointing(self, on: bool) -> None:
        self.model.set_grad_checkpointing(on)

    def feature_map(self, pixel_values: Tensor) -> Tensor:
        # Every open_clip tower type implements forward_intermediates; it splits off and drops the
        # ViT's class token, as every family drops prefix tokens.
        out = self.model.forward_intermediates(
            pixel_values, indices=[self.layer], intermediates_only=True, output_fmt="NCHW"
        )
        return out["image_intermediates"][0]


def _prune_tower(visual: nn.Module, cfg: EncoderConfig) -> int:
    """Cuts the image tower after layer `cfg.feature_layer`; returns that layer's index.

    Pooling and projection heads go too: the features never pass through them.
    """
    if isinstance(visual, TimmModel):
        visual.head = nn.Identity()  # open_clip's pooling/projection adapter on top of the timm trunk
        return prune_timm_model(visual.trunk, cfg)
    if isinstance(visual, VisionTransformer):
        index = layer_index(cfg, len(visual.transformer.resblocks))
        visual.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
        visual.attn_pool = visual.attn_pool_contrastive = None  # CoCa's poolers, which prune_head keeps
        return index
    if isinstance(visual, ModifiedResNet):
        levels = 5  # stem + 4 stages, as its forward_intermediates counts them
        if layer_index(cfg, levels) != levels - 1:
            raise ConfigError(
                f"open_clip's ModifiedResNet tower ({cfg.model}) has no prune_intermediate_layers, so only "
                "encoder.feature_layer -1 (its last stage) works; for earlier stages use the timm family"
            )
        visual.attnpool = None  # an attention-pool head; open_clip's own init allows it to be absent
        return levels - 1
    raise ConfigError(f"open_clip tower {type(visual).__name__} ({cfg.model}) has no known way to choose a layer")


def _checkpoint(cfg: EncoderConfig) -> str | None:
    """What open_clip's `pretrained` argument gets: None (random), a pretrained tag, or a local file."""
    if cfg.pretrained is not True:
        return weights_file(cfg)
    tags = open_clip.list_pretrained_tags_by_model(cfg.model)
    if not tags:
        raise ConfigError(f"open_clip has no pretrained weights for {cfg.model!r}; give a local file")
    return tags[0]


def _tag_preprocess(model: str, checkpoint: str | None) -> dict[str, Any]:
    """The normalisation open_clip takes from a pretrained tag when it loads the tag's weights, for a tower
    built without them (a local file brings none: the model config's own applies)."""
    tag = open_clip.get_pretrained_cfg(model, checkpoint) if checkpoint else {}
    return {key: tag[key] for key in ("mean", "std") if key in tag}


def _merged(base: Any, override: Any) -> Any:
    """`override` on top of `base`, recursing into dicts, so options can change one field of vision_cfg."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merged(base.get(key), value) for key, value in override.items()}}
    return override
