"""One config object describes a whole model; it round-trips through config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mmllm.encoders.config import AudioConfig, ConfigError, EncoderConfig, check_choice

# The choices, each written once: the Literal types the CLI validates, and their tuples the code checks with.
Arch = Literal["nvlm_d", "nvlm_x", "nvlm_h"]
ARCHS = get_args(Arch)
TILE_TAGS = ("none", "1d", "2d_grid", "2d_bbox")
TilesInSequence = Literal["all", "thumbnail", "none"]
TILES_IN_SEQUENCE = get_args(TilesInSequence)
# The knobs' meanings are documented once, on `ArchKnobs`.
TileIdentity = Literal["learned", "tag", "tag_entries", "none"]
TILE_IDENTITIES = get_args(TileIdentity)
CrossAttentionPositions = Literal["none", "rope"]
CROSS_ATTENTION_POSITIONS = get_args(CrossAttentionPositions)
# Tokens per training sample and eval prompt: room for a full NVLM tiling (6 tiles + thumbnail at 256 tokens
# each is 1,792) plus a long answer, while one runaway answer cannot blow up a step's attention memory.
DEFAULT_MAX_LENGTH = 4096


@dataclass
class LLMConfig:
    """The causal LM: a local path or hub name (`from_pretrained`), else built from `options`.

    Attributes:
        name_or_path: local folder or hub name of a pretrained LM; None builds a random one from `options`.
        model_type: transformers model type of an LM built from `options` (llama, qwen2, ...).
        options: that LM's config values (hidden_size, num_hidden_layers, ...).
        attn_implementation: the attention kernel: "sdpa" (PyTorch's fused attention), "eager", or
            "flash_attention_2" where the flash-attn package is installed.
        lora_rank: > 0 adds LoRA adapters (needs the `lora` extra, peft); the LLM's own weights then stay
            frozen and only the adapters train when the LLM does (SFT).
        lora_alpha: LoRA scaling.
        lora_dropout: LoRA dropout.
        lora_targets: the layers that get adapters; "all-linear" is every linear layer but the output head.
    """

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
    attn_implementation: str = "sdpa"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "all-linear"


@dataclass
class ProcessorConfig:
    """Dynamic tiling, tile tags and prompt layout (docs/paper.md).

    Attributes:
        max_tiles: most tiles an image is cut into (its aspect ratio picks the grid).
        use_thumbnail: add a downscaled whole image after the tiles (NVLM's global view).
        tile_tag: text tag before each tile: none, 1d (<tile_1>...), 2d_grid or 2d_bbox.
        tokenizer: local path or hub name; None is the offline byte tokenizer.
        max_image_side: larger images are refused (a decompression bomb guard).
        user_prefix: text before each user turn.
        assistant_prefix: text before each assistant turn.
    """

    max_tiles: int = 6
    use_thumbnail: bool = True
    tile_tag: str = "1d"
    tokenizer: str | None = None
    max_image_side: int = 16384
    user_prefix: str = "User: "
    assistant_prefix: str = "\nAssistant: "


@dataclass
class ArchKnobs:
    """What tells NVLM-D, -X and -H apart, each knob defined here once: `MMLLMConfig` extends this class, so a
    knob is a field of the model config (`--model.tile_identity`, config.json) and None takes the arch's preset
    (`ARCH_PRESETS` names three points in this space; `MMLLMConfig.knobs` resolves them).

    Attributes:
        tiles_in_sequence: which tiles become decoder tokens: all (D), thumbnail (H: the global view in the
            sequence) or none (X). Tiles not in the sequence (and audio clips, unless all) are reached through
            gated cross-attention, so all means no cross-attention blocks at all.
        tags_own_tile: tile-tag text stays in the decoder sequence and each tag token cross-attends only its own
            tile (X); otherwise the tags of cross-attended tiles feed the keys/values (H).
        projector: the connector's projector, a `connectors.PROJECTORS` name (NVLM: a 2-layer MLP for D and H,
            one linear layer for X).
        cross_attention_every: one cross-attention block every k decoder layers, the first before layer
            min(k, n) - 1 (OpenFlamingo's k-1, 2k-1, ...; Mllama's first is before layer 3). A block before layer 0
            reads bare token embeddings that carry no position, so every occurrence of a token would ask the
            image the same question; the first block goes there only when k = 1.
        tile_identity: how a cross-attended token knows its tile (every tile is encoded alone with the same ViT
            position table): learned (an embedding per tile slot and token, Mllama's tile-position table), tag
            (the tile's tag-text embedding added to its tokens), tag_entries (tag embeddings as extra keys/values
            before the tile: the paper read literally; binds nothing, kept for the ablation) or none.
        cross_attention_positions: positions inside the cross-attention: none (a set of keys, as Flamingo and
            Mllama) or rope (queries at their sequence position, keys at their media item's position plus their
            index, rotated as the LLM's RoPE does).
    """

    tiles_in_sequence: TilesInSequence | None = None
    tags_own_tile: bool | None = None
    projector: str | None = None
    cross_attention_every: int | None = None
    tile_identity: TileIdentity | None = None
    cross_attention_positions: CrossAttentionPositions | None = None


ARCH_PRESETS: dict[str, ArchKnobs] = {
    "nvlm_d": ArchKnobs(tiles_in_sequence="all", tags_own_tile=False, projector="mlp", cross_attention_every=4,
                        tile_identity="learned", cross_attention_positions="none"),
    "nvlm_x": ArchKnobs(tiles_in_sequence="none", tags_own_tile=True, projector="linear", cross_attention_every=4,
                        tile_identity="learned", cross_attention_positions="none"),
    "nvlm_h": ArchKnobs(tiles_in_sequence="thumbnail", tags_own_tile=False, projector="mlp", cross_attention_every=4,
                        tile_identity="learned", cross_attention_positions="none"),
}


@dataclass
class MMLLMConfig(ArchKnobs):
    """The whole model: the parts, how they are joined, and the arch's knobs (the `ArchKnobs` fields; any set
    here, not None, overrides the preset of `arch`).

    Attributes:
        arch: nvlm_d (every tile in the decoder sequence), nvlm_x (tiles through gated cross-attention) or nvlm_h
            (the thumbnail in the sequence, the tiles through cross-attention): a row of `ARCH_PRESETS`.
        encoder: the vision encoder.
        llm: the causal LM.
        processor: tiling, tile tags and prompt layout.
        audio: a speech encoder and its connector; null: a vision-only model.
        pixel_shuffle: factor by which pixel shuffle merges neighbouring patch tokens per side (1: none).
        connector_hidden: hidden width of the MLP projector; null: the LLM's FFN width, as NVLM-D does.
        cross_attention_layers: the decoder layers that get a cross-attention block; wins over
            cross_attention_every.
        input_positions: size of a learned absolute position table added to the LLM's input (0: none, the LLM's
            own scheme only). A RoPE-only LLM gives a query no absolute position, so a from-scratch X cannot ask
            for "the i-th glyph" at "the i-th answer character" through cross-attention; D finds its glyph at a
            fixed relative offset.
    """

    arch: Arch = "nvlm_d"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    audio: AudioConfig | None = None
    pixel_shuffle: int = 2
    connector_hidden: int | None = None
    cross_attention_layers: list[int] | None = None
    input_positions: int = 0

    def __post_init__(self) -> None:
        parts = (("encoder", EncoderConfig), ("llm", LLMConfig), ("processor", ProcessorConfig), ("audio", AudioConfig))
        for name, cls in parts:
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, name))
            elif not isinstance(value, (cls, type(None)) if name == "audio" else cls):
                raise ConfigError(f"{name} must be a mapping of {cls.__name__} fields, got {type(value).__name__}")
        self.validate()

    @property
    def knobs(self) -> ArchKnobs:
        """The arch's preset with every override applied."""
        chosen = {f.name: getattr(self, f.name) for f in fields(ArchKnobs)}
        return replace(ARCH_PRESETS[self.arch], **{name: value for name, value in chosen.items() if value is not None})

    @property
    def cross_attends(self) -> bool:
        """Whether tiles (or clips) are reached through cross-attention blocks at all."""
        return self.knobs.tiles_in_sequence != "all"

    def validate(self) -> None:
        from mmllm.connectors import PROJECTORS  # connectors come before the core in the data flow

        check_choice("arch", self.arch, ARCHS)
        knobs = self.knobs
        check_choice("tiles_in_sequence", knobs.tiles_in_sequence, TILES_IN_SEQUENCE)
        check_choice("projector", knobs.projector, tuple(PROJECTORS))
        check_choice("tile_identity", knobs.tile_identity, TILE_IDENTITIES)
        check_choice("cross_attention_positions", knobs.cross_attention_positions, CROSS_ATTENTION_POSITIONS)
        check_choice("processor.tile_tag", self.processor.tile_tag, TILE_TAGS)
        if self.processor.max_tiles < 1:
            raise ConfigError(f"processor.max_tiles must be >= 1, got {self.processor.max_tiles}")
        if knobs.tiles_in_sequence == "thumbnail" and not self.processor.use_thumbnail:
            raise ConfigError("tiles_in_sequence 'thumbnail' (nvlm_h) puts the thumbnail into the decoder sequence: "
                              "processor.use_thumbnail must be true")
        if self.cross_attends and knobs.tile_identity.startswith("tag") and self.processor.tile_tag == "none":
            raise ConfigError(f"tile_identity {knobs.tile_identity!r} binds tile tags, but processor.tile_tag is "
                              "'none'; use tile_identity 'learned' or 'none', or turn tags on")
        if knobs.cross_attention_every < 1:
            raise ConfigError(f"cross_attention_every must be >= 1, got {knobs.cross_attention_every}")
        if self.input_positions < 0:
            raise ConfigError(f"input_positions must be >= 0, got {self.input_positions}")
        if self.pixel_shuffle < 1:
            raise ConfigError(f"pixel_shuffle must be >= 1, got {self.pixel_shuffle}")
        if self.audio is not None:
            for name in ("n_mels", "max_seconds", "factor"):
                if getattr(self.audio, name) < 1:
                    raise ConfigError(f"audio.{name} must be >= 1, got {getattr(self.audio, name)}")

    def cross_attention_at(self, n_layers: int) -> list[int]:
        """Decoder layer indices that get a cross-attention block (none when every tile is in the sequence)."""
        if not self.cross_attends:
            return []
        every, layers = self.knobs.cross_attention_every, self.cross_attention_layers
        layers = list(range(min(every, n_layers) - 1, n_layers, every)) if layers is None else sorted(set(layers))
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad or not layers:
            raise ConfigError(f"cross_attention_layers {layers} must be non-empty indices in 0..{n_layers - 1}")
        return layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "MMLLMConfig":
        """Built from plain data (config.json's): every field's value must have the field's type; `where`
        names the data in errors."""
        return _from_dict(cls, data, where)


def _from_dict(cls: type, data: Any, where: str):
    """`cls` from a mapping of its fields; nested config mappings are built the same way, so an error names
    the field by its dotted path (`mmllm.processor.max_tiles`) and says what type it must have."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    hints, values = get_type_hints(cls), {}
    for name, value in data.items():
        nested = [t for t in _members(hints[name]) if is_dataclass(t)]
        if nested and isinstance(value, dict):
            value = _from_dict(nested[0], value, f"{where}.{name}")
        elif not _fits(value, hints[name]):
            raise ConfigError(f"{where}.{name} must be {_describe(hints[name])}, got {type(value).__name__} "
                              f"{value!r:.60}")
        values[name] = value
    return cls(**values)


def _members(hint: Any) -> tuple:
    """The alternatives of a union type (`int | None`), or the type itself."""
    return get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON has a field's type (a bool is no number; an int is a float)."""
    if hint is Any:
        return True
    if get_origin(hint) is Literal:
        return value in get_args(hint)
    if get_origin(hint) in (Union, UnionType):
        return any(_fits(value, member) for member in get_args(hint))
    if hint is type(None):
        return value is None
    if get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, get_args(hint)[0]) for v in value)
    if get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(map(_describe, get_args(hint)))
    if hint is type(None):
        return "null"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return f"a mapping of {hint.__name__} fields" if is_dataclass(hint) else hint.__name__
