"""The Hugging Face models the peer benchmark stands next to ours, built at our sizes: LLaVA beside NVLM-D (the
same spliced sequence) and Mllama beside NVLM-X (the same gated cross-attention), each fed the batches of the
arch it stands next to (`PEERS`)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmllm.model import MMLLM
from mmllm.sample import ModelInputs


@dataclass
class Tower:
    """Our timm ViT's geometry, which a peer's vision tower copies."""

    width: int
    depth: int
    heads: int
    mlp: int
    image_size: int
    tokens: int  # patches per tile our tower runs on
    llm_tokens: int  # image tokens per tile our LLM gets (after pixel shuffle)

    @classmethod
    def of(cls, model: MMLLM) -> "Tower":
        blocks = list(model.encoder.model.blocks)
        rows, cols = model.encoder.grid
        return cls(model.encoder.dim, len(blocks), blocks[0].attn.num_heads, blocks[0].mlp.fc1.out_features,
                   model.processor.tile_size, rows * cols, model.processor.tokens_per_tile)

    @property
    def peer_patch(self) -> int:
        """The square patch that gives a peer as many tokens per tile as our LLM gets (peers cannot pool)."""
        per_side = math.isqrt(self.llm_tokens)
        if per_side**2 != self.llm_tokens or self.image_size % per_side:
            raise ValueError(f"{self.llm_tokens} tokens per {self.image_size}-px tile: no square patch matches")
        return self.image_size // per_side


def build_llava(ours: MMLLM, n_tiles: int) -> nn.Module:
    """LLaVA at our size: the same Llama config, a CLIP tower of our ViT's width/depth/heads/MLP on
    the same tiles, with the square patch that puts as many tokens per tile into the LLM as ours. It takes
    any tile count (a batch of tiles), so `n_tiles` changes nothing."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    t = Tower.of(ours)
    vision = CLIPVisionConfig(hidden_size=t.width, intermediate_size=t.mlp, num_hidden_layers=t.depth,
                              num_attention_heads=t.heads, image_size=t.image_size, patch_size=t.peer_patch,
                              hidden_act="gelu")
    config = LlavaConfig(vision_config=vision, text_config=copy.deepcopy(ours.llm.config),
                         image_token_index=ours.image_token_id, vision_feature_layer=-1,
                         image_seq_length=ours.processor.tokens_per_tile)
    return LlavaForConditionalGeneration(config)


def build_mllama(ours: MMLLM, n_tiles: int) -> nn.Module:
    """Llama 3.2 Vision at our NVLM-X's size, for images of exactly `n_tiles` tiles.

    Text: our Llama's layers plus one Mllama cross-attention layer where we insert a block. Vision:
    our ViT's width/depth/heads/MLP (no global layers; one intermediate layer concatenated) with the
    patch that matches our tokens per tile. Mllama always encodes `max_num_tiles` tiles per image,
    so it is built with that set to the tiles we feed, and runs no padding tiles.
    """
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaTextConfig, MllamaVisionConfig

    t = Tower.of(ours)
    vision = MllamaVisionConfig(hidden_size=t.width, intermediate_size=t.mlp, num_hidden_layers=t.depth,
                                num_global_layers=0, attention_heads=t.heads, image_size=t.image_size,
                                patch_size=t.peer_patch, max_num_tiles=n_tiles, supported_aspect_ratios=[[1, n_tiles]],
                                intermediate_layers_indices=[t.depth // 2], vision_output_dim=2 * t.width)
    llm = ours.llm.config
    ours_at = list(ours.cross_layers())
    shared = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "rms_norm_eps", "max_position_embeddings", "rope_parameters", "hidden_act",
              "bos_token_id", "eos_token_id", "pad_token_id")
    text = MllamaTextConfig(num_hidden_layers=llm.num_hidden_layers + len(ours_at),
                            cross_attention_layers=[i + rank for rank, i in enumerate(ours_at)],
                            **{k: getattr(llm, k) for k in shared})
    return MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text,
                                                       image_token_index=ours.image_token_id))


def llava_inputs(batch: ModelInputs, device: torch.device) -> dict:
    """Our NVLM-D batch as it is: LLaVA splices the tiles' features (a batch of images) over the same
    placeholders, so both decoders see the same sequence."""
    given = {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    return {k: v.to(device) for k, v in given.items() if v is not None}  # labels: None in a prompt batch


def mllama_inputs(batch: ModelInputs, device: torch.device) -> dict:
    """Our NVLM-X batch for Mllama: each sample's tiles as one image of T tiles, and a tile-level
    cross-attention mask equal to ours (a token sees its image's tiles, a tile tag only its own tile)."""
    layout = batch.layout
    b = batch.input_ids.shape[0]
    pixels = batch.pixel_values
    n = pixels.shape[0] // b
    tile = torch.arange(n)
    sees = (layout.token_media >= 0).unsqueeze(-1) & (
        (layout.token_tile.unsqueeze(-1) < 0) | (layout.token_tile.unsqueeze(-1) == tile))
    inputs = {
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels,
        "pixel_values": pixels.view(b, 1, n, *pixels.shape[1:]),
        "aspect_ratio_ids": torch.ones(b, 1, dtype=torch.long),
        "aspect_ratio_mask": torch.ones(b, 1, n, dtype=torch.long),
        "cross_attention_mask": sees.unsqueeze(2).long(),  # [B, T, images=1, tiles]
    }
    return {k: v.to(device) for k, v in inputs.items() if v is not None}  # labels: None in a prompt batch


@dataclass(frozen=True)
class Peer:
    """A peer model and how it meets the arch it stands next to."""

    name: str
    build: Callable[[MMLLM, int], nn.Module]  # (our model, tiles per image, thumbnail included) -> the peer
    inputs: Callable[[ModelInputs, torch.device], dict]  # our batch of that arch -> the peer's keywords
    per_tile_count: bool  # its tile tables are sized by the tile count: one model per count
    extra_tokens_per_tile: int  # image tokens its LLM gets per tile beyond ours (Mllama keeps CLS)


# Our arch -> its peer: the one table that pairs them.
PEERS: dict[str, Peer] = {
    "nvlm_d": Peer("llava", build_llava, llava_inputs, per_tile_count=False, extra_tokens_per_tile=0),
    "nvlm_x": Peer("mllama", build_mllama, mllama_inputs, per_tile_count=True, extra_tokens_per_tile=1),
}
