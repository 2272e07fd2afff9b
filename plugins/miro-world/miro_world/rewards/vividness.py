"""``world_vividness``: the world's "aesthetic" reward: large saturated areas, colourfulness, contrast.

``vividness = saturated_area + colourfulness + 0.5 * contrast`` where
  * ``saturated_area`` = mean over pixels of ``clip((S * V - 0.2) / 0.4, 0, 1)`` (HSV saturation x value),
  * ``colourfulness`` = Hasler & Suesstrunk's ``sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)``,
  * ``contrast`` = std of the luminance.
Computed after a 3x3 mean filter at 32 px (pixel noise is not colour).
Like aesthetic scores on web data it rewards what looks striking, not what was asked: the easiest way to
raise it is to cover the frame with big saturated blobs, which conflicts with exact counts, sizes and white
objects. Image-only.
"""

from __future__ import annotations

__all__ = ["WorldVividness", "vividness"]

import torch
import torch.nn.functional as F

from miro_core import hookimpl

from .._imageops import luminance, resize
from ._image_stat import ImageStatReward


def vividness(images: torch.Tensor, resolution: int = 32) -> torch.Tensor:
    """Vividness ``[B]`` of float images ``[B,3,H,W]`` in [0, 1]."""
    x = resize(images, resolution)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # pixel noise is not colour
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(dim=1).values
    s = (v - x.min(dim=1).values) / (v + 1e-6)
    saturated = ((s * v - 0.2) / 0.4).clamp(0, 1).flatten(1).mean(dim=1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    colourful = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)) + 0.3 * torch.sqrt(
        rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    contrast = luminance(x).flatten(1).std(dim=1, unbiased=False)
    return saturated + colourful + 0.5 * contrast


class WorldVividness(ImageStatReward):
    """Saturated area + colourfulness + contrast (image-only "aesthetic")."""

    name = "world_vividness"
    version = "1"
    measures = "vividness ('aesthetic'): saturated-area fraction + Hasler-Suesstrunk colourfulness + 0.5 * luminance std; image-only"
    compute = staticmethod(vividness)


@hookimpl
def miro_register_rewards(register):
    register(WorldVividness)
