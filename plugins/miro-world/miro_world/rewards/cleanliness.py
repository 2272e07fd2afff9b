"""``world_cleanliness``: absence of noise, from a robust noise-level estimate.

Immerkaer's 3x3 mask (zero on planes and ramps) applied to every channel at a fixed working resolution;
the noise std is the median absolute response / (0.6745 * 6) (the median ignores object edges). Score:
``-log(sigma + 0.002)``, higher = cleaner. JPEG blocking and specks raise it a little too. Image-only.
"""

from __future__ import annotations

__all__ = ["WorldCleanliness", "cleanliness"]

import torch

from miro_core import hookimpl

from .._imageops import noise_sigma, resize
from ._image_stat import ImageStatReward


def cleanliness(images: torch.Tensor, resolution: int = 32) -> torch.Tensor:
    """Cleanliness ``[B]`` of float images ``[B,3,H,W]`` in [0, 1]."""
    return -torch.log(noise_sigma(resize(images, resolution)) + 0.002)


class WorldCleanliness(ImageStatReward):
    """Negative log noise level (image-only)."""

    name = "world_cleanliness"
    version = "1"
    measures = 'absence of noise: -log of a median-based (Immerkaer) noise std estimate; image-only'
    compute = staticmethod(cleanliness)


@hookimpl
def miro_register_rewards(register):
    register(WorldCleanliness)
