"""Gated cross-attention block (Flamingo/Mllama form) that NVLM-X and NVLM-H insert into the LLM."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding of x [B, heads, N, head_dim] at integer positions [B, N]: the dot product
    of a rotated query and a rotated key then depends on their positions only through the difference."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None, :, None] * freqs  # [B, 1, N, half]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).to(x.dtype)


class GatedCrossAttention(nn.Module):
    """x + tanh(g_attn)·XAttn(x, image) and then + tanh(g_ffn)·FFN(x).

    Both gates start at exactly 0, so a freshly inserted block leaves the LLM's outputs unchanged.
    Keys/values depend on the image only: `kv()` is computed once per image and reused at every
    decoding step. Rows (text tokens) whose mask allows no image token get exactly zero from both
    branches, so text before any image is untouched. With `rope_base`, queries and keys are rotated
    by their positions (a query's sequence position, a key's place in its media item counted from the
    item's position in the sequence), so "the k-th token after the image" can ask for "the k-th key"
    at a fixed relative offset, as the decoder's own RoPE self-attention would.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float = 1e-6, rope_base: float | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.rope_base = heads, dim // heads, rope_base
        self.norm_q, self.norm_kv, self.norm_ffn = (nn.RMSNorm(dim, eps=eps) for _ in range(3))
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim, bias=False), nn.GELU(), nn.Linear(ffn_dim, dim, bias=False))
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, head_dim]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def kv(self, image: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the image tokens [B, N, D] (key positions [B, N] with rope); cache them for
        the whole generation."""
        image = self.norm_kv(image)
        k = self.split(self.k_proj(image))
        return (k if self.rope_base is None else rotate(k, positions, self.rope_base)), self.split(self.v_proj(image))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; mask [B, T, N] bool, True where a text token may see an image token; positions
        [B, T] of the queries (with rope)."""
        has_image = mask.any(-1, keepdim=True)  # [B, T, 1]
        safe = mask | ~has_image  # a row with no key would give NaN; it is zeroed below anyway
        q = self.split(self.q_proj(self.norm_q(x)))
        if self.rope_base is not None:
            q = rotate(q, positions.expand(x.shape[0], -1), self.rope_base)
        k, v = kv
        attn = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=safe.unsqueeze(1))
        attn = self.o_proj(attn.transpose(1, 2).flatten(2)) * has_image
        x = x + torch.tanh(self.attn_gate) * attn
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.norm_ffn(x)) * has_image
