"""Building blocks shared by the built-in backbones.

RMSNorm (Zhang & Sennrich 2019), SwiGLU feed-forward (Shazeer 2020), multi-head attention with QK-norm
(Henry et al. 2020) on top of :func:`torch.nn.functional.scaled_dot_product_attention` with boolean key
masks, sinusoidal timestep embedding, patchify / unpatchify.
"""

from __future__ import annotations

__all__ = [
    "RMSNorm",
    "SwiGLU",
    "Attention",
    "TimestepEmbedding",
    "timestep_features",
    "patchify",
    "unpatchify",
    "count_parameters",
]

import math

import torch
import torch.nn.functional as F
from torch import nn

from miro_core import ConfigError


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with an optional learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        x = x.to(dtype)
        return x * self.weight if self.weight is not None else x


class SwiGLU(nn.Module):
    """``W3 (SiLU(W1 x) * W2 x)``; hidden width ``2/3 * mlp_ratio * dim`` rounded to a multiple of 8."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, out_dim: int | None = None):
        super().__init__()
        hidden = int(round(2 * mlp_ratio * dim / 3 / 8)) * 8
        hidden = max(hidden, 8)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def _key_mask(mask: torch.Tensor | None, batch: int, q_len: int, k_len: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """SDPA boolean mask ``[B,1,1,Lk]`` (True = attend) and a ``[B,1,1]`` keep factor for rows with no key.

    A query row whose keys are all masked would give NaN in softmax; such rows attend to everything and
    their output is multiplied by 0 instead (so a fully masked context contributes nothing).
    """
    if mask is None:
        return None, None
    mask = mask.to(torch.bool)
    if mask.shape != (batch, k_len):
        raise ValueError(f"key mask must have shape {(batch, k_len)}, got {tuple(mask.shape)}")
    has_key = mask.any(dim=-1)
    if bool(has_key.all()):
        return mask[:, None, None, :], None
    mask = mask | ~has_key[:, None]
    return mask[:, None, None, :], has_key[:, None, None].to(torch.float32)


class Attention(nn.Module):
    """Multi-head (self or cross) attention with QK-norm and optional boolean key mask.

    ``forward(x [B,Lq,dim], context [B,Lk,kv_dim] | None, mask [B,Lk] bool | None) -> [B,Lq,dim]``;
    ``context=None`` means self-attention over ``x``. ``mask`` True = attend.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, qk_norm: bool = True, zero_init: bool = False):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, _ = x.shape
        src = x if context is None else context
        lk = src.shape[1]
        q = self.q(x).view(b, lq, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(src).view(b, lk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask, keep = _key_mask(mask, b, lq, lk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if keep is not None:
            out = out * keep[..., None].to(out.dtype)
        return self.out(out.transpose(1, 2).reshape(b, lq, -1))


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features ``[cos(s t f_i), sin(s t f_i)]`` of ``t [B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``t [B] in [0,1]`` -> sinusoidal features -> MLP (SiLU) -> ``[B, dim]``."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B, (H/p)(W/p), C*p*p]`` (row-major patches)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"input side {h}x{w} is not divisible by patch size {p}")
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = tokens.shape[0]
    x = tokens.view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
