"""Audio connector: group encoder states in time (stack or pool), then an MLP to the LLM width.

Stacking is LLaMA-Omni's (k frames concatenated, the time analogue of pixel shuffle), pooling is
Qwen-Audio's (k frames averaged); either turns Whisper's 50 states/s into 50/k tokens/s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MLPProjector


class FrameStack(nn.Module):
    """[B, T, C] -> [B, ceil(T/k), k*C]: each token is k consecutive states side by side."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def out_dim(self, dim: int) -> int:
        return self.factor * dim

    def out_length(self, length: int) -> int:
        return -(-length // self.factor)

    def groups(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, ceil(T/k), k, C], zero-padding the last group."""
        pad = -x.shape[1] % self.factor
        return F.pad(x, (0, 0, 0, pad)).unflatten(1, (-1, self.factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(x).flatten(2)


class FramePool(FrameStack):
    """[B, T, C] -> [B, ceil(T/k), C]: each token is the mean of k consecutive states."""

    def out_dim(self, dim: int) -> int:
        return dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(x).mean(2)


class AudioConnector(nn.Module):
    """Downsample in time, then LayerNorm -> Linear -> GELU -> Linear to the LLM width."""

    def __init__(self, downsample: FrameStack, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = downsample
        self.projector = MLPProjector(downsample.out_dim(in_dim), hidden_dim, out_dim)

    def out_length(self, states: int) -> int:
        return self.downsample.out_length(states)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.projector(self.downsample(states))
