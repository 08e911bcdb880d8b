"""What an encoder is built from: the vision and audio encoder settings, and the error a bad setting raises.

They live in encoders/, the first folder in the data flow, so the encoders read them without importing the
core; `mmllm.config` takes them from here into `MMLLMConfig` (and names them, as configs and users do). Only the
standard library is imported: `import mmllm` reads this module and stays light.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the valid values."""


@dataclass
class EncoderConfig:
    """The vision encoder: which family (registry name) builds which model.

    A tiny random tower and a real one differ only in config.

    Attributes:
        family: encoder registry name (timm, open_clip, hf, ...).
        model: the family's model name, e.g. timm's vit_tiny_patch16_224.
        image_size: side in pixels of every tile the encoder sees.
        pretrained: False (random), True (the library's own weights, needs a hub) or a local weights path.
        feature_layer: which block's output; negative counts from the end (LLaVA-style penultimate).
        mean: pixel normalisation mean; None takes the library's config for this model. An hf tower loaded
            from a directory records its image processor's values here, so the saved model keeps them.
        std: pixel normalisation std; None as for `mean`.
        options: keyword arguments of the library constructor (e.g. timm's depth, embed_dim, patch_size).
            The default is a ~100K-parameter ViT with tall narrow patches (16x4) that reads text lines on
            a CPU.
    """

    family: str = "timm"
    model: str = "vit_tiny_patch16_224"
    image_size: int = 32
    pretrained: bool | str = False
    feature_layer: int = -2
    mean: list[float] | None = None
    std: list[float] | None = None
    options: dict[str, Any] = field(
        default_factory=lambda: {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": [16, 4]}
    )


@dataclass
class AudioConfig:
    """A speech encoder on log-mel features and the connector that turns its states into LLM tokens.

    Attributes:
        family: audio encoder registry name.
        model: hub name loaded when `pretrained` is True.
        pretrained: False builds a random Whisper encoder from `options`; True loads `model`; a path
            loads that local directory, never with remote code.
        n_mels: log-mel bins of the features.
        max_seconds: the window every clip is padded or truncated to (Whisper's 30 s by default; the
            position table is cut to match, so a tiny CPU model can use a few seconds).
        downsample: how `factor` encoder states become one token: stack (concatenated) or pool (averaged).
        factor: encoder states per LLM token; Whisper gives 50 states/s, so the default turns a 30 s clip
            into 300 tokens.
        options: WhisperConfig values of a random encoder.
    """

    family: str = "whisper"
    model: str = "openai/whisper-tiny"
    pretrained: bool | str = False
    n_mels: int = 80
    max_seconds: int = 30
    downsample: str = "stack"
    factor: int = 5
    options: dict[str, Any] = field(
        default_factory=lambda: {
            "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
        }
    )


def check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")
