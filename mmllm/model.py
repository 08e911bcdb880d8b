"""MMLLM: an encoder, a connector and any causal LM wired as one of the NVLM architectures."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .backbone import build_llm
from .config import MMLLMConfig
from .processor import IGNORE_INDEX, Processor
from .tokenizer import load_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class MMLLM(nn.Module):
    """NVLM-D: tile features -> pixel shuffle -> MLP -> spliced over the placeholder tokens."""

    def __init__(self, config: MMLLMConfig, tokenizer=None, llm_config: dict | None = None) -> None:
        super().__init__()
        from mmllm.connectors import PROJECTORS, PixelShuffle
        from mmllm.encoders import build_encoder

        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.processor.tokenizer)
        self.encoder = build_encoder(config.encoder)
        height, width = self.encoder.image_size
        if height != width:
            raise ValueError(f"tiles are square; encoder {config.encoder.model} takes {height}x{width}")
        self.llm = build_llm(config.llm, self.tokenizer, llm_config)
        self.shuffle = PixelShuffle(self.encoder.grid, config.pixel_shuffle)
        d_llm = self.llm.config.hidden_size
        hidden = config.connector_hidden or getattr(self.llm.config, "intermediate_size", 4 * d_llm)
        self.projector = PROJECTORS["mlp"](self.encoder.dim * config.pixel_shuffle**2, hidden, d_llm)
        rows, cols = self.shuffle.out_grid
        self.processor = Processor(
            config.processor, self.tokenizer, config.arch, height, rows * cols, self.encoder.mean, self.encoder.std
        )
        self.image_token_id = self.processor.image_token_id

    # -- forward ------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, S, S] -> [tiles, tokens_per_tile, d_llm]."""
        feats = self.encoder(pixel_values.to(self.projector[1].weight.dtype))
        return self.projector(self.shuffle(feats))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is not None and len(pixel_values):
            feats = self.image_features(pixel_values)
            if feats.shape[0] * feats.shape[1] != n_slots:
                raise ValueError(
                    f"{n_slots} image placeholder tokens but {feats.shape[0]} tiles x {feats.shape[1]} tokens "
                    f"= {feats.shape[0] * feats.shape[1]} image embeddings; build inputs with model.processor"
                )
            return embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
        if n_slots:
            raise ValueError(f"{n_slots} image placeholder tokens but no pixel_values")
        # Text-only batch: keep every trainable parameter in the graph (DDP needs no unused-param search).
        zero = sum(p.sum() for p in self.trainable_vision_parameters()) * 0.0
        return embeds + zero

    def trainable_vision_parameters(self):
        return (p for m in (self.encoder, self.projector) for p in m.parameters() if p.requires_grad)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
        return self.llm(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            labels=labels,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        **kwargs,
    ) -> torch.Tensor:
        """New tokens only, [batch, <= max_new_tokens], eos-padded; HF `generate` drives the KV cache."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.setdefault("do_sample", False)
        return self.llm.generate(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **kwargs,
        )

    def answer(self, questions: list[str], images: list[list], max_new_tokens: int = 32, **kwargs) -> list[str]:
        """Questions with their images -> decoded answers, in one left-padded batch."""
        batch = self.processor.collate([self.processor.encode_prompt(q, ims) for q, ims in zip(questions, images)])
        device = next(self.parameters()).device
        out = self.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["pixel_values"].to(device),
            max_new_tokens=max_new_tokens, **kwargs,
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
