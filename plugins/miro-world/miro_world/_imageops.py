"""Small batched torch image operations shared by the world rewards (infrastructure)."""

from __future__ import annotations

__all__ = ["resize", "luminance", "noise_sigma", "check_images"]

import torch
import torch.nn.functional as F

from miro_core import MiroError

# Immerkaer's noise-estimation mask: zero response to planes and ramps; std of the response to i.i.d.
# noise of std s is 6 s (sqrt of the sum of squared weights).
_NOISE_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def check_images(images: torch.Tensor, prompts, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MiroError(f"{name}: expected images as a float tensor [B, 3, H, W] in [0, 1], got {shape}.")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise MiroError(f"{name}: got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image.")
    return images.float().clamp(0, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[B,3,H,W]`` to ``size x size`` (area-averaging when shrinking, bilinear when growing)."""
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[-2] >= size and images.shape[-1] >= size:
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``[B,1,H,W]``."""
    w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def noise_sigma(images: torch.Tensor) -> torch.Tensor:
    """Robust per-image noise std ``[B]``: median absolute Immerkaer residual over channels and pixels.

    The median ignores the few pixels on object edges, so clean renders give ~0 whatever their content.
    """
    b, c, h, w = images.shape
    mask = _NOISE_MASK.to(images).view(1, 1, 3, 3)
    resp = F.conv2d(images.reshape(b * c, 1, h, w), mask)  # valid convolution
    resp = resp.reshape(b, -1).abs()
    return resp.median(dim=1).values / (0.6745 * 6.0)
