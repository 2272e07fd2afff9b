"""Hasler & Suesstrunk colourfulness (2003), an image-only reward.

D. Hasler and S. Suesstrunk, "Measuring colourfulness in natural images", SPIE Human Vision and
Electronic Imaging VIII, 2003 (the metric M^(3)). On 8-bit RGB values:

    rg = R - G,   yb = (R + G) / 2 - B
    M  = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)

``std`` is the population standard deviation over all pixels. Grey images score 0; saturated, varied
colours score high (the paper's "extremely colourful" starts around 109).
"""

from __future__ import annotations

__all__ = ["ColorfulnessReward"]

from collections.abc import Sequence

import attrs
import torch

import miro_core


class ColorfulnessReward(miro_core.Reward):
    """Hasler-Suesstrunk colourfulness of the image (ignores the caption); 0 for grey images."""

    name = "hasler_colorfulness"
    version = "1"
    uses_text = False

    @miro_core.config
    class Config:
        #: Values of a full-intensity channel; 255 reproduces the paper's scale.
        scale: float = attrs.field(default=255.0, validator=attrs.validators.gt(0.0))
        #: Weight of the mean term (0.3 in the paper).
        mean_weight: float = attrs.field(default=0.3, validator=attrs.validators.ge(0.0))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise miro_core.MiroError(
                f"{self.name}: expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}."
            )
        if len(prompts) != images.shape[0]:
            raise miro_core.MiroError(
                f"{self.name}: got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image."
            )
        x = images.detach().to(torch.float64) * self.config.scale
        r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
        rg = r - g
        yb = 0.5 * (r + g) - b
        std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
        mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
        return (std + self.config.mean_weight * mean).to(torch.float32)

    def metadata(self):
        meta = super().metadata()
        meta.update({"model_id": None, "reference": "Hasler & Suesstrunk 2003, M^(3)"})
        return meta
