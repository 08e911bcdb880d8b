"""Pixel shuffle: trade tokens for width, so a tile costs 1/f² as many LLM positions (1024 -> 256 in NVLM)."""
from __future__ import annotations

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, grid: tuple[int, int], factor: int = 2) -> torch.Tensor:
    """[B, h*w, C] on an (h, w) grid -> [B, (h/f)*(w/f), f*f*C]; each new token is an f x f block.

    Channels of a block are concatenated row-major: (0,0), (0,1), (1,0), (1,1) for f = 2.
    """
    b, n, c = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"pixel_shuffle: {n} tokens do not form the {h}x{w} grid")
    if h % factor or w % factor:
        raise ValueError(f"pixel_shuffle: grid {h}x{w} is not divisible by factor {factor}")
    x = x.reshape(b, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // factor) * (w // factor), factor * factor * c)


class PixelShuffle(nn.Module):
    def __init__(self, grid: tuple[int, int], factor: int = 2) -> None:
        super().__init__()
        self.grid, self.factor = tuple(grid), factor
        if grid[0] % factor or grid[1] % factor:
            raise ValueError(f"encoder grid {grid[0]}x{grid[1]} is not divisible by pixel_shuffle {factor}")

    @property
    def out_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.factor, self.grid[1] // self.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.grid, self.factor)
