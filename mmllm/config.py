"""One config object describes a whole model; it round-trips through config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

ARCHS = ("nvlm_d", "nvlm_x", "nvlm_h")
TILE_TAGS = ("none", "1d", "2d_grid", "2d_bbox")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the valid values."""


@dataclass
class EncoderConfig:
    """Which encoder family (registry name) builds which model.

    `options` go to the library constructor (e.g. timm's depth/embed_dim/patch_size), so a tiny
    random tower and a real one differ only in config. `pretrained` is False (random), True
    (the library's own weights, needs a hub) or a local weights path.
    """

    family: str = "timm"
    model: str = "vit_tiny_patch16_224"
    image_size: int = 32
    pretrained: bool | str = False
    feature_layer: int = -2  # which block's output; negative counts from the end (LLaVA-style penultimate)
    # Pixel normalisation; None takes the library's config for this model. An hf tower loaded from a
    # directory records its image processor's values here, so the saved model keeps them.
    mean: list[float] | None = None
    std: list[float] | None = None
    # Default: a ~100K-parameter ViT with tall narrow patches (16x4) that reads text lines on a CPU.
    options: dict[str, Any] = field(
        default_factory=lambda: {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": [16, 4]}
    )


@dataclass
class LLMConfig:
    """A causal LM: a local path / hub name (`from_pretrained`), else built from `options`."""

    name_or_path: str | None = None
    model_type: str = "llama"
    options: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
        }
    )


@dataclass
class ProcessorConfig:
    """Dynamic tiling, tile tags and prompt layout (design.md §2)."""

    max_tiles: int = 6
    use_thumbnail: bool = True
    tile_tag: str = "1d"
    tokenizer: str | None = None  # local path / hub name; None = the offline byte tokenizer
    max_image_side: int = 16384
    user_prefix: str = "User: "
    assistant_prefix: str = "\nAssistant: "


@dataclass
class AudioConfig:
    """A speech encoder on log-mel features and the connector that turns its states into LLM tokens.

    `pretrained` False builds a random Whisper encoder from `options` (WhisperConfig kwargs); True
    loads `model` (hub name) and a path loads that local directory, never with remote code.
    `max_seconds` is the window every clip is padded or truncated to (Whisper's 30 s by default;
    the position table is cut to match, so a tiny CPU model can use a few seconds). The connector
    groups `factor` encoder states (`downsample` stack: concatenated, pool: averaged) into one
    token, then an MLP maps it to the LLM width: Whisper gives 50 states/s, so the default turns a
    30 s clip into 300 tokens.
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


@dataclass
class MMLLMConfig:
    arch: str = "nvlm_d"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    audio: AudioConfig | None = None  # None: a vision-only model
    pixel_shuffle: int = 2
    connector_hidden: int | None = None  # None: the LLM's FFN width, as NVLM-D does
    # NVLM-X/H: a gated cross-attention block before every k-th decoder layer (layer 0, k, 2k, ...),
    # or before the layers listed explicitly (which wins when given).
    cross_attention_every: int = 1
    cross_attention_layers: list[int] | None = None

    def __post_init__(self) -> None:
        parts = (("encoder", EncoderConfig), ("llm", LLMConfig), ("processor", ProcessorConfig), ("audio", AudioConfig))
        for name, cls in parts:
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, name))
        self.validate()

    def validate(self) -> None:
        check_choice("arch", self.arch, ARCHS)
        check_choice("processor.tile_tag", self.processor.tile_tag, TILE_TAGS)
        if self.processor.max_tiles < 1:
            raise ConfigError(f"processor.max_tiles must be >= 1, got {self.processor.max_tiles}")
        if self.arch == "nvlm_h" and not self.processor.use_thumbnail:
            raise ConfigError("nvlm_h puts the thumbnail into the decoder sequence: processor.use_thumbnail must be true")
        if self.cross_attention_every < 1:
            raise ConfigError(f"cross_attention_every must be >= 1, got {self.cross_attention_every}")
        if self.pixel_shuffle < 1:
            raise ConfigError(f"pixel_shuffle must be >= 1, got {self.pixel_shuffle}")
        if self.audio is not None:
            for name in ("n_mels", "max_seconds", "factor"):
                if getattr(self.audio, name) < 1:
                    raise ConfigError(f"audio.{name} must be >= 1, got {getattr(self.audio, name)}")

    def cross_attention_at(self, n_layers: int) -> list[int]:
        """Decoder layer indices that get a cross-attention block (none for nvlm_d)."""
        if self.arch == "nvlm_d":
            return []
        layers = self.cross_attention_layers
        layers = list(range(0, n_layers, self.cross_attention_every)) if layers is None else sorted(set(layers))
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad or not layers:
            raise ConfigError(f"cross_attention_layers {layers} must be non-empty indices in 0..{n_layers - 1}")
        return layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MMLLMConfig":
        return _from_dict(cls, data, "config")


def check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")


def _from_dict(cls: type, data: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)
