"""Encoder registries: a family name in `EncoderConfig.family` / `AudioConfig.family` -> its builder.

A new family is one file with a `VisionEncoder` (or `AudioEncoder`) subclass plus one line in
`ENCODERS` (or `AUDIO_ENCODERS`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from .base import AudioEncoder, TowerShape, VisionEncoder, triple
from .config import AudioConfig, EncoderConfig, check_choice
from .hf_encoder import HFEncoder
from .open_clip_encoder import OpenClipEncoder
from .timm_encoder import TimmEncoder
from .whisper_encoder import WhisperAudioEncoder

ENCODERS: dict[str, Callable[..., VisionEncoder]] = {  # (cfg, weights=True)
    "timm": TimmEncoder,
    "open_clip": OpenClipEncoder,
    "hf": HFEncoder,
}
AUDIO_ENCODERS: dict[str, type[AudioEncoder]] = {
    "whisper": WhisperAudioEncoder,
}


def build_encoder(cfg: EncoderConfig, weights: bool = True) -> VisionEncoder:
    """The encoder `cfg` describes (randomly initialised without `weights`); an unknown family is a ConfigError
    naming the valid ones."""
    check_choice("encoder.family", cfg.family, tuple(ENCODERS))
    encoder = ENCODERS[cfg.family](cfg, weights=weights)
    if cfg.mean is not None:
        encoder.mean = triple(cfg.mean, "encoder.mean")
    if cfg.std is not None:
        encoder.std = triple(cfg.std, "encoder.std")
    return encoder


def tower_shape(cfg: EncoderConfig) -> TowerShape:
    """The tower's tile, grid, width and normalisation from its config alone: built on the meta device from a
    copy of `cfg`, reading the configs the real build reads but no weights, so the processor (and the data it
    prepares) needs no model."""
    with torch.device("meta"):
        return build_encoder(copy.deepcopy(cfg), weights=False).shape


def audio_stride(cfg: AudioConfig) -> int:
    """Input mel frames per state of the speech encoder `cfg` describes: the family's, no model built."""
    check_choice("audio.family", cfg.family, tuple(AUDIO_ENCODERS))
    return AUDIO_ENCODERS[cfg.family].stride


def build_audio_encoder(cfg: AudioConfig) -> AudioEncoder:
    """The speech encoder `cfg` describes; an unknown family is a ConfigError naming the valid ones."""
    check_choice("audio.family", cfg.family, tuple(AUDIO_ENCODERS))
    return AUDIO_ENCODERS[cfg.family](cfg)


__all__ = ["AUDIO_ENCODERS", "ENCODERS", "AudioEncoder", "TowerShape", "VisionEncoder", "audio_stride",
           "build_audio_encoder", "build_encoder", "tower_shape"]
