"""timm vision towers (ViT-style token models and conv nets) as `VisionEncoder`s."""
from __future__ import annotations

import timm
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg
from torch import Tensor, nn

from .base import VisionEncoder, layer_index, tile_size, weights_file
from .config import ConfigError, EncoderConfig


class TimmEncoder(VisionEncoder):
    """Any timm model, by name; `cfg.options` go to `timm.create_model` (depth, embed_dim, patch_size, ...).

    The tile size is built into models whose weights depend on it (learned position embeddings),
    so a 448 tile and a 32 tile differ only in config. `cfg.pretrained` as a path loads a local
    state-dict file (safetensors, or a weights-only torch checkpoint) through timm's pretrained
    path rather than `checkpoint_path`, so timm's checkpoint filter still adapts it (e.g. resamples
    position embeddings to the tile size). `feature_layer` picks a block of a ViT, a stage of a
    conv/hierarchical net (timm's `feature_info` levels, the stem first where timm lists it).
    """

    family = "timm"

    def __init__(self, cfg: EncoderConfig, weights: bool = True) -> None:
        model = create_timm_model(cfg, weights)
        data_cfg = resolve_model_data_config(model)
        self.layer = prune_timm_model(model, cfg)
        super().__init__(model, tile_size(cfg.image_size), data_cfg["mean"], data_cfg["std"])

    def set_gradient_checkpointing(self, on: bool) -> None:
        self.model.set_grad_checkpointing(on)

    def feature_map(self, pixel_values: Tensor) -> Tensor:
        # timm splits off and drops a ViT's prefix (class, register) tokens, as every family does.
        return self.model.forward_intermediates(
            pixel_values, indices=[self.layer], intermediates_only=True, output_fmt="NCHW"
        )[0]


def create_timm_model(cfg: EncoderConfig, weights: bool = True) -> nn.Module:
    """The whole timm model `cfg` names, weights loaded (random without `weights`), before `prune_timm_model`
    cuts it: its state dict has the keys timm's loader expects of a weights file (a tower's pretraining saves one)."""
    kwargs = dict(cfg.options)
    if _size_is_built_in(cfg.model):
        kwargs["img_size"] = tile_size(cfg.image_size)
    path = weights_file(cfg)
    if path is not None and weights:
        # Some default configs (the AugReg ViTs) set `custom_load` for Google's .npz weights; older
        # timm releases keep it under a file overlay and send a state-dict file to the .npz reader
        # (1.0.31 resets it itself).
        kwargs["pretrained_cfg_overlay"] = dict(file=path, custom_load=False)
    return timm.create_model(cfg.model, pretrained=weights and bool(cfg.pretrained), num_classes=0, **kwargs)


def prune_timm_model(model: nn.Module, cfg: EncoderConfig) -> int:
    """Cuts a timm model after layer `cfg.feature_layer` with timm's own API; returns that layer's index.

    Shared with open_clip's timm-backed towers. The index stays valid for `forward_intermediates`
    on the pruned model (timm keeps its feature bookkeeping, e.g. EfficientNet's stage ends).
    """
    if not hasattr(model, "prune_intermediate_layers"):
        raise ConfigError(
            f"timm model {cfg.model!r} has no prune_intermediate_layers, so encoder.feature_layer cannot "
            "choose its layer; use a model with timm's forward_intermediates API (ViTs, ResNets, ConvNeXts, ...)"
        )
    index = layer_index(cfg, len(model.feature_info))
    model.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
    return index


def _size_is_built_in(model_name: str) -> bool:
    """Whether the model takes `img_size` at construction; timm marks these `fixed_input_size`.

    Conv nets take any size and reject the argument, so it is only passed where it belongs.
    """
    pretrained_cfg = get_pretrained_cfg(model_name)
    return pretrained_cfg is not None and pretrained_cfg.fixed_input_size
