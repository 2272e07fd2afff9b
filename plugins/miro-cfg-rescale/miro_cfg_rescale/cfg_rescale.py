"""``cfg_rescale``: multi-reward CFG with the guided velocity rescaled to the spread of the positive one.

Lin, Liu, Li & Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed" (WACV 2024), section 3.4:
a large guidance weight inflates the magnitude of the prediction, which over-exposes and over-saturates the
images; rescaling the guided prediction to the standard deviation of the conditional one, and blending with the
plain guided one, removes that while keeping the guidance direction. Here on MIRO's multi-reward guidance
(paper eq. 3) and on velocities, per sample:

    v_cfg = v(s+) + w (v(s+) - v(s-))
    v_rs  = v_cfg * std(v(s+)) / std(v_cfg)            std over all non-batch dimensions
    v     = phi * v_rs + (1 - phi) * v_cfg

``phi = 0`` is plain multi-reward CFG (``multi_reward_cfg``); Lin et al. use ``phi = 0.7``. It subclasses MIRO's
``MultiRewardCFG`` and overrides only ``combine``: the two branches, the one batched 2B forward and ``interval =
(a, b)`` (guidance only for ``a <= t <= b``, as ``miro sample --guidance-interval``; outside it the positive
prediction alone) are MIRO's own.
"""

from __future__ import annotations

__all__ = ["CfgRescaleGuidance"]

import attrs
import torch

import miro_core
from miro_models.guidance.multi_reward_cfg import MultiRewardCFG


def _interval(value):
    if value is None:
        return None
    a, b = (float(v) for v in value)
    if not 0.0 <= a <= b <= 1.0:
        raise miro_core.ConfigError(f"cfg_rescale: interval must satisfy 0 <= a <= b <= 1 (got {value}).")
    return (a, b)


class CfgRescaleGuidance(MultiRewardCFG):
    """Multi-reward CFG rescaled to the std of the positive prediction (Lin et al. 2024), blended by phi."""

    name = "cfg_rescale"

    @miro_core.config
    class Config:
        #: guidance weight w (``miro sample --guidance`` sets it)
        scale: float = attrs.field(default=7.0, validator=attrs.validators.ge(0.0))
        #: share of the rescaled prediction, 0 = plain CFG, 1 = fully rescaled
        phi: float = attrs.field(default=0.7, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
        #: guide only for t in [a, b] (None: always)
        interval: tuple[float, float] | None = attrs.field(default=None, converter=_interval)
        #: floor on std(v_cfg), so an all-zero guided prediction does not divide by zero
        eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0.0))

    def combine(self, v_pos: torch.Tensor, v_neg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cfg = super().combine(v_pos, v_neg, t)
        if self.config.phi == 0.0:
            return v_cfg
        dims = tuple(range(1, v_pos.ndim))
        std_pos = v_pos.float().std(dim=dims, keepdim=True, unbiased=False)
        std_cfg = v_cfg.float().std(dim=dims, keepdim=True, unbiased=False).clamp_min(self.config.eps)
        v_rs = v_cfg * (std_pos / std_cfg).to(v_cfg.dtype)
        return self.config.phi * v_rs + (1.0 - self.config.phi) * v_cfg
