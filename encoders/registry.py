"""Encoder registries: a family name in `EncoderConfig.family` / `AudioConfig.family` -> its builder.

A new family is one file with a `VisionEncoder` (or `AudioEncoder`) subclass plus one line in
`ENCODERS` (or `AUDIO_ENCODERS`).
"""
from __future__ import annotations

from collections.abc import Callable

from .base import AudioEncoder, VisionEncoder, triple
from .config import AudioConfig, EncoderConfig, check_choice
from .hf_encoder import HFEncoder
from .open_clip_encoder import OpenClipEncoder
from .timm_encoder import TimmEncoder
from .whisper_encoder import WhisperAudioEncoder

ENCODERS: dict[str, Callable[[EncoderConfig], VisionEncoder]] = {
    "timm": TimmEncoder,
    "open_clip": OpenClipEncoder,
    "hf": HFEncoder,
}
AUDIO_ENCODERS: dict[str, Callable[[AudioConfig], AudioEncoder]] = {
    "whisper": WhisperAudioEncoder,
}


def build_encoder(cfg: EncoderConfig) -> VisionEncoder:
    """The encoder `cfg` describes; an unknown family is a ConfigError naming the valid ones."""
    check_choice("encoder.family", cfg.family, tuple(ENCODERS))
    encoder = ENCODERS[cfg.family](cfg)
    if cfg.mean is not None:
        encoder.mean = triple(cfg.mean, "encoder.mean")
    if cfg.std is not None:
        encoder.std = triple(cfg.std, "encoder.std")
    return encoder


def build_audio_encoder(cfg: AudioConfig) -> AudioEncoder:
    """The speech encoder `cfg` describes; an unknown family is a ConfigError naming the valid ones."""
    check_choice("audio.family", cfg.family, tuple(AUDIO_ENCODERS))
    return AUDIO_ENCODERS[cfg.family](cfg)


__all__ = ["AUDIO_ENCODERS", "ENCODERS", "AudioEncoder", "VisionEncoder", "build_audio_encoder", "build_encoder"]
