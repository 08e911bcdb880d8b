"""Projectors from encoder width to LLM width: NVLM-D/H's 2-layer MLP and NVLM-X's 1-layer one."""
from __future__ import annotations

from torch import nn


class MLPProjector(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear; NVLM sets the hidden width to the LLM's FFN width."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class LinearProjector(nn.Sequential):
    """LayerNorm -> Linear: NVLM-X's 1-layer projector (the norm tames raw encoder feature scales)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        del hidden_dim  # one layer: taken only so every projector is built with the same call
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
