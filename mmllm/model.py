"""MMLLM: an encoder, a connector and any causal LM wired as one of the NVLM architectures."""
from __future__ import annotations

import copy
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import safe_open
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import (CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME,
                                cached_file)

from mmllm.connectors import AUDIO_DOWNSAMPLE, PROJECTORS, AudioConnector, GatedCrossAttention, PixelShuffle
from mmllm.encoders import build_audio_encoder, build_encoder

from .backbone import build_llm, decoder_layers, parameter_count
from .config import ConfigError, MMLLMConfig, check_choice
from .hf import MMLLMHFConfig
from .jsonl import file_mode
from .layers import CrossAttentionDecoderLayer, InputPositionLayer, MediaMemory
from .processor import IGNORE_INDEX, MODEL_KEYWORDS, MMLLMProcessor, per_sample
from .sample import MediaLayout, ModelInputs
from .tokenizer import load_tokenizer

WEIGHTS_FILE = SAFE_WEIGHTS_NAME  # "model.safetensors": transformers shards only past 50 GB
MAX_CONFIG_BYTES = 16 << 20
# What `from_pretrained` passes on to the Hub when it reads files itself (the size checks).
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


class MMLLM(PreTrainedModel, GenerationMixin):
    """Encoder -> pixel shuffle -> projector, wired into any causal LM as NVLM-D, -X or -H.

    What differs between the three is `config.mmllm.knobs` (mmllm.config.ArchKnobs): which tiles are
    spliced over placeholder tokens of the sequence, and which are reached through gated
    cross-attention layers placed in the LLM's own decoder stack (`CrossAttentionDecoderLayer`).
    With `config.audio`, a speech encoder + audio connector add clips as one more kind of media
    segment: spliced like tiles when all tiles are, cross-attention keys/values otherwise.

    A transformers model: `MMLLM(MMLLMConfig(...))` builds it, `save_pretrained` / `from_pretrained` /
    `push_to_hub` are transformers' (with the processor saved beside it), and after `import mmllm`
    AutoModel, AutoModelForImageTextToText and AutoProcessor load a saved folder.
    """

    config_class = MMLLMHFConfig
    _no_split_modules = ["CrossAttentionDecoderLayer", "InputPositionLayer"]  # a wrapper stays with its layer

    def __init__(self, config: MMLLMConfig | MMLLMHFConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        if isinstance(config, MMLLMConfig):
            config = MMLLMHFConfig(mmllm=config)
        super().__init__(config)
        spec, knobs = config.mmllm, config.mmllm.knobs
        # A config read from a saved folder (`name_or_path`) builds with the tokenizer saved there; a pretrained
        # LLM given without a tokenizer comes with its own (never the byte tokenizer with a real LLM).
        self.tokenizer = tokenizer or load_tokenizer(
            config.name_or_path or spec.processor.tokenizer or spec.llm.name_or_path)
        self.encoder = build_encoder(spec.encoder)
        self.processor = MMLLMProcessor.from_config(spec, self.tokenizer, self.encoder.shape)
        self.llm = build_llm(spec.llm, self.tokenizer, config.llm_config or None)
        config.llm_config = self.llm.config.to_dict()  # the exact backbone, so a saved folder rebuilds it offline
        self.shuffle = PixelShuffle(self.encoder.grid, spec.pixel_shuffle)
        rows, cols = self.shuffle.out_grid
        llm_cfg = self.llm.config
        d_llm = llm_cfg.hidden_size
        ffn = getattr(llm_cfg, "intermediate_size", None) or 4 * d_llm
        self.projector = PROJECTORS[knobs.projector](
            self.encoder.dim * spec.pixel_shuffle**2, spec.connector_hidden or ffn, d_llm
        )
        layers = decoder_layers(self.llm)
        rope = None  # the LLM's own RoPE base, so cross-attention offsets read like its self-attention's
        if knobs.cross_attention_positions == "rope":
            rope = float((getattr(llm_cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
        for i in spec.cross_attention_at(len(layers)):
            block = GatedCrossAttention(d_llm, llm_cfg.num_attention_heads, ffn, rope_base=rope)
            layers[i] = CrossAttentionDecoderLayer(block, layers[i], i)
        if spec.input_positions:
            layers[0] = InputPositionLayer(layers[0], spec.input_positions, d_llm)
        # Per tile slot (the global view has its own) and token within the tile, as Mllama's tile-position
        # table: a key then says both which tile and where in it, whatever the tower's features keep.
        learned = spec.cross_attends and knobs.tile_identity == "learned"
        self.tile_embedding = None
        if learned:
            shape = (spec.processor.max_tiles + 1, rows * cols, d_llm)
            self.tile_embedding = nn.Parameter(torch.randn(shape) * d_llm**-0.5)
        self.audio_encoder = self.audio_connector = None
        if spec.audio is not None:
            self.audio_encoder = build_audio_encoder(spec.audio)
            check_choice("audio.downsample", spec.audio.downsample, tuple(AUDIO_DOWNSAMPLE))
            downsample = AUDIO_DOWNSAMPLE[spec.audio.downsample](spec.audio.factor)
            self.audio_connector = AudioConnector(
                downsample, self.audio_encoder.dim, spec.connector_hidden or ffn, d_llm
            )
        self.image_token_id = self.processor.image_token_id
        self.generation_config = default_generation_config(self.tokenizer)
        persist_buffers(self)
        if config.dtype is not None:  # transformers loading (or `from_config`) in a dtype; build_llm makes float32
            self.to(config.dtype)
        self.post_init()

    def init_weights(self) -> None:
        """Only ties weights: every part initialised itself when built (timm's, open_clip's and torch's own
        schemes, the LLM its own), which transformers' generic initialisation would overwrite."""
        self.tie_weights(recompute_mapping=False)

    def cross_layers(self) -> dict[int, CrossAttentionDecoderLayer]:
        """Decoder layer index -> the cross-attention layer in that slot (empty when nothing cross-attends).

        Found inside whatever wraps the slot (an input-position layer, FSDP, activation checkpointing), so a
        sharded or recomputing model still conditions every one of them."""
        found = {}
        for i, layer in enumerate(decoder_layers(self.llm)):
            cross = next((m for m in layer.modules() if isinstance(m, CrossAttentionDecoderLayer)), None)
            if cross is not None:
                found[i] = cross
        return found

    def cross_blocks(self) -> dict[int, GatedCrossAttention]:
        return {i: layer.cross for i, layer in self.cross_layers().items()}

    # -- inputs -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, S, S] -> [tiles, tokens_per_tile, d_llm]."""
        feats = self.encoder(pixel_values)
        return self.projector(self.shuffle(feats))

    def audio_tokens(self, frames: int) -> int:
        """LLM tokens of a clip with `frames` real mel frames: only these are kept, the padding adds none."""
        return self.audio_connector.out_length(self.audio_encoder.out_length(frames))

    def blank_clip(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One silent window [1, n_mels, frames] and its length: what the speech encoder sees on a batch without
        audio."""
        front = self.processor.audio_front_end
        return torch.zeros(1, front.n_mels, front.n_frames, device=device), torch.tensor([front.n_frames])

    def audio_features(self, audio_values: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """Log-mel windows [clips, n_mels, n_frames] + real lengths -> per clip [audio_tokens(frames), d_llm]."""
        if self.audio_encoder is None:
            raise ValueError("audio_values given but this model has no audio encoder (config.audio is None)")
        tokens = self.audio_connector(self.audio_encoder(audio_values))
        return [t[: self.audio_tokens(f)] for t, f in zip(tokens, frames.tolist())]

    def blank_tile(self, device: torch.device) -> torch.Tensor:
        """One all-zero tile [1, 3, S, S]: what the tower sees on a batch without images."""
        size = self.processor.tile_size
        return torch.zeros(1, 3, size, size, device=device)

    def splice(self, embeds: torch.Tensor, input_ids: torch.Tensor, tokens: torch.Tensor,
               layout: MediaLayout) -> torch.Tensor:
        """Token embeddings with the placeholders replaced, in order, by the segment tokens [n, d] the collator
        assigned them (`layout.splice_rows`); checked against what the tiles and clips gave, without reading the
        device."""
        given = len(tokens)
        if given != layout.segment_tokens:
            n_slots = len(layout.splice_rows)
            if not given:
                raise ValueError(f"{n_slots} placeholder tokens but no pixel_values or audio_values")
            raise ValueError(
                f"{n_slots} placeholder tokens but the tiles and clips give {given - layout.segment_tokens + n_slots} "
                f"embeddings (tiles of {self.processor.tokens_per_tile} tokens each); build inputs with model.processor"
            )
        if not len(layout.splice_rows):
            return embeds
        placeholders = (input_ids == self.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(placeholders, tokens[layout.splice_rows].to(embeds.dtype))

    def memory(self, segments: Sequence[torch.Tensor], layout: MediaLayout, unseen: Sequence[torch.Tensor] = (),
               tag_vectors: torch.Tensor | None = None) -> MediaMemory:
        """Per-sample key/value inputs and the mask: a token sees the tokens of its most recent media item
        (a tag token kept in the sequence only its own tile); a token before any media sees nothing.

        Each tile carries its identity (`config.mmllm.knobs.tile_identity`): a learned slot embedding, its tag's
        mean embedding added to every token, or its tag embeddings as separate entries before it. The keys are
        gathered as the collator laid them out (`KeyLayout`). `segments[i]` is segment i's tokens [n_i, d] (a
        [tiles, tokens, d] tensor works as well). `unseen` tokens [n, d] are keys of every sample that no token
        sees: a batch's stand-ins for media it lacks. `tag_vectors` are the embeddings of `layout.keys.tag_ids`
        (looked up here when not given)."""
        keys = layout.keys
        ref = segments[0] if len(segments) else unseen[0]
        d, identity = ref.shape[-1], self.config.mmllm.knobs.tile_identity
        flat = segment_tokens(segments, d) if len(segments) else ref.new_zeros(1, d)
        values = flat[keys.row.clamp(min=0)] * (keys.row >= 0).unsqueeze(-1)
        if identity == "learned" and self.tile_embedding is not None:
            tiled = keys.slot >= 0  # a clip's keys have no slot
            learned = self.tile_embedding[keys.slot.where(tiled, 0), keys.index.where(tiled, 0)]
            values = values + learned.to(ref.dtype) * tiled.unsqueeze(-1)
        elif keys.tag_ids:
            if tag_vectors is None:
                ids = torch.tensor(keys.tag_ids, dtype=torch.long, device=ref.device)
                tag_vectors = self.llm.get_input_embeddings()(ids)
            tag_vectors = tag_vectors.to(ref.dtype)
            if identity == "tag":
                means = torch.stack([tag_vectors[g].mean(0) for g in keys.groups])
                values = values + means[keys.group.clamp(min=0)] * (keys.group >= 0).unsqueeze(-1)
            else:  # "tag_entries": the tag's own embeddings are keys
                values = values + tag_vectors[keys.tag.clamp(min=0)] * (keys.tag >= 0).unsqueeze(-1)
        key_media, key_tile, key_pos = keys.media, keys.tile, keys.position
        if unseen:  # after every sample's own keys, as media item -2, which no token follows
            batch = values.shape[0]
            extra = torch.cat([u.reshape(-1, d) for u in unseen]).to(ref.dtype)
            values = torch.cat([values, extra.expand(batch, -1, -1)], 1)
            unseen_ids = key_media.new_full((batch, len(extra)), -2)
            key_media, key_tile = torch.cat([key_media, unseen_ids], 1), torch.cat([key_tile, unseen_ids], 1)
            key_pos = torch.cat([key_pos, torch.zeros_like(unseen_ids)], 1)
        tok_media, tok_tile = layout.token_media, layout.token_tile
        prompt = (
            (tok_media.unsqueeze(-1) >= 0)
            & (key_media.unsqueeze(1) == tok_media.unsqueeze(-1))
            & ((tok_tile.unsqueeze(-1) < 0) | (key_tile.unsqueeze(1) == tok_tile.unsqueeze(-1)))
        )
        last = tok_media.max(dim=1).values.unsqueeze(-1)  # [B, 1]
        tail = (last >= 0) & (key_media == last)
        return MediaMemory(values, key_pos, prompt, tail)

    @contextmanager
    def conditioned(self, inputs: ModelInputs, copies: int = 1) -> Iterator[torch.Tensor]:
        """Input embeddings for the LLM, with the cross-attention layers conditioned on this batch's media
        for the duration of the call (and cleared after it, also on error); `copies` rows of memory per sample
        when generation runs several beams or returned sequences per prompt.

        Segments are every tile, then every clip, as `MediaLayout` numbers them."""
        device = inputs.input_ids.device
        layout = inputs.layout.to(device)
        has_images, has_audio = len(inputs.pixel_values) > 0, len(inputs.audio_values) > 0
        # Every media module runs on every batch, on a blank stand-in when the batch has none of its kind, whose
        # output goes where real media would (into the sequence, or to cross-attention as keys no token sees),
        # weighted by zero: all ranks then run the same FSDP units forward and backward whatever their batch holds
        # (a rank whose batch is all text would otherwise leave the others waiting), and DDP sees every parameter used.
        knobs = self.config.mmllm.knobs
        tiles = self.image_features(inputs.pixel_values if has_images else self.blank_tile(device))
        segments = list(tiles) if has_images else []
        spliced, unseen = [], []  # stand-ins
        if not has_images:
            blank = tiles if self.tile_embedding is None else tiles + self.tile_embedding[-1]
            spliced += [blank] if knobs.tiles_in_sequence != "none" else []
            unseen += [blank] if self.config.mmllm.cross_attends else []
        if self.audio_encoder is not None:
            if has_audio:
                segments += self.audio_features(inputs.audio_values, layout.audio_frames)
            else:
                clip = self.audio_features(*self.blank_clip(device))
                (unseen if self.config.mmllm.cross_attends else spliced).extend(clip)
        # One call of the embedding table per forward, the memory's tile tags included, whatever the batch holds.
        ids, n = layout.keys.tag_ids, inputs.input_ids.numel()
        flat = torch.cat([inputs.input_ids.flatten(), torch.tensor(ids, dtype=torch.long, device=device)])
        vectors = self.llm.get_input_embeddings()(flat)
        d = vectors.shape[-1]
        tokens = segment_tokens(segments, d) if segments else vectors.new_zeros(0, d)  # every segment's, end to end
        embeds = self.splice(vectors[:n].view(*inputs.input_ids.shape, -1), inputs.input_ids, tokens, layout)
        if spliced:
            embeds = embeds + sum(t.sum() for t in spliced) * 0.0
        layers = self.cross_layers().values()
        memory = None
        if layers:
            memory = self.memory(tokens if segments else [], layout, unseen, vectors[n:]).repeat(copies)
        for layer in layers:
            layer.condition(memory)
        try:
            yield embeds
        finally:
            for layer in layers:
                layer.condition(None)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, inputs: ModelInputs | None = None, **kwargs: Any):
        """The LLM's output on one batch; the loss covers the answer tokens (`inputs.labels`), and is None when
        no token is one (a prompt alone: nothing to score).

        `inputs` is a `ModelInputs`, or its fields as keywords (`model(**processor(text=..., images=...))`)."""
        inputs, kwargs = self.model_inputs(inputs, kwargs)
        labels = inputs.labels
        if labels is not None:
            labels = labels.masked_fill(inputs.input_ids == self.image_token_id, IGNORE_INDEX)
        kwargs.setdefault("use_cache", False)  # a loss pass keeps no KV cache (a recomputed layer would extend it)
        packed = inputs.position_ids is not None  # the LLM masks packed samples apart from their positions alone
        with self.conditioned(inputs) as embeds:
            return self.llm(
                inputs_embeds=embeds, attention_mask=None if packed else inputs.attention_mask,
                position_ids=inputs.position_ids if packed else positions(inputs.attention_mask),
                labels=labels, **kwargs,
            )

    def model_inputs(self, inputs: ModelInputs | torch.Tensor | None,
                     kwargs: dict[str, Any]) -> tuple[ModelInputs, dict[str, Any]]:
        """A `ModelInputs` from the keywords transformers' callers pass (the processor's `__call__` output, or
        bare `input_ids` of text), and the keywords left for the LLM."""
        if isinstance(inputs, ModelInputs):
            return inputs, kwargs
        given = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
        if isinstance(inputs, torch.Tensor):
            given["input_ids"] = inputs
        if given.get("input_ids") is None:
            raise TypeError("MMLLM takes a ModelInputs or the processor's keywords (input_ids, attention_mask, "
                            "pixel_values, media_layout, ...): `model(**processor(text=..., images=...))`")
        ids = given["input_ids"]
        layout = given.get("media_layout")
        media = [given.get(k) for k in ("pixel_values", "audio_values")]
        if layout is None:
            if any(m is not None and len(m) for m in media):
                raise TypeError("pixel_values/audio_values without media_layout: build the inputs with the processor "
                                "(processor(text=..., images=...)), which says where the media go")
            layout = self.processor.text_layout(ids.shape)
        mask = given.get("attention_mask")
        pixels, clips = media
        front = self.processor.audio_front_end
        return ModelInputs(
            ids, torch.ones_like(ids) if mask is None else mask,
            given.get("labels"),
            ids.new_zeros(0, 3, self.processor.tile_size, self.processor.tile_size, dtype=torch.float32)
            if pixels is None else pixels,
            ids.new_zeros(0, *((front.n_mels, front.n_frames) if front else (0, 0)), dtype=torch.float32)
            if clips is None else clips,
            layout, given.get("position_ids"),
        ), kwargs

    @torch.no_grad()
    def generate(self, inputs: ModelInputs | torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, **kwargs: Any) -> torch.Tensor:
        """New tokens only, [batch, <= max_new_tokens], eos-padded; HF `generate` on the LLM drives the KV cache.

        `generation_config` (else the model's own, saved as generation_config.json) decides the length and
        the decoding; its unset fields take the model's values and keyword arguments (`max_new_tokens=8`)
        override both, as in HF `generate`. The placeholder token is never generated: it stands for media
        embeddings, so an answer that contained it could not be fed back as text. `inputs` as `forward` takes them."""
        inputs, kwargs = self.model_inputs(inputs, kwargs)
        kwargs.pop("labels", None)
        config = copy.deepcopy(generation_config or self.generation_config)
        config.update(**self.generation_config.to_dict(), defaults_only=True)
        kwargs = config.update(**kwargs)
        config.suppress_tokens = sorted({*(config.suppress_tokens or []), self.image_token_id})
        copies = max(config.num_beams or 1, config.num_return_sequences or 1)  # the rows HF expands each prompt to
        with self.conditioned(inputs, copies=copies) as embeds:
            return self.llm.generate(
                inputs_embeds=embeds, attention_mask=inputs.attention_mask, generation_config=config, **kwargs
            )

    def answer(self, questions: str | list[str], images: Sequence = (), audio: Sequence | None = None,
               **kwargs: Any) -> list[str]:
        """Questions with their images (and 16 kHz mono waveforms) -> decoded answers, in one left-padded batch;
        `images` is a list per question, one image per question, or a question's flat list (`per_sample`);
        `kwargs` go to `generate`."""
        questions = [questions] if isinstance(questions, str) else list(questions)
        per_image, per_clip = (per_sample(m, len(questions), noun) for m, noun in ((images or None, "images"),
                                                                               (audio, "audio")))
        inputs = self.processor.collate([self.processor.encode_prompt(q, ims, clips)
                                         for q, ims, clips in zip(questions, per_image, per_clip)])
        out = self.generate(inputs.to(next(self.parameters()).device), **kwargs)
        return [self.processor.decode(row) for row in out.tolist()]

    # -- the LLM's embeddings, as transformers' token tools reach them -------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.llm.set_output_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """The LLM's resize (after adding tokens to `model.tokenizer`), recorded in the saved config's
        `llm_config` so the folder rebuilds at the new size."""
        embeddings = self.llm.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.llm_config = self.llm.config.to_dict()
        return embeddings

    # -- save / load --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """transformers' save (model.safetensors, config.json, generation_config.json), then the processor
        (tokenizer files, processor_config.json, chat template), every file as readable as any other the user
        creates. `push_to_hub` saves through this too."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        for weights in Path(save_directory).glob("*.safetensors"):  # transformers writes them owner-only
            os.chmod(weights, file_mode())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> "MMLLM":
        """transformers' loader (`dtype`, `device_map`, a Hub name), with what a downloaded folder must not do:
        weights come from safetensors only and no code of the folder runs; a config that describes a bigger
        LLM than the weights hold is refused before anything is built, and weights that do not fill the
        model exactly are refused after. The towers are rebuilt from the config, never downloaded."""
        path = str(pretrained_model_name_or_path)
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = copy.deepcopy(kwargs.pop("config", None)) or read_config(path, hub)
        described, (held, files) = parameter_count(config.llm_config), stored_elements(path, hub)
        if described > held:  # the weights cannot fill it: refuse before allocating
            raise ValueError(f"{path}/{CONFIG_NAME} describes an LLM of {described:,} parameters but "
                             f"{' + '.join(files)} holds {held:,} numbers in all; the folder is inconsistent")
        config.mmllm.encoder.pretrained = False
        if config.mmllm.audio is not None:
            config.mmllm.audio.pretrained = False  # its architecture is in config.audio.options
        with_info = kwargs.pop("output_loading_info", False)
        kwargs.update(config=config, use_safetensors=True, output_loading_info=True)
        model, info = super().from_pretrained(path, *args, **kwargs)
        unfilled = {k: sorted(map(str, v)) for k, v in info.items() if v}
        if unfilled:
            raise ValueError(f"{path}: the weights do not fill the model exactly: {unfilled}")
        check_finite_weights(model, path)
        if cached_file(path, GENERATION_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub) is None:
            model.generation_config = default_generation_config(model.tokenizer)  # saved before the file existed
        return (model, info) if with_info else model


def check_finite_weights(model: nn.Module, source: str | os.PathLike) -> None:
    """A ValueError naming the first weight holding NaN or inf: such a model generates garbage (or nothing) and
    would be scored as if it were a model. Weights offloaded to the meta device are not there to check."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{source}: weight {name} holds {bad:,} NaN/inf value(s) of {tensor.numel():,}; "
                             "the weights are damaged (a diverged run or a corrupt file)")


def segment_tokens(segments: Sequence[torch.Tensor] | torch.Tensor, dim: int) -> torch.Tensor:
    """Every segment's tokens end to end [n, dim], from a list of [n_i, dim] or one tensor of any leading shape."""
    if isinstance(segments, torch.Tensor):
        return segments.reshape(-1, dim)
    return torch.cat([seg.reshape(-1, dim) for seg in segments])


def default_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy, up to 32 new tokens, stopping at the tokenizer's end token."""
    return GenerationConfig(max_new_tokens=32, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def persist_buffers(module: nn.Module) -> None:
    """Saves every buffer outside transformers' own models with the weights.

    transformers builds a model it loads on the meta device and recomputes the buffers that are not saved
    only for its own modules; a timm or open_clip tower's constructor computes its own (timm's relative
    position index, ...)."""
    for child in module.children():
        if isinstance(child, PreTrainedModel):
            continue
        for name, buffer in list(child.named_buffers(recurse=False)):
            child.register_buffer(name, buffer)
        persist_buffers(child)


def read_config(path: str, hub: dict[str, Any]) -> MMLLMHFConfig:
    """config.json, refused unread when it is far bigger than any model's."""
    file = cached_file(path, CONFIG_NAME, **hub)
    if os.path.getsize(file) > MAX_CONFIG_BYTES:
        raise ValueError(f"{file} is over {MAX_CONFIG_BYTES >> 20} MiB; not a saved mmllm config")
    try:
        return MMLLMHFConfig.from_pretrained(path, **hub)
    except ConfigError as exc:  # a field of the wrong type or value: say which file holds it
        raise ConfigError(f"{file}: {exc}") from None


def stored_elements(path: str, hub: dict[str, Any]) -> tuple[int, list[str]]:
    """How many numbers the safetensors weights (one file or the shards of an index) hold, from their headers
    alone, and the file names."""
    index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **hub)
    files = sorted(set(json.loads(Path(index).read_text())["weight_map"].values())) if index else [WEIGHTS_FILE]
    held = 0
    for name in files:
        with safe_open(cached_file(path, name, **hub), "pt") as f:
            held += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return held, files


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token, so left padding changes nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
