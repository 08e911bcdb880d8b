"""Projectors from encoder width to LLM width (NVLM-D's 2-layer MLP; the 1-layer one X will use)."""
from __future__ import annotations

from torch import nn


class MLPProjector(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear; NVLM sets the hidden width to the LLM's FFN width."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
