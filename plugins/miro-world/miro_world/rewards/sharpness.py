"""``world_sharpness``: how sharp edges are, relative to their contrast, with noise discounted.

On the 3x3-median-filtered luminance at a fixed working resolution (default 32 px; the median removes
most pixel noise but keeps step edges): gradient energy ``|grad|^2`` minus the
energy i.i.d. noise of the estimated std would contribute (``sigma^2`` for central differences), divided by
the energy of the local contrast (max - min over 7x7 windows of the 3x3-mean-smoothed luminance). A blurred edge spreads the same contrast over
more pixels, so its gradient energy per unit contrast drops; a global contrast change cancels out; noise is
filtered and the remainder subtracted rather than mistaken for detail. Score: ``log(ratio + 1e-4)``, higher = sharper. Image-only.
"""

from __future__ import annotations

__all__ = ["WorldSharpness", "sharpness"]

import torch
import torch.nn.functional as F

from miro_core import hookimpl

from .._imageops import luminance, noise_sigma, resize
from ._image_stat import ImageStatReward


def _median3(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    cols = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)  # [B, C*9, H*W]
    return cols.view(b, c, 9, h * w).median(dim=2).values.view(b, c, h, w)


def sharpness(images: torch.Tensor, resolution: int = 32) -> torch.Tensor:
    """Sharpness ``[B]`` of float images ``[B,3,H,W]`` in [0, 1]."""
    lum = _median3(luminance(resize(images, resolution)))
    sigma = noise_sigma(lum)
    p = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    energy = (gx * gx + gy * gy).flatten(1).mean(dim=1)
    smooth = F.avg_pool2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # contrast, not noise
    local_max = F.max_pool2d(smooth, 7, stride=1, padding=3)
    local_min = -F.max_pool2d(-smooth, 7, stride=1, padding=3)
    contrast = ((local_max - local_min) ** 2).flatten(1).mean(dim=1)
    signal = (energy - sigma * sigma).clamp_min(0)
    return torch.log(signal / (contrast + 1e-6) + 1e-4)


class WorldSharpness(ImageStatReward):
    """Edge sharpness per unit contrast, noise-compensated (image-only)."""

    name = "world_sharpness"
    version = "2"
    measures = 'edge sharpness: gradient energy of the 3x3-median-filtered luma (minus the residual noise energy) per unit local contrast energy on the luminance, log scale; image-only'
    compute = staticmethod(sharpness)


@hookimpl
def miro_register_rewards(register):
    register(WorldSharpness)
