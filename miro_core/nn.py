"""Small network pieces shared by the reward conditioning, the loss weighting and backbones.

``FourierFeatures``: random Fourier features with stored (persistent) frequencies and phases,
``sqrt(2) * cos(x * f_i + phi_i)`` with ``f ~ 2 pi N(0, 1)`` and ``phi ~ 2 pi U(0, 1)`` drawn once at
construction (from the torch global RNG, so a seeded build is reproducible) and saved with the weights.

``ScalarEmbedder``: a scalar (diffusion time, reward level) -> ``FourierFeatures`` -> standardised over the
feature axis (``(x - mean) / std``, unbiased std) -> ``Linear -> SiLU -> Linear``. This is how the official MIRO
release embeds both the time and every reward level (random features instead of fixed sinusoids; the
standardisation makes the MLP input unit-scale whatever the frequencies).
"""

from __future__ import annotations

__all__ = ["FourierFeatures", "ScalarEmbedder", "LayerScale"]

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    """``x [B]`` -> ``sqrt(2) cos(x f + phi)`` ``[B, dim]`` (random ``f``, ``phi`` kept as buffers; float32)."""

    def __init__(self, dim: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * bandwidth * torch.randn(dim, dtype=torch.float32))
        self.register_buffer("phases", 2 * math.pi * torch.rand(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1).to(torch.float32)[:, None] * self.freqs.float()[None] + self.phases.float()
        return torch.cos(y) * math.sqrt(2.0)


class ScalarEmbedder(nn.Module):
    """``x [B]`` -> ``[B, out_dim]``: standardised random Fourier features, then ``Linear -> SiLU -> Linear``."""

    def __init__(self, fourier_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden = hidden_dim or out_dim
        self.fourier = FourierFeatures(fourier_dim)
        self.fc1 = nn.Linear(fourier_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fourier(x)
        f = (f - f.mean(dim=-1, keepdim=True)) / f.std(dim=-1, keepdim=True)
        return self.fc2(nn.functional.silu(self.fc1(f.to(self.fc1.weight.dtype))))


class LayerScale(nn.Module):
    """A learned per-channel gain ``x * gamma`` (Touvron et al. 2021), ``gamma`` initialised to ``init``."""

    def __init__(self, dim: int, init: float = 0.1):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
