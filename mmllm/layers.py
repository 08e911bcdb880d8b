"""Wrappers that NVLM-X/H and the input-position knob put into an LLM's decoder stack.

They replace entries of the decoder's layer list (as Mllama keeps its cross-attention layers in the
list), so `print(model)`, the state-dict keys and `copy.deepcopy` show where they are. Images reach
a cross-attention layer through `condition()`, which `MMLLM` calls around one forward or one
`generate()` call (OpenFlamingo conditions its layers the same way): Hugging Face `generate()`
refuses keyword arguments its model does not name, so the memory cannot travel as a forward argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmllm.connectors import GatedCrossAttention


@dataclass
class MediaMemory:
    """What the cross-attention layers read during one call.

    `prompt` holds the mask rows of the prompt's tokens; a token after the prompt (a generated one) sees the
    sample's last media item (`tail`).
    """

    values: torch.Tensor  # [B, N, d] keys/values input per sample (tiles, clips, tag entries), padded
    key_positions: torch.Tensor  # [B, N] each key's position: its media item's place in the sequence + its index
    prompt: torch.Tensor  # [B, T0, N] bool: which keys each prompt token may see
    tail: torch.Tensor  # [B, N] bool: which keys a generated token may see

    def repeat(self, copies: int) -> "MediaMemory":
        """Each sample's memory `copies` times in a row, as generation lays out beams and returned sequences."""
        if copies == 1:
            return self
        return MediaMemory(*(t.repeat_interleave(copies, dim=0) for t in
                             (self.values, self.key_positions, self.prompt, self.tail)))

    def mask(self, start: int, length: int) -> torch.Tensor:
        """Mask rows [B, length, N] of the sequence positions start .. start + length - 1: a whole prompt, a
        chunk of it, one decoding step, or a prompt and what was generated after it (no cache)."""
        t0 = self.prompt.shape[1]
        prompt = self.prompt[:, start:start + length]
        generated = self.tail.unsqueeze(1).expand(-1, length - prompt.shape[1], -1)
        return torch.cat([prompt, generated], 1) if generated.shape[1] else prompt


class CrossAttentionDecoderLayer(nn.Module):
    """A gated cross-attention block run before one of the LLM's own decoder layers.

    With no memory (text only) it is exactly the wrapped layer. Without gradients (generation) keys/values
    are computed once per conditioning and reused at every decoding step; with them, once per call, so a
    recomputed block (activation checkpointing) sees the same inputs as the first pass.
    """

    def __init__(self, cross: GatedCrossAttention, layer: nn.Module, index: int) -> None:
        super().__init__()
        self.cross, self.layer, self.index = cross, layer, index
        self.memory: MediaMemory | None = None
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def condition(self, memory: MediaMemory | None) -> None:
        self.memory, self._kv = memory, None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.memory is not None:
            positions = kwargs.get("position_ids")
            if self.cross.rope_base is not None and positions is None:
                raise ValueError("cross_attention_positions 'rope' needs a decoder whose layers receive position_ids")
            kv = self._kv or self.cross.kv(self.memory.values, self.memory.key_positions)
            if not torch.is_grad_enabled():
                self._kv = kv
            mask = self.memory.mask(self.start(kwargs), hidden_states.shape[1])
            hidden_states = self.cross(hidden_states, kv, mask, positions)
        return self.layer(hidden_states, *args, **kwargs)

    def start(self, kwargs: dict) -> int:
        """The sequence position of this call's first token: how many tokens the KV cache already holds for this
        layer (its self-attention adds this call's own after the cross-attention block has run), 0 without one."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        return 0 if cache is None else cache.get_seq_length(self.index)

    def extra_repr(self) -> str:
        return f"index={self.index}"


class InputPositionLayer(nn.Module):
    """Adds a learned absolute position embedding to the input of the first decoder layer.

    Works for any decoder whose layers receive `position_ids` (Llama, Qwen2, GPT-2 families); during
    generation Hugging Face passes each step's positions, so cached decoding stays exact.
    """

    def __init__(self, layer: nn.Module, max_positions: int, dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.positions = nn.Embedding(max_positions, dim)
        nn.init.normal_(self.positions.weight, std=0.02)  # as token embeddings are initialised

    def forward(self, hidden_states: torch.Tensor, *args, position_ids: torch.Tensor | None = None, **kwargs):
        if position_ids is None:
            raise ValueError("input_positions needs a decoder whose layers receive position_ids")
        if int(position_ids.max()) >= self.positions.num_embeddings:
            raise ValueError(f"position {int(position_ids.max())} is beyond input_positions "
                             f"({self.positions.num_embeddings}); raise model.input_positions")
        hidden_states = hidden_states + self.positions(position_ids).to(hidden_states.dtype)
        return self.layer(hidden_states, *args, position_ids=position_ids, **kwargs)
