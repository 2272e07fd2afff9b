"""``rin``: the TextRIN of the official MIRO release (Recurrent Interface Networks, Jabri et al. 2023, with the
text/reward cross-attention of CAD, Dufour et al. 2024), with its preconditioning and self-conditioning.

Conventions: our time ``t`` (1 = noise) is the release's ``gamma = 1 - t`` (1 = data); the output is the
velocity ``eps - x``, which is the release's ``n - x0`` target. With ``precondition`` (the release's
``FlowPrecond``) the network sees ``c_in * x_t`` with ``c_in = 1 / sqrt((sigma_data gamma)^2 + (1 - gamma)^2)``
and its output is multiplied by ``c_out = sqrt(1 + sigma_data^2)``.

Forward pass:

1. *patches*: the input is cut into ``p x p`` patches with channels varying fastest (``(p1 p2 c)``), embedded by
   ``Linear -> RMSNorm``, plus a learned position per patch: the *interface* tokens (width ``interface_dim``).
2. *time*: ``e = ScalarEmbedder(gamma)`` (standardised random Fourier features + MLP, :mod:`miro_core.nn`) is
   added to every one of the ``num_latents`` learned latents AND prepended to the context as its first token.
3. *self-conditioning*: ``z += LN2(prev + MLP(LN1(prev)))`` (GELU MLP, ``LN2`` zero-initialised) where ``prev``
   are the final latents of the previous call (zeros on the first sampling step, so the path always runs).
4. ``num_blocks`` blocks, each: *cond* (latents cross-attend to the masked context, + SwiGLU), *read* (latents
   cross-attend to the interface, + SwiGLU), ``layers_per_block`` *compute* self-attention layers over the
   latents (+ SwiGLU), *write* (the interface cross-attends to the latents, + SwiGLU).
5. ``RMSNorm -> Linear`` back to patches.

Every attention is pre-norm with RMSNorm on the queries only (no key/value norm), attends at width
``min(query width, key width)``, has ``q``/``kv`` (or packed ``qkv``) projections without bias, an output
projection with bias and LayerNorm QK-norm over each head. SwiGLU's hidden width is ``int(2/3 * r * d)``
rounded up to a multiple of 256, one packed input projection, the gate is its second half.

Training-time self-conditioning: a sample gets previous latents with probability ``self_cond_rate``: a first
forward under ``no_grad`` from zero previous latents computes them at the same ``(x_t, t)``. Which samples do is
decided by the ``self_cond`` uniforms the training loop draws from its seeded generator (``train_uniforms``), so
DDP ranks draw different samples and a resumed run draws exactly what the uninterrupted one did. In eval the
final latents of each call are kept and reused by the next call with the same batch size (consecutive solver
steps; both guidance branches are one batch, so each branch keeps its own); :meth:`RIN.reset_state` clears them.
"""

from __future__ import annotations

__all__ = ["RIN"]

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from miro_core import Backbone, ConfigError, config, hookimpl
from miro_core.nn import ScalarEmbedder

from ._layers import RMSNorm


def _swiglu_hidden(dim: int, ratio: float) -> int:
    h = int(ratio * dim * 2 / 3)
    return h if h % 256 == 0 else h + 256 - h % 256


class _SwiGLU(nn.Module):
    """``w3(a * SiLU(g))`` with ``[a, g] = w12(x)`` (the gate is the second half)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = _swiglu_hidden(dim, ratio)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.w12(x).chunk(2, dim=-1)
        return self.w3(a * F.silu(g))


class _Attention(nn.Module):
    """Multi-head attention at width ``width`` with LayerNorm QK-norm; self-attention packs ``qkv``."""

    def __init__(self, q_dim: int, kv_dim: int | None, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"rin: attention width {width} is not divisible by {heads} heads; change the heads.")
        self.heads = heads
        head_dim = width // heads
        if kv_dim is None:
            self.qkv = nn.Linear(q_dim, 3 * width, bias=False)
        else:
            self.q = nn.Linear(q_dim, width, bias=False)
            self.kv = nn.Linear(kv_dim, 2 * width, bias=False)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.out = nn.Linear(width, q_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, src: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if src is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q = self.q(x)
            k, v = self.kv(src).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


class _Block(nn.Module):
    """Pre-norm attention (self when ``kv_dim`` is None, else cross) + SwiGLU, both residual."""

    def __init__(self, dim: int, kv_dim: int | None, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = RMSNorm(dim)
        self.attn = _Attention(dim, kv_dim, min(dim, kv_dim or dim), heads)
        self.norm_ffn = RMSNorm(dim)
        self.ffn = _SwiGLU(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, src: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), src, mask)
        return x + self.ffn(self.norm_ffn(x))


class _RINBlock(nn.Module):
    def __init__(self, c: Any):
        super().__init__()
        d, di = c.latent_dim, c.interface_dim
        self.cond = _Block(d, d, c.interface_heads, c.mlp_ratio)
        self.read = _Block(d, di, c.interface_heads, c.mlp_ratio)
        self.compute = nn.ModuleList(_Block(d, None, c.heads, c.mlp_ratio) for _ in range(c.layers_per_block))
        self.write = _Block(di, d, c.interface_heads, c.interface_mlp_ratio)

    def forward(self, x, z, ctx, mask):
        z = self.cond(z, ctx, mask)
        z = self.read(z, x)
        for layer in self.compute:
            z = layer(z)
        return self.write(x, z), z


class _SelfCond(nn.Module):
    """``LN2(prev + MLP(LN1(prev)))`` with ``LN2`` initialised to zero (a no-op at initialisation)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, int(ratio * dim))
        self.fc2 = nn.Linear(int(ratio * dim), dim)
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, prev: torch.Tensor) -> torch.Tensor:
        return self.norm_out(prev + self.fc2(F.gelu(self.fc1(self.norm_in(prev)))))


class RIN(Backbone):
    """TextRIN of the official MIRO release: interface/latent read-compute-write blocks with a context
    cross-attention first in each block, time added to the latents and prepended to the context, latent
    self-conditioning, c_in / c_out preconditioning."""

    name = "rin"
    #: Per-sample uniforms in [0, 1) the training loop draws from its seeded generator and passes as keywords.
    train_uniforms: ClassVar[tuple[str, ...]] = ("self_cond",)
    #: The conditioning this backbone was designed with (used unless model.conditioning_impl says otherwise).
    default_conditioning: ClassVar[str] = "miro_core.cad_conditioning:CADConditioning"
    #: Set by the training loop under FSDP (``parallel = "fsdp"``): every rank must call the sharded blocks the
    #: same number of times, so the self-conditioning pass runs on every training step, also when none of this
    #: rank's samples is self-conditioned (its latents are then multiplied by 0: the same values as no pass).
    uniform_control_flow: bool = False

    @config
    class Config:
        in_channels: int = 3
        image_size: int = 32
        context_dim: int = 256
        patch_size: int = 2
        interface_dim: int = 128
        latent_dim: int = 256
        num_latents: int = 64
        num_blocks: int = 2
        layers_per_block: int = 2
        #: Heads of the compute (latent self-attention) layers.
        heads: int = 8
        #: Heads of the cond / read / write cross-attentions.
        interface_heads: int = 4
        mlp_ratio: float = 4.0
        interface_mlp_ratio: float = 4.0
        self_conditioning: bool = True
        self_cond_rate: float = 0.9
        #: Reuse the previous call's latents in eval (when the batch size matches).
        eval_self_cond: bool = True
        #: c_in / c_out preconditioning of the release (``FlowPrecond`` with noise-driven normalisation).
        precondition: bool = True
        sigma_data: float = 0.5

    #: Named option sets. ``paper``: the released main checkpoint (4x32x32 SDXL-VAE latents, patch 2, 256 latents
    #: x 1024, 4 blocks x 4 compute layers, interface 512, 16 read/write heads, 32 compute heads, context 1024).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {},
        "cpu": {"interface_dim": 128, "latent_dim": 256, "num_latents": 64, "num_blocks": 2, "layers_per_block": 2,
                "heads": 8, "interface_heads": 4},
        "paper": {"in_channels": 4, "image_size": 32, "patch_size": 2, "interface_dim": 512, "latent_dim": 1024,
                  "num_latents": 256, "num_blocks": 4, "layers_per_block": 4, "heads": 32, "interface_heads": 16,
                  "mlp_ratio": 4.0, "interface_mlp_ratio": 4.0, "context_dim": 1024},
    }

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if c.image_size % c.patch_size:
            raise ConfigError(f"rin: image_size {c.image_size} is not divisible by patch_size {c.patch_size}; choose a "
                              "patch_size that divides image_size")
        if not 0.0 <= c.self_cond_rate <= 1.0:
            raise ConfigError(f"rin: self_cond_rate must be in [0, 1], got {c.self_cond_rate}")
        if c.latent_dim % 4:
            raise ConfigError(f"rin: latent_dim must be a multiple of 4 (the time features are latent_dim / 4), got "
                              f"{c.latent_dim}")
        n_patches = (c.image_size // c.patch_size) ** 2
        patch_dim = c.in_channels * c.patch_size**2
        self.patch_in = nn.Linear(patch_dim, c.interface_dim)
        self.patch_norm = RMSNorm(c.interface_dim)
        self.pos = nn.Parameter(torch.empty(n_patches, c.interface_dim))
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.latent_dim))
        self.time = ScalarEmbedder(c.latent_dim // 4, c.latent_dim)
        self.ctx_proj = nn.Identity() if c.context_dim == c.latent_dim else nn.Linear(c.context_dim, c.latent_dim)
        self.self_cond = _SelfCond(c.latent_dim, c.mlp_ratio) if c.self_conditioning else None
        self.blocks = nn.ModuleList(_RINBlock(c) for _ in range(c.num_blocks))
        self.norm_out = RMSNorm(c.interface_dim)
        self.patch_out = nn.Linear(c.interface_dim, patch_dim)
        # the release's initialisation: Xavier-uniform linear weights, zero biases, truncated-normal embeddings
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.pos, self.latents):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        if self.self_cond is not None:
            nn.init.zeros_(self.self_cond.norm_out.weight)
            nn.init.zeros_(self.self_cond.norm_out.bias)
        self._prev_latents: torch.Tensor | None = None

    def reset_state(self) -> None:
        """Forget the latents kept for eval-time self-conditioning."""
        self._prev_latents = None

    # -- patches ----------------------------------------------------------------------------------------
    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, h, w = x.shape
        p = self.config.patch_size
        x = x.view(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # b, h, w, p1, p2, c
        return x.reshape(b, (h // p) * (w // p), p * p * ch)

    def _unpatchify(self, tokens: torch.Tensor, ch: int, h: int, w: int) -> torch.Tensor:
        p = self.config.patch_size
        b = tokens.shape[0]
        x = tokens.view(b, h // p, w // p, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, ch, h, w)

    # -- forward ----------------------------------------------------------------------------------------
    def _run(self, x_in: torch.Tensor, gamma: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
             prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        b, ch, h, w = x_in.shape
        x = self.patch_in(self._patchify(x_in))
        if x.shape[1] != self.pos.shape[0]:
            raise ValueError(f"rin was built for {c.image_size}x{c.image_size} inputs, got {h}x{w}")
        x = self.patch_norm(x) + self.pos
        e = self.time(gamma)
        z = self.latents.unsqueeze(0) + e[:, None]
        if self.self_cond is not None:
            if prev is None:
                prev = x.new_zeros(b, c.num_latents, c.latent_dim)
            z = z + self.self_cond(prev.to(z.dtype))
        ctx = torch.cat([e[:, None].to(context.dtype), self.ctx_proj(context)], dim=1)
        mask = torch.cat([context_mask.new_ones(b, 1), context_mask.to(torch.bool)], dim=1)
        for block in self.blocks:
            x, z = block(x, z, ctx, mask)
        return self._unpatchify(self.patch_out(self.norm_out(x)), ch, h, w), z

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                *, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``self_cond``: training only, per-sample uniforms in [0, 1); a sample is self-conditioned when its
        uniform is below ``self_cond_rate`` (drawn from the torch global RNG when not given)."""
        c = self.config
        b = x_t.shape[0]
        gamma = (1.0 - t.reshape(-1).float()).expand(b) if t.numel() == 1 else 1.0 - t.reshape(-1).float()
        if c.precondition:
            c_in = torch.rsqrt((gamma * c.sigma_data) ** 2 + (1.0 - gamma) ** 2)
            x_in = x_t * c_in.to(x_t.dtype).view(-1, 1, 1, 1)
            c_out = math.sqrt(1.0 + c.sigma_data**2)
        else:
            x_in, c_out = x_t, 1.0
        prev = None
        if self.training:
            if self.self_cond is not None and c.self_cond_rate > 0:
                u = self_cond if self_cond is not None else torch.rand(b, device=x_t.device)
                use = u.to(x_t.device).reshape(-1) < c.self_cond_rate
                if self.uniform_control_flow or bool(use.any()):
                    with torch.no_grad():
                        _, z = self._run(x_in, gamma, context, context_mask, None)
                    prev = z.detach() * use[:, None, None].to(z.dtype)
            v, _ = self._run(x_in, gamma, context, context_mask, prev)
            return v * c_out
        kept = self._prev_latents
        if c.eval_self_cond and kept is not None and kept.shape[0] == b and kept.device == x_t.device:
            prev = kept
        v, z = self._run(x_in, gamma, context, context_mask, prev)
        self._prev_latents = z.detach() if (c.eval_self_cond and self.self_cond is not None) else None
        return v * c_out

    def train(self, mode: bool = True):
        self._prev_latents = None
        return super().train(mode)


@hookimpl
def miro_register_backbones(register):
    register(RIN)
