"""``dit``: a DiT-style transformer (Peebles & Xie 2023) with cross-attention to the context.

Patch tokens (+ learned position embedding) go through ``depth`` blocks; each block has self-attention
over patches, cross-attention to the context (text + reward tokens, masked), and a SwiGLU feed-forward,
each pre-normed with RMSNorm and modulated by adaLN-Zero from the timestep embedding (shift, scale, gate
per sub-layer; gates start at zero so every block starts as the identity). Attention uses QK-norm.
"""

from __future__ import annotations

__all__ = ["DiT"]

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from miro_core import Backbone, ConfigError, config, hookimpl

from ._layers import Attention, RMSNorm, SwiGLU, TimestepEmbedding, patchify, unpatchify


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = RMSNorm(dim, affine=False)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = RMSNorm(dim, affine=False)
        self.cross = Attention(dim, heads, qk_norm=qk_norm)
        self.norm3 = RMSNorm(dim, affine=False)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.ada = nn.Linear(dim, 9 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, temb, ctx, mask):
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.ada(F.silu(temb)).chunk(9, dim=-1)
        x = x + g1[:, None] * self.attn(_modulate(self.norm1(x), s1, c1))
        x = x + g2[:, None] * self.cross(_modulate(self.norm2(x), s2, c2), ctx, mask)
        x = x + g3[:, None] * self.mlp(_modulate(self.norm3(x), s3, c3))
        return x


class DiT(Backbone):
    """DiT/MMDiT-style backbone: self-attention over patches, masked cross-attention to the context,
    SwiGLU, RMSNorm, QK-norm, adaLN-Zero timestep conditioning."""

    name = "dit"

    @config
    class Config:
        in_channels: int = 3
        image_size: int = 32
        context_dim: int = 256
        patch_size: int = 2
        hidden_dim: int = 192
        depth: int = 4
        heads: int = 4
        mlp_ratio: float = 4.0
        qk_norm: bool = True

    #: Named option sets; ``presets["paper_scale"]`` is a DiT of roughly the reference RIN's size.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {},
        "paper_scale": {"in_channels": 4, "image_size": 32, "patch_size": 2, "hidden_dim": 1152, "depth": 28,
                        "heads": 16, "context_dim": 1024},
    }

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if c.image_size % c.patch_size:
            raise ConfigError(f"image_size {c.image_size} is not divisible by patch_size {c.patch_size}; choose a patch_size that divides image_size")
        d = c.hidden_dim
        n_patches = (c.image_size // c.patch_size) ** 2
        self.patch_in = nn.Linear(c.in_channels * c.patch_size**2, d)
        self.pos = nn.Parameter(torch.randn(1, n_patches, d) * 0.02)
        self.time = TimestepEmbedding(d)
        self.ctx_norm = RMSNorm(c.context_dim)
        self.ctx_proj = nn.Linear(c.context_dim, d)
        self.blocks = nn.ModuleList(_DiTBlock(d, c.heads, c.mlp_ratio, c.qk_norm) for _ in range(c.depth))
        self.norm_out = RMSNorm(d, affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        self.patch_out = nn.Linear(d, c.in_channels * c.patch_size**2)
        for lin in (self.ada_out, self.patch_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, ch, h, w = x_t.shape
        x = self.patch_in(patchify(x_t, c.patch_size))
        if x.shape[1] != self.pos.shape[1]:
            raise ValueError(f"dit was built for {c.image_size}x{c.image_size} inputs, got {h}x{w}")
        x = x + self.pos
        temb = self.time(t)
        ctx = self.ctx_proj(self.ctx_norm(context))
        for block in self.blocks:
            x = block(x, temb, ctx, context_mask)
        shift, scale = self.ada_out(F.silu(temb)).chunk(2, dim=-1)
        x = self.patch_out(_modulate(self.norm_out(x), shift, scale))
        return unpatchify(x, c.patch_size, ch, h, w)


@hookimpl
def miro_register_backbones(register):
    register(DiT)
