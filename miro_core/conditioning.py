"""Reward conditioning (DESIGN.md section 1; paper appendix B): text tokens + reward tokens -> one context.

Each reward ``j`` has a normalised level ``s_j = k/(B-1)`` in [0, 1] (NaN = missing). Its token is

    token_j = MLP_j(fourier(s_j)) + position_j          (NaN: token_j = missing_j)

with ``fourier(s) = [sin(pi f_1 s), ..., sin(pi f_F s), cos(pi f_1 s), ..., cos(pi f_F s)]`` at geometric
frequencies ``f_i = max_frequency ** (i / (F - 1))``, ``i = 0..F-1``, ``F = fourier_dim // 2`` (so
``f_0 = 1``: half a period over [0, 1], monotone; the highest frequency separates adjacent bins), each
``MLP_j`` is ``Linear(fourier_dim, dim) -> SiLU -> Linear(dim, dim)`` with its own weights, and
``position_j`` / ``missing_j`` are learned vectors. Text tokens are RMS-normalised and projected to ``dim``.
The context is ``[text tokens; registers; reward tokens]`` (optionally refined by ``context_layers`` small
masked self-attention blocks), with mask ``[text_mask; True...]``. Padded text positions are zeroed.
"""

from __future__ import annotations

__all__ = ["RewardConditioning", "fourier_features", "check_levels"]

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._config import config as _config
from ._errors import ConfigError


def fourier_features(levels: torch.Tensor, fourier_dim: int, max_frequency: float) -> torch.Tensor:
    """``levels [...]`` -> ``[..., fourier_dim]``: sin then cos of ``pi * f_i * level``, geometric ``f_i``."""
    half = fourier_dim // 2
    if half < 1:
        raise ConfigError(f"fourier_dim must be >= 2, got {fourier_dim}.")
    if half == 1:
        freqs = torch.ones(1, device=levels.device)
    else:
        freqs = max_frequency ** (torch.arange(half, dtype=torch.float32, device=levels.device) / (half - 1))
    ang = math.pi * levels.float()[..., None] * freqs
    out = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if fourier_dim % 2:
        out = F.pad(out, (0, 1))
    return out


def check_levels(levels: torch.Tensor | None, batch: int, rewards: tuple[str, ...], like: torch.Tensor) -> torch.Tensor:
    """``levels`` as ``[batch, len(rewards)]`` (``None`` for no rewards), or a ConfigError naming the shapes."""
    if levels is None:
        levels = like.new_zeros(batch, 0)
    if levels.ndim != 2 or levels.shape[0] != batch or levels.shape[1] != len(rewards):
        raise ConfigError(
            f"reward levels must have shape [batch={batch}, rewards={len(rewards)}] for rewards {list(rewards)}, "
            f"got {tuple(levels.shape)}."
        )
    return levels


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _ContextBlock(nn.Module):
    """Pre-norm masked self-attention (QK-norm) + GELU MLP over the context tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"conditioning dim {dim} is not divisible by num_heads {heads}.")
        self.heads = heads
        self.norm1 = _RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = _RMSNorm(dim // heads)
        self.k_norm = _RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = _RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class RewardConditioning(nn.Module):
    """Builds the backbone context from text tokens and reward levels (one token per reward)."""

    @_config
    class Config:
        #: Reward names, in the column order of ``levels``; empty = unconditioned baseline.
        rewards: tuple[str, ...] = ()
        text_dim: int = 384
        dim: int = 256
        fourier_dim: int = 64
        max_frequency: float = 64.0
        num_registers: int = 0
        context_layers: int = 0
        num_heads: int = 4

    def __init__(self, config: Any = None):
        super().__init__()
        c = config if config is not None else self.Config()
        self.config = c
        n, d, f = len(c.rewards), c.dim, c.fourier_dim
        if len(set(c.rewards)) != n:
            raise ConfigError(f"conditioning rewards must be unique, got {list(c.rewards)}.")
        self.text_norm = _RMSNorm(c.text_dim)
        self.text_proj = nn.Linear(c.text_dim, d)
        # Per-reward MLPs as stacked weights [N, in, out] (same init as nn.Linear).
        self.w1 = nn.Parameter(torch.empty(n, f, d))
        self.b1 = nn.Parameter(torch.empty(n, d))
        self.w2 = nn.Parameter(torch.empty(n, d, d))
        self.b2 = nn.Parameter(torch.empty(n, d))
        for w, b, fan_in in ((self.w1, self.b1, f), (self.w2, self.b2, d)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.position = nn.Parameter(torch.randn(n, d) * 0.02)
        self.missing = nn.Parameter(torch.randn(n, d) * 0.02)
        self.registers = nn.Parameter(torch.randn(c.num_registers, d) * 0.02)
        self.blocks = nn.ModuleList(_ContextBlock(d, c.num_heads) for _ in range(c.context_layers))

    @property
    def num_rewards(self) -> int:
        return len(self.config.rewards)

    def reward_tokens(self, levels: torch.Tensor) -> torch.Tensor:
        """``levels [B, N]`` (NaN = missing) -> reward tokens ``[B, N, dim]``."""
        c = self.config
        missing = torch.isnan(levels)
        feats = fourier_features(torch.where(missing, torch.zeros_like(levels), levels), c.fourier_dim,
                                 c.max_frequency).to(self.w1.dtype)
        h = F.silu(torch.einsum("bnf,nfd->bnd", feats, self.w1) + self.b1)
        tok = torch.einsum("bnd,nde->bne", h, self.w2) + self.b2 + self.position
        return torch.where(missing[..., None], self.missing.expand_as(tok), tok)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                levels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context [B, L+R+N, dim], mask [B, L+R+N] bool)``."""
        b, length, _ = text_tokens.shape
        n, r = self.num_rewards, self.config.num_registers
        levels = check_levels(levels, b, self.config.rewards, text_tokens)
        text_mask = text_mask.to(device=text_tokens.device, dtype=torch.bool)
        text = self.text_proj(self.text_norm(text_tokens.to(self.text_proj.weight.dtype)))
        text = text * text_mask[..., None]
        parts = [text]
        masks = [text_mask]
        if r:
            parts.append(self.registers.expand(b, -1, -1))
            masks.append(text_mask.new_ones(b, r))
        if n:
            parts.append(self.reward_tokens(levels.to(text_tokens.device)))
            masks.append(text_mask.new_ones(b, n))
        context = torch.cat(parts, dim=1)
        mask = torch.cat(masks, dim=1)
        if self.blocks:
            attn_mask = mask.clone()
            attn_mask[~attn_mask.any(-1)] = True  # a row with no valid token (L=0, no rewards) attends all
            for block in self.blocks:
                context = block(context, attn_mask)
            context = context * mask[..., None]
        return context, mask
