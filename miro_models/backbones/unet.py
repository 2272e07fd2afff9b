"""``unet``: a compact text-conditioned U-Net (Ho et al. 2020 DDPM; Dhariwal & Nichol 2021 ADM; Rombach et
al. 2022 Stable Diffusion) for small images on CPU.

* conv stem (3x3) to ``base_channels``;
* encoder: ``len(channel_mult)`` levels, each ``num_res_blocks`` ResBlocks of width
  ``base_channels * channel_mult[i]``, then a stride-2 conv (except the last level); every output is kept
  as a skip connection;
* middle: ResBlock, attention block, ResBlock;
* decoder: mirror of the encoder with ``num_res_blocks + 1`` ResBlocks per level, each taking the
  concatenation of the current features and one skip; nearest-neighbour x2 upsampling + 3x3 conv;
* output: GroupNorm, SiLU, zero-initialised 3x3 conv (``v = 0`` at initialisation).

ResBlock (ADM's ``use_scale_shift_norm``): ``h = conv(SiLU(GN(x)))``;
``h = GN(h) * (1 + scale) + shift`` with ``(scale, shift) = Linear(SiLU(temb))`` (FiLM / adaGN);
``h = conv(dropout(SiLU(h)))`` (zero-initialised); ``x = skip(x) + h`` (1x1 conv when the width changes).

Attention block, at every feature map whose side is in ``attention_resolutions`` (and in the middle):
pixels as tokens, ``x += SelfAttn(RMSNorm(x))``; ``x += CrossAttn(RMSNorm(x), RMSNorm(context), mask)``
(QK-norm, boolean key mask, output projections zero-initialised). A sample whose context mask is all
False gets a zero cross-attention update (no NaN). GroupNorm and RMSNorm are per sample (no BatchNorm), so
batch elements are independent.
"""

from __future__ import annotations

__all__ = ["UNet"]

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from miro_core import Backbone, ConfigError, config, hookimpl

from ._layers import Attention, RMSNorm, TimestepEmbedding


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(channels, groups)`` groups (so any width works)."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _AttnBlock(nn.Module):
    """Self-attention over pixels, then masked cross-attention to the context; pre-RMSNorm, residual."""

    def __init__(self, ch: int, context_dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.norm1 = RMSNorm(ch)
        self.attn = Attention(ch, heads, qk_norm=qk_norm, zero_init=True)
        self.norm2 = RMSNorm(ch)
        self.cross = Attention(ch, heads, kv_dim=context_dim, qk_norm=qk_norm, zero_init=True)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tok = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tok = tok + self.attn(self.norm1(tok))
        tok = tok + self.cross(self.norm2(tok), ctx, mask)
        return tok.transpose(1, 2).reshape(b, c, h, w)


class _Level(nn.Module):
    """One ResBlock (+ optional attention block)."""

    def __init__(self, res: _ResBlock, attn: _AttnBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x, temb, ctx, mask):
        x = self.res(x, temb)
        return self.attn(x, ctx, mask) if self.attn is not None else x


class UNet(Backbone):
    """Text-conditioned U-Net: ResBlocks with FiLM timestep conditioning (GroupNorm + SiLU + conv), stride-2
    down / nearest up-sampling with skip connections, self- + masked cross-attention at chosen resolutions."""

    name = "unet"

    @config
    class Config:
        in_channels: int = 3
        image_size: int = 32
        context_dim: int = 256
        #: Pixel-unshuffle the input by this factor before the stem conv (and pixel-shuffle the output): the
        #: U-Net then runs on ``image_size / patch_size`` feature maps (Hoogeboom et al. 2023, *simple
        #: diffusion*); 1 = a classic pixel-space U-Net.
        patch_size: int = 2
        base_channels: int = 32
        channel_mult: tuple[int, ...] = (1, 2, 2)
        num_res_blocks: int = 1
        #: Feature-map sides (after patching: 16, 8, 4 for a 32 input with patch 2 and three levels) where an
        #: attention block follows each ResBlock.
        attention_resolutions: tuple[int, ...] = (8,)
        #: Attention block in the middle (lowest resolution), whatever ``attention_resolutions`` says.
        mid_attention: bool = True
        heads: int = 4
        qk_norm: bool = True
        #: GroupNorm groups (``gcd(channels, num_groups)`` groups are used per layer).
        num_groups: int = 8
        dropout: float = 0.0
        #: Width of the timestep embedding; 0 = ``4 * base_channels``.
        time_dim: int = 0

    #: Named option sets. ``small``: the CPU default (1.4 M parameters at 3x32x32, feature maps 16/8/4).
    #: ``pixel``: a classic pixel-space U-Net (no patching, 64 channels, mult 1-2-2, 2 blocks, attention at
    #: 16 and 8; 8.4 M parameters, ~18x slower on CPU). ``ddpm_cifar``: the DDPM CIFAR-10 layout (128 channels, mult 1-2-2-2,
    #: 2 blocks, attention at 16) with cross-attention added.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {},
        "pixel": {"patch_size": 1, "base_channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
                  "attention_resolutions": (16, 8)},
        "ddpm_cifar": {"patch_size": 1, "base_channels": 128, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                       "attention_resolutions": (16,), "heads": 4, "num_groups": 32, "dropout": 0.1},
    }

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if not c.channel_mult or any(m < 1 for m in c.channel_mult):
            raise ConfigError(f"channel_mult must be a non-empty tuple of positive integers, got {c.channel_mult}")
        if c.num_res_blocks < 1 or c.base_channels < 1:
            raise ConfigError("num_res_blocks and base_channels must be >= 1")
        if c.patch_size < 1:
            raise ConfigError(f"patch_size must be >= 1, got {c.patch_size}")
        factor = c.patch_size * 2 ** (len(c.channel_mult) - 1)
        if c.image_size % factor:
            raise ConfigError(f"image_size {c.image_size} is not divisible by {factor} "
                             f"(patch_size * 2 ** (len(channel_mult) - 1) for channel_mult={c.channel_mult})")
        if not 0.0 <= c.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {c.dropout}")
        temb_dim = c.time_dim or 4 * c.base_channels
        g = c.num_groups

        def attn(ch: int, side: int) -> _AttnBlock | None:
            return _AttnBlock(ch, c.context_dim, c.heads, c.qk_norm) if side in c.attention_resolutions else None

        self.time = TimestepEmbedding(temb_dim)
        self.ctx_norm = RMSNorm(c.context_dim)
        self.stem = nn.Conv2d(c.in_channels * c.patch_size**2, c.base_channels, 3, padding=1)

        ch, side = c.base_channels, c.image_size // c.patch_size
        skips = [ch]
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.channel_mult):
            out = c.base_channels * mult
            for _ in range(c.num_res_blocks):
                self.down.append(_Level(_ResBlock(ch, out, temb_dim, g, c.dropout), attn(out, side)))
                ch = out
                skips.append(ch)
            if i < len(c.channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                side //= 2
                skips.append(ch)

        self.mid1 = _ResBlock(ch, ch, temb_dim, g, c.dropout)
        self.mid_attn = _AttnBlock(ch, c.context_dim, c.heads, c.qk_norm) if c.mid_attention else None
        self.mid2 = _ResBlock(ch, ch, temb_dim, g, c.dropout)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.channel_mult))):
            out = c.base_channels * mult
            for _ in range(c.num_res_blocks + 1):
                self.up.append(_Level(_ResBlock(ch + skips.pop(), out, temb_dim, g, c.dropout), attn(out, side)))
                ch = out
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
                side *= 2
        assert not skips and side == c.image_size // c.patch_size

        self.norm_out = _norm(ch, g)
        self.conv_out = _zero(nn.Conv2d(ch, c.in_channels * c.patch_size**2, 3, padding=1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        h, w = x_t.shape[-2:]
        if (h, w) != (c.image_size, c.image_size):
            raise ValueError(f"unet was built for {c.image_size}x{c.image_size} inputs, got {h}x{w}")
        temb = self.time(t)
        ctx = self.ctx_norm(context)
        # channels_last: faster convolutions on CPU (oneDNN) and GPU, and the attention blocks' pixel tokens
        # [B, HW, C] become views instead of copies.
        x = x_t.contiguous(memory_format=torch.channels_last)
        if c.patch_size > 1:
            x = F.pixel_unshuffle(x, c.patch_size)
        x = self.stem(x)
        hs = [x]
        for layer in self.down:
            x = layer(x, temb, ctx, context_mask) if isinstance(layer, _Level) else layer(x)
            hs.append(x)
        x = self.mid1(x, temb)
        if self.mid_attn is not None:
            x = self.mid_attn(x, ctx, context_mask)
        x = self.mid2(x, temb)
        for layer in self.up:
            if isinstance(layer, _Level):
                x = layer(torch.cat([x, hs.pop()], dim=1), temb, ctx, context_mask)
            else:
                x = layer(x)
        v = self.conv_out(F.silu(self.norm_out(x)))
        if c.patch_size > 1:
            v = F.pixel_shuffle(v, c.patch_size)
        return v.contiguous()


@hookimpl
def miro_register_backbones(register):
    register(UNet)
