"""``rin``: TextRIN, Recurrent Interface Networks (Jabri et al. 2023) with text/reward cross-attention
(Dufour et al. 2024, CAD), as used by the MIRO reference recipe, with SwiGLU, RMSNorm and QK-norm.

Two sets of tokens: the *interface* (one token per image patch, width ``interface_dim``) and a small set of
learned *latents* (``num_latents`` x ``latent_dim``) where most computation happens. The timestep is one
extra latent token (an MLP of its sinusoidal embedding), so it takes part in every latent attention. Each
of the ``num_blocks`` blocks:

1. *read*: latents cross-attend to the interface (+ SwiGLU);
2. *condition*: latents cross-attend to the context (text + reward tokens; padded positions masked);
3. *compute*: ``layers_per_block`` latent self-attention layers (+ SwiGLU);
4. *write*: the interface cross-attends to the latents (+ SwiGLU).

The interface is then projected back to patches: the velocity ``v``.

Latent self-conditioning: the initial latents are ``learned + Linear(RMSNorm(previous latents))`` where the
linear layer starts at zero. In training (``self.training``), each sample gets previous latents with
probability ``self_cond_rate``: a first forward under ``no_grad`` computes them, and the second forward
(the one whose output is returned and trained) starts from them; the others get zeros. In eval, the final
latents of each call are kept and reused by the next call when the batch size matches (consecutive
solver steps); :meth:`RIN.reset_state` clears them (the sampler calls it at the start of each run).
"""

from __future__ import annotations

__all__ = ["RIN"]

from typing import Any, ClassVar

import torch
from torch import nn

from miro_core import Backbone, ConfigError, config, hookimpl

from ._layers import Attention, RMSNorm, SwiGLU, TimestepEmbedding, patchify, unpatchify


class _CrossBlock(nn.Module):
    """``x += attn(norm(x), norm(src)); x += ffn(norm(x))``."""

    def __init__(self, dim: int, src_dim: int, heads: int, mlp_ratio: float, qk_norm: bool, ffn: bool = True):
        super().__init__()
        self.norm_q = RMSNorm(dim)
        self.norm_kv = RMSNorm(src_dim)
        self.attn = Attention(dim, heads, kv_dim=src_dim, qk_norm=qk_norm)
        self.norm_ffn = RMSNorm(dim) if ffn else None
        self.ffn = SwiGLU(dim, mlp_ratio) if ffn else None

    def forward(self, x, src, mask=None):
        x = x + self.attn(self.norm_q(x), self.norm_kv(src), mask)
        if self.ffn is not None:
            x = x + self.ffn(self.norm_ffn(x))
        return x


class _SelfBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = RMSNorm(dim)
        self.ffn = SwiGLU(dim, mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _RINBlock(nn.Module):
    def __init__(self, c: Any):
        super().__init__()
        self.read = _CrossBlock(c.latent_dim, c.interface_dim, c.heads, c.mlp_ratio, c.qk_norm)
        self.cond = _CrossBlock(c.latent_dim, c.latent_dim, c.heads, c.mlp_ratio, c.qk_norm, ffn=False)
        self.compute = nn.ModuleList(_SelfBlock(c.latent_dim, c.heads, c.mlp_ratio, c.qk_norm)
                                     for _ in range(c.layers_per_block))
        self.write = _CrossBlock(c.interface_dim, c.latent_dim, c.interface_heads, c.mlp_ratio, c.qk_norm)

    def forward(self, x, z, ctx, mask):
        z = self.read(z, x)
        z = self.cond(z, ctx, mask)
        for layer in self.compute:
            z = layer(z)
        x = self.write(x, z)
        return x, z


class RIN(Backbone):
    """TextRIN: learned latents read from patch tokens, attend to text + reward tokens, write back;
    SwiGLU, RMSNorm, QK-norm, timestep latent token, latent self-conditioning."""

    name = "rin"

    @config
    class Config:
        in_channels: int = 3
        image_size: int = 32
        context_dim: int = 256
        patch_size: int = 2
        interface_dim: int = 128
        latent_dim: int = 192
        num_latents: int = 64
        num_blocks: int = 2
        layers_per_block: int = 2
        heads: int = 4
        interface_heads: int = 4
        mlp_ratio: float = 4.0
        qk_norm: bool = True
        self_cond_rate: float = 0.9
        #: Reuse the previous call's latents in eval (when the batch size matches).
        eval_self_cond: bool = True

    #: Named option sets. ``paper``: the reference recipe (256 latents x 1024, 4 blocks x 4 layers, patch 2
    #: on 4x32x32 SDXL-VAE latents, FLAN-T5-XL context of width 2048 projected by the conditioning).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {},
        "paper": {"in_channels": 4, "image_size": 32, "patch_size": 2, "interface_dim": 256, "latent_dim": 1024,
                  "num_latents": 256, "num_blocks": 4, "layers_per_block": 4, "heads": 16, "interface_heads": 4,
                  "self_cond_rate": 0.9, "context_dim": 1024},
    }

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if c.image_size % c.patch_size:
            raise ConfigError(f"image_size {c.image_size} is not divisible by patch_size {c.patch_size}; choose a patch_size that divides image_size")
        if not 0.0 <= c.self_cond_rate <= 1.0:
            raise ConfigError(f"self_cond_rate must be in [0, 1], got {c.self_cond_rate}")
        n_patches = (c.image_size // c.patch_size) ** 2
        patch_dim = c.in_channels * c.patch_size**2
        self.patch_in = nn.Linear(patch_dim, c.interface_dim)
        self.pos = nn.Parameter(torch.randn(1, n_patches, c.interface_dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(c.num_latents, c.latent_dim) * 0.02)
        self.time = TimestepEmbedding(c.latent_dim)
        self.ctx_proj = nn.Linear(c.context_dim, c.latent_dim)
        self.self_cond = nn.Sequential(RMSNorm(c.latent_dim), nn.Linear(c.latent_dim, c.latent_dim))
        nn.init.zeros_(self.self_cond[1].weight)
        nn.init.zeros_(self.self_cond[1].bias)
        self.blocks = nn.ModuleList(_RINBlock(c) for _ in range(c.num_blocks))
        self.norm_out = RMSNorm(c.interface_dim)
        self.patch_out = nn.Linear(c.interface_dim, patch_dim)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)
        self._prev_latents: torch.Tensor | None = None

    def reset_state(self) -> None:
        """Forget the latents kept for eval-time self-conditioning."""
        self._prev_latents = None

    def _run(self, x_t, t, context, context_mask, prev):
        c = self.config
        b, ch, h, w = x_t.shape
        x = self.patch_in(patchify(x_t, c.patch_size))
        if x.shape[1] != self.pos.shape[1]:
            raise ValueError(f"rin was built for {c.image_size}x{c.image_size} inputs, got {h}x{w}")
        x = x + self.pos
        z = self.latents.unsqueeze(0).expand(b, -1, -1)
        z = z + self.self_cond(prev)
        z = torch.cat([self.time(t)[:, None], z], dim=1)
        ctx = self.ctx_proj(context)
        for block in self.blocks:
            x, z = block(x, z, ctx, context_mask)
        v = unpatchify(self.patch_out(self.norm_out(x)), c.patch_size, ch, h, w)
        return v, z[:, 1:]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = x_t.shape[0]
        zeros = x_t.new_zeros(b, c.num_latents, c.latent_dim)
        if self.training:
            prev = zeros
            if c.self_cond_rate > 0:
                use = torch.rand(b, device=x_t.device) < c.self_cond_rate
                if bool(use.any()):
                    with torch.no_grad():
                        _, z = self._run(x_t, t, context, context_mask, zeros)
                    prev = torch.where(use[:, None, None], z.detach(), zeros)
            v, _ = self._run(x_t, t, context, context_mask, prev)
            return v
        prev = zeros
        kept = self._prev_latents
        if c.eval_self_cond and kept is not None and kept.shape[0] == b and kept.device == x_t.device:
            prev = kept.to(x_t.dtype)
        v, z = self._run(x_t, t, context, context_mask, prev)
        self._prev_latents = z.detach() if c.eval_self_cond else None
        return v

    def train(self, mode: bool = True):
        self._prev_latents = None
        return super().train(mode)


@hookimpl
def miro_register_backbones(register):
    register(RIN)
