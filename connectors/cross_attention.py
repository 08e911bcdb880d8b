"""Gated cross-attention block (Flamingo/Mllama form) that NVLM-X and NVLM-H insert into the LLM."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedCrossAttention(nn.Module):
    """x + tanh(g_attn)·XAttn(x, image) and then + tanh(g_ffn)·FFN(x).

    Both gates start at exactly 0, so a freshly inserted block leaves the LLM's outputs unchanged.
    Keys/values depend on the image only: `kv()` is computed once per image and reused at every
    decoding step. Rows (text tokens) whose mask allows no image token get exactly zero from both
    branches, so text before any image is untouched.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.norm_q, self.norm_kv, self.norm_ffn = (nn.RMSNorm(dim, eps=eps) for _ in range(3))
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim, bias=False), nn.GELU(), nn.Linear(ffn_dim, dim, bias=False))
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, head_dim]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the image tokens [B, N, D]; cache them for the whole generation."""
        image = self.norm_kv(image)
        return self.split(self.k_proj(image)), self.split(self.v_proj(image))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; mask [B, T, N] bool, True where a text token may see an image token."""
        has_image = mask.any(-1, keepdim=True)  # [B, T, 1]
        safe = mask | ~has_image  # a row with no key would give NaN; it is zeroed below anyway
        q = self.split(self.q_proj(self.norm_q(x)))
        k, v = kv
        attn = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=safe.unsqueeze(1))
        attn = self.o_proj(attn.transpose(1, 2).flatten(2)) * has_image
        x = x + torch.tanh(self.attn_gate) * attn
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.norm_ffn(x)) * has_image
