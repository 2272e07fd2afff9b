"""Reward conditioning of the official MIRO release (``CADRINTextCond``'s conditioning, written anew).

For rewards ``j = 1..N`` with normalised levels ``s_j = k/(B-1)`` (NaN = missing):

    token_j = ScalarEmbedder_j(s_j) + position_j          (NaN: token_j = position_j)

where each ``ScalarEmbedder_j`` is standardised random Fourier features (``fourier_dim``, stored buffers) then
``Linear -> SiLU -> Linear`` to ``dim`` (:mod:`miro_core.nn`). Text tokens are projected by one ``Linear``
(no norm; padded positions are masked, not zeroed). The context is
``[reward tokens (N); registers (R); text tokens (L)]`` with mask ``[True * (N + R); text_mask]``, refined by
``context_layers`` pre-norm self-attention blocks (LayerNorm with bias, packed ``qkv`` with bias, no QK-norm,
GELU MLP, learned layer-scale on both residual branches, initialised to ``layer_scale``).

A missing level (NaN) gives the token of its position alone, in training and in sampling alike: that is the
official release's sampling-time rule and what its reward dropout trains. (The release's training code
instead embeds a missing score as level 0.0; here a missing score stays missing, DESIGN.md section 1.)
"""

from __future__ import annotations

__all__ = ["CADConditioning"]

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._config import config as _config
from ._errors import ConfigError
from .conditioning import check_levels
from .nn import LayerScale, ScalarEmbedder


class _RefineBlock(nn.Module):
    """``x += ls1 * attn(LN(x)); x += ls2 * mlp(LN(x))`` over the context tokens (key-masked)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_scale: float):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"conditioning dim {dim} is not divisible by num_heads {heads}.")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.scale2 = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.scale1(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        return x + self.scale2(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class CADConditioning(nn.Module):
    """Text + reward levels -> context, as the official MIRO release builds it (random-Fourier reward tokens,
    registers, layer-scaled refinement blocks). ``forward(text_tokens, text_mask, levels) -> (context, mask)``."""

    @_config
    class Config:
        #: Reward names, in the column order of ``levels``; empty = unconditioned baseline.
        rewards: tuple[str, ...] = ()
        text_dim: int = 384
        dim: int = 256
        #: Random Fourier features per reward level (the release: dim // 4).
        fourier_dim: int = 64
        num_registers: int = 16
        context_layers: int = 2
        num_heads: int = 4
        mlp_ratio: float = 4.0
        layer_scale: float = 0.1

    def __init__(self, config: Any = None):
        super().__init__()
        c = config if config is not None else self.Config()
        self.config = c
        n, d = len(c.rewards), c.dim
        if len(set(c.rewards)) != n:
            raise ConfigError(f"conditioning rewards must be unique, got {list(c.rewards)}.")
        if c.fourier_dim < 2:
            raise ConfigError(f"conditioning fourier_dim must be >= 2 (got {c.fourier_dim}).")
        self.text_proj = nn.Linear(c.text_dim, d)
        self.embedders = nn.ModuleList(ScalarEmbedder(c.fourier_dim, d) for _ in range(n))
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(n, d), std=0.02, a=-0.04, b=0.04))
        self.registers = nn.Parameter(nn.init.trunc_normal_(torch.empty(c.num_registers, d), std=0.02, a=-0.04, b=0.04))
        self.blocks = nn.ModuleList(
            _RefineBlock(d, c.num_heads, c.mlp_ratio, c.layer_scale) for _ in range(c.context_layers)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_rewards(self) -> int:
        return len(self.config.rewards)

    def reward_tokens(self, levels: torch.Tensor) -> torch.Tensor:
        """``levels [B, N]`` (NaN = missing) -> reward tokens ``[B, N, dim]``."""
        missing = torch.isnan(levels)
        filled = torch.where(missing, torch.zeros_like(levels), levels)
        emb = torch.stack([e(filled[:, j]) for j, e in enumerate(self.embedders)], dim=1)
        emb = torch.where(missing[..., None], torch.zeros_like(emb), emb)
        return emb + self.position

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                levels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context [B, N+R+L, dim], mask [B, N+R+L] bool)``."""
        b = text_tokens.shape[0]
        n, r = self.num_rewards, self.config.num_registers
        levels = check_levels(levels, b, self.config.rewards, text_tokens)
        text_mask = text_mask.to(device=text_tokens.device, dtype=torch.bool)
        parts = [self.text_proj(text_tokens.to(self.text_proj.weight.dtype))]
        masks = [text_mask]
        if r:
            parts.insert(0, self.registers.expand(b, -1, -1))
            masks.insert(0, text_mask.new_ones(b, r))
        if n:
            parts.insert(0, self.reward_tokens(levels.to(text_tokens.device)))
            masks.insert(0, text_mask.new_ones(b, n))
        context = torch.cat(parts, dim=1)
        mask = torch.cat(masks, dim=1)
        if self.blocks:
            key_mask = mask.clone()
            key_mask[~key_mask.any(-1)] = True  # a row with no valid token (no text, rewards or registers)
            for block in self.blocks:
                context = block(context, key_mask)
        return context, mask
