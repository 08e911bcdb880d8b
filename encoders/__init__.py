"""Vision encoder registry: a family name in `EncoderConfig.family` -> its builder.

A new family is one file with a `VisionEncoder` subclass plus one line in `ENCODERS`.
"""
from __future__ import annotations

from collections.abc import Callable

from mmllm.config import EncoderConfig, check_choice

from .base import VisionEncoder
from .hf_encoder import HFEncoder
from .open_clip_encoder import OpenClipEncoder
from .timm_encoder import TimmEncoder

ENCODERS: dict[str, Callable[[EncoderConfig], VisionEncoder]] = {
    "timm": TimmEncoder,
    "open_clip": OpenClipEncoder,
    "hf": HFEncoder,
}


def build_encoder(cfg: EncoderConfig) -> VisionEncoder:
    """The encoder `cfg` describes; an unknown family is a ConfigError naming the valid ones."""
    check_choice("encoder.family", cfg.family, tuple(ENCODERS))
    return ENCODERS[cfg.family](cfg)


__all__ = ["ENCODERS", "VisionEncoder", "build_encoder"]
