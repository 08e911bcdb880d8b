"""MMLLM: an encoder, a connector and any causal LM wired as one of the NVLM architectures."""
from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from mmllm.connectors import PROJECTORS, GatedCrossAttention, PixelShuffle
from mmllm.encoders import build_encoder

from .backbone import build_llm
from .config import MMLLMConfig
from .processor import IGNORE_INDEX, ImageLayout, Processor
from .tokenizer import load_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


_CROSS: ContextVar["CrossContext | None"] = ContextVar("mmllm_cross_attention", default=None)


@dataclass
class CrossContext:
    """What the cross-attention blocks see during one forward or one `generate()` call.

    Keys/values are computed once per block and reused at every decoding step. `prompt` holds the
    mask rows of the prompt; tokens beyond it (decoding) see the sample's last image (`tail`).
    """

    owner: nn.Module
    image: torch.Tensor  # [B, N, d] projected tiles (and, for H, tag embeddings) per sample, padded
    prompt: torch.Tensor  # [B, T0, N] bool
    tail: torch.Tensor  # [B, N] bool
    cache: dict = field(default_factory=dict)

    def kv(self, layer: int, block: GatedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.cache:
            self.cache[layer] = block.kv(self.image)
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
        layers = self.llm.get_decoder().layers
        self.cross = nn.ModuleDict({
            str(i): GatedCrossAttention(d_llm, llm_cfg.num_attention_heads, ffn)
            for i in config.cross_attention_at(len(layers))
        })
        for i, block in self.cross.items():
            layers[int(i)].register_forward_pre_hook(self._cross_hook(int(i), block), with_kwargs=True)
        rows, cols = self.shuffle.out_grid
        self.processor = Processor(
            config.processor, self.tokenizer, config.arch, height, rows * cols, self.encoder.mean, self.encoder.std
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

    def trainable_vision_parameters(self):
        return (p for m in (self.encoder, self.projector, self.cross) for p in m.parameters() if p.requires_grad)

    def embed(self, input_ids: torch.Tensor, feats: torch.Tensor | None, slots: torch.Tensor | None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.image_token_id
        n_slots = int(placeholders.sum())
        if feats is None:
            if n_slots:
                raise ValueError(f"{n_slots} image placeholder tokens but no pixel_values")
            # Text-only batch: keep every trainable parameter in the graph (DDP needs no unused-param search).
            return embeds + sum(p.sum() for p in self.trainable_vision_parameters()) * 0.0
        spliced = feats if slots is None else feats[slots]
        if spliced.shape[0] * spliced.shape[1] != n_slots:
            raise ValueError(
                f"{n_slots} image placeholder tokens but {spliced.shape[0]} tiles x {spliced.shape[1]} tokens "
                f"= {spliced.shape[0] * spliced.shape[1]} image embeddings; build inputs with model.processor"
            )
        return embeds.masked_scatter(placeholders.unsqueeze(-1), spliced.reshape(-1, spliced.shape[-1]).to(embeds.dtype))

    def cross_context(self, feats: torch.Tensor, layout: ImageLayout) -> CrossContext:
        """Per-sample key/value sequences and the mask: a token sees the tiles of its most recent
        image (an X tile tag only its own tile); a token before any image sees nothing."""
        table = self.llm.get_input_embeddings()
        seqs, key_image, key_tile = [], [], []
        for segments in layout.kv:
            parts, img, tile = [], [], []
            for kind, payload, image, k in segments:
                part = feats[payload] if kind == "tile" else table(torch.tensor(payload, device=feats.device))
                parts.append(part.to(feats.dtype))
                img += [image] * len(part)
                tile += [k] * len(part)
            seqs.append(torch.cat(parts) if parts else feats.new_zeros(0, feats.shape[-1]))
            key_image.append(torch.tensor(img, dtype=torch.long))
            key_tile.append(torch.tensor(tile, dtype=torch.long))
        image = pad_sequence(seqs, batch_first=True, padding_value=0.0)
        key_image = pad_sequence(key_image, batch_first=True, padding_value=-2).to(feats.device)  # -2: padding
        key_tile = pad_sequence(key_tile, batch_first=True, padding_value=-2).to(feats.device)
        tok_image, tok_tile = layout.token_image, layout.token_tile
        prompt = (
            (tok_image.unsqueeze(-1) >= 0)
            & (key_image.unsqueeze(1) == tok_image.unsqueeze(-1))
            & ((tok_tile.unsqueeze(-1) < 0) | (key_tile.unsqueeze(1) == tok_tile.unsqueeze(-1)))
        )
        last = tok_image.max(dim=1).values.unsqueeze(-1)  # [B, 1]
        tail = (last >= 0) & (key_image == last)
        return CrossContext(self, image, prompt, tail)

    @contextmanager
    def conditioned(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, layout: ImageLayout | None
    ) -> Iterator[torch.Tensor]:
        """Input embeddings for the LLM, with the cross-attention context active around the call."""
        has_images = pixel_values is not None and len(pixel_values) > 0
        feats = self.image_features(pixel_values) if has_images else None
        if layout is not None:
            layout = layout.to(input_ids.device)
        elif has_images and self.config.arch != "nvlm_d":
            raise ValueError(f"{self.config.arch} needs the batch's `layout` from model.processor.collate")
        embeds = self.embed(input_ids, feats, layout.slots if layout is not None else None)
        ctx = self.cross_context(feats, layout) if self.cross and has_images else None
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
        layout: ImageLayout | None = None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
        with self.conditioned(input_ids, pixel_values, layout) as embeds:
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
        layout: ImageLayout | None = None,
        max_new_tokens: int = 32,
        **kwargs,
    ) -> torch.Tensor:
        """New tokens only, [batch, <= max_new_tokens], eos-padded; HF `generate` drives the KV cache."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.setdefault("do_sample", False)
        with self.conditioned(input_ids, pixel_values, layout) as embeds:
            return self.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **kwargs,
            )

    def answer(self, questions: list[str], images: list[list], max_new_tokens: int = 32, **kwargs) -> list[str]:
        """Questions with their images -> decoded answers, in one left-padded batch."""
        batch = self.processor.collate([self.processor.encode_prompt(q, ims) for q, ims in zip(questions, images)])
        device = next(self.parameters()).device
        out = self.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["pixel_values"].to(device),
            batch["layout"], max_new_tokens=max_new_tokens, **kwargs,
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
        model = cls(config, tokenizer=load_tokenizer(str(path)), llm_config=meta["llm_config"])
        load_model(model, str(path / WEIGHTS_FILE))
        return model.eval()


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token, so left padding changes nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
