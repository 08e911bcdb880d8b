"""MMLLM: an encoder, a connector and any causal LM wired as one of the NVLM architectures."""
from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from mmllm.connectors import AUDIO_DOWNSAMPLE, PROJECTORS, AudioConnector, GatedCrossAttention, PixelShuffle
from mmllm.encoders import build_audio_encoder, build_encoder

from .audio import AudioFrontEnd
from .backbone import build_llm, decoder_layers
from .config import MMLLMConfig, check_choice
from .processor import IGNORE_INDEX, MediaLayout, Processor
from .tokenizer import load_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


_CROSS: ContextVar["CrossContext | None"] = ContextVar("mmllm_cross_attention", default=None)


@dataclass
class CrossContext:
    """What the cross-attention blocks see during one forward or one `generate()` call.

    Keys/values are computed once per block and reused at every decoding step. `prompt` holds the
    mask rows of the prompt; tokens beyond it (decoding) see the sample's last media item (`tail`).
    """

    owner: nn.Module
    media: torch.Tensor  # [B, N, d] projected tiles and clips (and, for H, tag embeddings) per sample, padded
    prompt: torch.Tensor  # [B, T0, N] bool
    tail: torch.Tensor  # [B, N] bool
    cache: dict = field(default_factory=dict)

    def kv(self, layer: int, block: GatedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.cache:
            self.cache[layer] = block.kv(self.media)
        return self.cache[layer]

    def mask(self, length: int) -> torch.Tensor:
        t0 = self.prompt.shape[1]
        if length == t0:
            return self.prompt
        tail = self.tail.unsqueeze(1).expand(-1, length if length < t0 else length - t0, -1)
        return tail if length < t0 else torch.cat([self.prompt, tail], 1)


class MMLLM(nn.Module):
    """Encoder -> pixel shuffle -> projector, wired into any causal LM as NVLM-D, -X or -H.

    D splices tile embeddings over placeholder tokens; X reaches all tiles through gated
    cross-attention blocks run before chosen decoder layers; H splices the thumbnail and reaches
    the tiles (with their tag embeddings) through cross-attention. The blocks are fed through a
    scoped context around each LLM call, so HF `generate()` and its KV cache work unchanged.
    With `config.audio`, a speech encoder + audio connector add clips as one more kind of media
    segment: spliced like tiles in D, cross-attention keys/values in X and H (Processor.audio_layout).
    """

    def __init__(self, config: MMLLMConfig, tokenizer=None, llm_config: dict | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.processor.tokenizer)
        self.encoder = build_encoder(config.encoder)
        height, width = self.encoder.image_size
        if height != width:
            raise ValueError(f"tiles are square; encoder {config.encoder.model} takes {height}x{width}")
        self.llm = build_llm(config.llm, self.tokenizer, llm_config)
        self.shuffle = PixelShuffle(self.encoder.grid, config.pixel_shuffle)
        llm_cfg = self.llm.config
        d_llm = llm_cfg.hidden_size
        ffn = getattr(llm_cfg, "intermediate_size", 4 * d_llm)
        projector = "linear" if config.arch == "nvlm_x" else "mlp"
        self.projector = PROJECTORS[projector](self.encoder.dim * config.pixel_shuffle**2, config.connector_hidden or ffn, d_llm)
        layers = decoder_layers(self.llm)
        self.cross = nn.ModuleDict({
            str(i): GatedCrossAttention(d_llm, llm_cfg.num_attention_heads, ffn)
            for i in config.cross_attention_at(len(layers))
        })
        for i, block in self.cross.items():
            layers[int(i)].register_forward_pre_hook(self._cross_hook(int(i), block), with_kwargs=True)
        self.audio_encoder = self.audio_connector = front_end = None
        if config.audio is not None:
            self.audio_encoder = build_audio_encoder(config.audio)
            check_choice("audio.downsample", config.audio.downsample, tuple(AUDIO_DOWNSAMPLE))
            downsample = AUDIO_DOWNSAMPLE[config.audio.downsample](config.audio.factor)
            self.audio_connector = AudioConnector(
                downsample, self.audio_encoder.dim, config.connector_hidden or ffn, d_llm
            )
            front_end = AudioFrontEnd(config.audio.n_mels, config.audio.max_seconds, self.audio_tokens)
        rows, cols = self.shuffle.out_grid
        self.processor = Processor(
            config.processor, self.tokenizer, config.arch, height, rows * cols, self.encoder.mean, self.encoder.std,
            front_end,
        )
        self.image_token_id = self.processor.image_token_id

    def _cross_hook(self, layer: int, block: GatedCrossAttention):
        def hook(module, args, kwargs):
            ctx = _CROSS.get()
            if ctx is None or ctx.owner is not self:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = block(hidden, ctx.kv(layer, block), ctx.mask(hidden.shape[1]))
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    # -- inputs -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, S, S] -> [tiles, tokens_per_tile, d_llm]."""
        feats = self.encoder(pixel_values.to(self.projector[-1].weight.dtype))
        return self.projector(self.shuffle(feats))

    def audio_tokens(self, frames: int) -> int:
        """LLM tokens of a clip with `frames` real mel frames: only these are kept, the padding adds none."""
        return self.audio_connector.out_length(self.audio_encoder.out_length(frames))

    def audio_features(self, audio_values: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """Log-mel windows [clips, n_mels, n_frames] + real lengths -> per clip [audio_tokens(frames), d_llm]."""
        if self.audio_encoder is None:
            raise ValueError("audio_values given but this model has no audio encoder (config.audio is None)")
        tokens = self.audio_connector(self.audio_encoder(audio_values.to(self.projector[-1].weight.dtype)))
        return [t[: self.audio_tokens(f)] for t, f in zip(tokens, frames.tolist())]

    def idle_modules(self, images: bool, audio: bool) -> list[nn.Module]:
        """The media modules that a batch with (or without) images and audio does not run through."""
        idle = [] if images else [self.encoder, self.projector]
        if not audio and self.audio_encoder is not None:
            idle += [self.audio_encoder, self.audio_connector]
        return idle + ([] if images or audio else [self.cross])

    def embed(
        self, input_ids: torch.Tensor, segments: Sequence[torch.Tensor], slots: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with the placeholders replaced, in order, by the tokens of the `slots` segments
        (all segments in order when no layout says which)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.image_token_id
        n_slots = int(placeholders.sum())
        if n_slots and not len(segments):
            raise ValueError(f"{n_slots} placeholder tokens but no pixel_values or audio_values")
        chosen = [segments[i] for i in (range(len(segments)) if slots is None else slots.tolist())]
        n_embeds = sum(len(c) for c in chosen)
        if n_embeds != n_slots:
            raise ValueError(
                f"{n_slots} placeholder tokens but the tiles and clips give {n_embeds} embeddings "
                f"(tiles of {self.processor.tokens_per_tile} tokens each); build inputs with model.processor"
            )
        if not n_slots:
            return embeds
        return embeds.masked_scatter(placeholders.unsqueeze(-1), torch.cat(chosen).to(embeds.dtype))

    def cross_context(self, segments: Sequence[torch.Tensor], layout: MediaLayout) -> CrossContext:
        """Per-sample key/value sequences and the mask: a token sees the tokens of its most recent
        media item (an X tile tag only its own tile); a token before any media sees nothing.

        `segments[i]` is segment i's tokens [n_i, d] (a [tiles, tokens, d] tensor works as well)."""
        ref = segments[0]
        table = self.llm.get_input_embeddings()
        seqs, key_media, key_tile = [], [], []
        for entries in layout.kv:
            parts, item, tile = [], [], []
            for kind, payload, media, k in entries:
                part = table(torch.tensor(payload, device=ref.device)) if kind == "text" else segments[payload]
                parts.append(part.to(ref.dtype))
                item += [media] * len(part)
                tile += [k] * len(part)
            seqs.append(torch.cat(parts) if parts else ref.new_zeros(0, ref.shape[-1]))
            key_media.append(torch.tensor(item, dtype=torch.long))
            key_tile.append(torch.tensor(tile, dtype=torch.long))
        values = pad_sequence(seqs, batch_first=True, padding_value=0.0)
        key_media = pad_sequence(key_media, batch_first=True, padding_value=-2).to(ref.device)  # -2: padding
        key_tile = pad_sequence(key_tile, batch_first=True, padding_value=-2).to(ref.device)
        tok_media, tok_tile = layout.token_media, layout.token_tile
        prompt = (
            (tok_media.unsqueeze(-1) >= 0)
            & (key_media.unsqueeze(1) == tok_media.unsqueeze(-1))
            & ((tok_tile.unsqueeze(-1) < 0) | (key_tile.unsqueeze(1) == tok_tile.unsqueeze(-1)))
        )
        last = tok_media.max(dim=1).values.unsqueeze(-1)  # [B, 1]
        tail = (last >= 0) & (key_media == last)
        return CrossContext(self, values, prompt, tail)

    @contextmanager
    def conditioned(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        layout: MediaLayout | None,
        audio_values: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Input embeddings for the LLM, with the cross-attention context active around the call.

        Segments are every tile, then every clip, as `MediaLayout` numbers them."""
        has_images = pixel_values is not None and len(pixel_values) > 0
        has_audio = audio_values is not None and len(audio_values) > 0
        if layout is not None:
            layout = layout.to(input_ids.device)
        elif has_audio or (has_images and self.config.arch != "nvlm_d"):
            raise ValueError(f"{self.config.arch} with {'audio' if has_audio else 'images'} needs the batch's "
                             "`layout` from model.processor.collate")
        segments = list(self.image_features(pixel_values)) if has_images else []
        if has_audio:
            segments += self.audio_features(audio_values, layout.audio_frames)
        embeds = self.embed(input_ids, segments, layout.slots if layout is not None else None)
        # Parts this batch skips stay in the graph with a zero gradient (DDP needs no unused-param search).
        idle = self.idle_modules(has_images, has_audio)
        embeds = embeds + sum(p.sum() for m in idle for p in m.parameters() if p.requires_grad) * 0.0
        ctx = self.cross_context(segments, layout) if self.cross and segments else None
        token = _CROSS.set(ctx)
        try:
            yield embeds
        finally:
            _CROSS.reset(token)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        layout: MediaLayout | None = None,
        audio_values: torch.Tensor | None = None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
        with self.conditioned(input_ids, pixel_values, layout, audio_values) as embeds:
            return self.llm(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions(attention_mask),
                labels=labels, **kwargs,
            )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        layout: MediaLayout | None = None,
        max_new_tokens: int = 32,
        audio_values: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """New tokens only, [batch, <= max_new_tokens], eos-padded; HF `generate` drives the KV cache."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.setdefault("do_sample", False)
        with self.conditioned(input_ids, pixel_values, layout, audio_values) as embeds:
            return self.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **kwargs,
            )

    def answer(
        self, questions: list[str], images: list[list], max_new_tokens: int = 32, audio: list[list] | None = None,
        **kwargs,
    ) -> list[str]:
        """Questions with their images (and 16 kHz mono waveforms) -> decoded answers, in one left-padded batch."""
        audio = audio or [[] for _ in questions]
        batch = self.processor.collate(
            [self.processor.encode_prompt(q, ims, clips) for q, ims, clips in zip(questions, images, audio)]
        )
        device = next(self.parameters()).device
        out = self.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["pixel_values"].to(device),
            batch["layout"], max_new_tokens=max_new_tokens, audio_values=batch["audio_values"].to(device), **kwargs,
        )
        return [self.processor.decode(row) for row in out.tolist()]

    # -- save / load --------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """config.json + model.safetensors + tokenizer files: no pickle, no remote code."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"mmllm": self.config.to_dict(), "llm_config": self.llm.config.to_dict()}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        save_model(self, str(path / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MMLLM":
        """Rebuilds the exact modules offline from the saved configs, then loads the weights."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; not a saved mmllm model")
        meta = json.loads((path / CONFIG_FILE).read_text())
        config = MMLLMConfig.from_dict(meta["mmllm"])
        config.encoder.pretrained = False
        if config.audio is not None:
            config.audio.pretrained = False  # its architecture is in config.audio.options
        model = cls(config, tokenizer=load_tokenizer(str(path)), llm_config=meta["llm_config"])
        load_model(model, str(path / WEIGHTS_FILE))
        return model.eval()


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token, so left padding changes nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
