"""Hugging Face vision towers (CLIP, SigLIP and towers laid out like them) as `VisionEncoder`s."""
from __future__ import annotations

import os

from huggingface_hub.errors import StrictDataclassError
import torch
from torch import Tensor, nn
from transformers import CONFIG_MAPPING, IMAGE_PROCESSOR_MAPPING, AutoConfig, AutoImageProcessor, AutoModel
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import IMAGE_PROCESSOR_NAME

from .base import VisionEncoder, hf_gradient_checkpointing, layer_index, tile_size, weights_dir
from .config import ConfigError, EncoderConfig


class HFEncoder(VisionEncoder):
    """A transformers vision tower, built from a config or loaded with `from_pretrained`.

    `cfg.pretrained` False: `cfg.model` is a model_type ("clip_vision_model", "siglip_vision_model",
    ...) and `cfg.options` its config kwargs; the tile size is `cfg.image_size`. A local directory
    (or True, with `cfg.model` a hub name or path) goes through `from_pretrained`, never with
    `trust_remote_code`. A full dual encoder (CLIP, SigLIP) keeps only its `.vision_model`.
    Mean/std come from the saved image processor, else from the family's processor defaults.
    """

    family = "hf"

    def __init__(self, cfg: EncoderConfig, weights: bool = True) -> None:
        image_size = tile_size(cfg.image_size)
        if image_size[0] != image_size[1]:
            raise ConfigError(f"the hf family takes square tiles (CLIP/SigLIP position tables are), got {image_size}")
        source = cfg.model if cfg.pretrained is True else weights_dir(cfg)
        model, vision = _tower(cfg, source, image_size[0], weights)
        _cut_after_feature_layer(model, cfg)
        side = vision.image_size // vision.patch_size
        self.patch_grid = (side, side)
        # Class tokens lead the sequence: CLIP has one position more than it has patches, SigLIP none.
        self.num_prefix_tokens = model.embeddings.num_positions - model.embeddings.num_patches
        mean, std = _normalisation(source, vision)
        if source is not None:  # saved with the model (see _tower): the rebuild has no directory to read
            cfg.mean, cfg.std = list(mean), list(std)
        super().__init__(model, image_size, mean, std)

    def set_gradient_checkpointing(self, on: bool) -> None:
        hf_gradient_checkpointing(self.model, on)

    def feature_map(self, pixel_values: Tensor) -> Tensor:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]
        return hidden[:, self.num_prefix_tokens :].transpose(1, 2).unflatten(2, self.patch_grid)


_NOT_ARCHITECTURE = {"model_type", "transformers_version", "architectures", "dtype", "torch_dtype", "image_size"}


def _tower(cfg: EncoderConfig, source: str | None, size: int, weights: bool) -> tuple[nn.Module, PreTrainedConfig]:
    """The vision model and its config: built at the tile size, or loaded from `source` (its config alone
    without `weights`)."""
    config = _config(cfg) if source is None else AutoConfig.from_pretrained(source, trust_remote_code=False)
    vision = getattr(config, "vision_config", config)
    if not hasattr(vision, "patch_size"):
        raise ConfigError(f"hf model type {vision.model_type!r} is not a vision tower (its config has no patch_size)")
    if source is None:
        vision.image_size = size
        model = AutoModel.from_config(config)
    else:
        if vision.image_size != size:
            raise ConfigError(
                f"encoder.image_size {size} differs from {source!r}'s {vision.image_size}; "
                "its position embeddings are fixed to that size"
            )
        model = (AutoModel.from_pretrained(source, trust_remote_code=False, dtype=torch.float32)  # fp32 master weights
                 if weights else AutoModel.from_config(config))
        # Write the loaded architecture back, so a saved MMLLM rebuilds this tower offline from its config.
        cfg.model = vision.model_type
        cfg.options = {k: v for k, v in vision.to_diff_dict().items() if k not in _NOT_ARCHITECTURE}
    return getattr(model, "vision_model", model), vision


def _cut_after_feature_layer(model: nn.Module, cfg: EncoderConfig) -> None:
    """Drops the encoder layers after `cfg.feature_layer`, and the final norm and pooling head.

    Those two are the children registered after the encoder (CLIP's post_layernorm, SigLIP's
    post_layernorm and head): they only post-process its output, and the features are the raw
    hidden state, so they would get no gradient.
    """
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"hf model {type(model).__name__} has no encoder.layers to choose feature_layer from")
    model.encoder.layers = layers[: layer_index(cfg, len(layers)) + 1]
    children = [name for name, _ in model.named_children()]
    for name in children[children.index("encoder") + 1 :]:
        setattr(model, name, nn.Identity())


def _config(cfg: EncoderConfig) -> PreTrainedConfig:
    """The config `cfg.model`/`cfg.options` describe; bad values are ConfigErrors naming the field."""
    if cfg.model not in CONFIG_MAPPING:
        raise ConfigError(
            f"unknown hf model type {cfg.model!r}; encoder.model must be a transformers model_type such as "
            "'clip_vision_model' or 'siglip_vision_model' (or set encoder.pretrained to a model directory)"
        )
    try:
        return AutoConfig.for_model(cfg.model, **cfg.options)
    except (StrictDataclassError, TypeError, ValueError) as err:
        raise ConfigError(f"encoder.options do not make a valid {cfg.model} config: {err}") from err


def _normalisation(source: str | None, vision: PreTrainedConfig) -> tuple[list[float], list[float]]:
    """Mean/std from the saved image processor (a hub name is assumed to have one), else the family's defaults.

    A vision tower's model_type ("clip_vision_model") has no processor of its own in transformers'
    mapping; its dual-encoder parent ("clip") has, hence the suffix rule.
    """
    if source is not None and (not os.path.isdir(source) or os.path.isfile(os.path.join(source, IMAGE_PROCESSOR_NAME))):
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
        return processor.image_mean, processor.image_std
    parent = vision.model_type.removesuffix("_vision_model")
    if parent not in CONFIG_MAPPING or CONFIG_MAPPING[parent] not in IMAGE_PROCESSOR_MAPPING:
        raise ConfigError(
            f"transformers has no image processor for {vision.model_type!r} to take mean/std from; "
            f"save a {IMAGE_PROCESSOR_NAME} with the model"
        )
    processor_class = next(iter(IMAGE_PROCESSOR_MAPPING[CONFIG_MAPPING[parent]].values()))
    return processor_class.image_mean, processor_class.image_std
