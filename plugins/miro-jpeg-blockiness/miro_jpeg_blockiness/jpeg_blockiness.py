"""``jpeg_blockiness``: a no-reference measure of JPEG block artefacts (image-only; ignores the caption).

JPEG codes 8x8 blocks independently; at low quality the block borders show as steps in the luminance on a
fixed grid. Following the block-boundary / in-block difference ratio of Wang, Bovik & Evans ("Blind measurement
of blocking artifacts in images", ICIP 2000) in its simplest form, on the BT.601 luma Y (0..255):

    d_h(i, j) = |Y(i, j+1) - Y(i, j)|,  d_v(i, j) = |Y(i+1, j) - Y(i, j)|
    B = mean of d over the block borders (j + 1 a multiple of block_size for d_h, i + 1 for d_v)
    N = mean of d everywhere else
    score = -log((B + eps) / (N + eps))

An image without a grid scores about 0 (borders look like the rest), a blocky image scores below 0 (heavily
compressed JPEG: about -1 and lower), a flat image 0. Higher is better, as for every MIRO reward. ``eps`` (in
8-bit levels) keeps nearly flat images from producing huge ratios out of noise. The grid starts at the top-left
pixel, as in a decoded JPEG: an image resized or cropped after compression loses the alignment and the measure
with it. A side of at most ``block_size`` pixels has no interior border and is left out; an image with no border at
all scores NaN (recorded as a failure, not as 0).
"""

from __future__ import annotations

__all__ = ["JpegBlockinessReward", "blockiness_ratio"]

from collections.abc import Sequence

import attrs
import torch

import miro_core


def blockiness_ratio(y: torch.Tensor, block: int = 8, eps: float = 1.0) -> torch.Tensor:
    """``(B + eps) / (N + eps)`` per image of luma ``y`` [B, H, W] in 8-bit units; NaN where no border exists."""
    y = y.to(torch.float64)
    on_sum = off_sum = y.new_zeros(y.shape[0])
    on_n = off_n = 0
    # horizontal neighbours [B, H, W-1], then vertical ones transposed to [B, W, H-1]: differences on the last axis
    for d in ((y[:, :, 1:] - y[:, :, :-1]).abs(), (y[:, 1:, :] - y[:, :-1, :]).abs().transpose(1, 2)):
        border = (torch.arange(d.shape[-1], device=d.device) + 1) % block == 0  # between pixel k*block-1 and k*block
        if not border.any():  # this side is not longer than one block: no interior border
            continue
        on_sum = on_sum + d[..., border].sum(dim=(1, 2))
        off_sum = off_sum + d[..., ~border].sum(dim=(1, 2))
        on_n += d.shape[1] * int(border.sum())
        off_n += d.shape[1] * int((~border).sum())
    if on_n == 0:
        return torch.full_like(on_sum, float("nan"))
    return (on_sum / on_n + eps) / (off_sum / max(off_n, 1) + eps)


class JpegBlockinessReward(miro_core.Reward):
    """JPEG block artefacts on the 8x8 grid: -log(border / in-block luma differences); 0 = none, < 0 = blocky."""

    name = "jpeg_blockiness"
    version = "1"
    uses_text = False

    @miro_core.config
    class Config:
        #: the coding block size (8 for JPEG; 16 for the macroblocks of some video codecs)
        block_size: int = attrs.field(default=8, validator=attrs.validators.ge(2))
        #: stabiliser in 8-bit luma levels (flat images score 0 instead of a ratio of two tiny numbers)
        eps: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise miro_core.MiroError(
                f"{self.name}: expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}."
            )
        if len(prompts) != images.shape[0]:
            raise miro_core.MiroError(
                f"{self.name}: got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image."
            )
        x = images.detach().to(torch.float64).clamp(0, 1) * 255.0
        y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        return (-torch.log(blockiness_ratio(y, self.config.block_size, self.config.eps))).to(torch.float32)

    def metadata(self):
        meta = super().metadata()
        meta.update({"model_id": None, "reference": "Wang, Bovik & Evans 2000 (border / in-block difference ratio)"})
        return meta
