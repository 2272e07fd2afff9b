"""Multi-reward classifier-free guidance (MIRO paper, eq. 3).

``v = v(x_t, c, s+) + w (v(x_t, c, s+) - v(x_t, c, s-))``: the positive branch asks for the target reward
levels ``s+`` (default all 1.0), the negative one for ``s-`` (default all 0.0). Both branches run as ONE
batched forward of size 2B. With ``interval=(a, b)`` guidance applies only while ``a <= t <= b``; outside
it the positive prediction alone is used (one forward of size B, unless the model keeps sampling state,
e.g. self-conditioning, whose batch must not change between steps).
"""

from __future__ import annotations

__all__ = ["MultiRewardCFG"]

from typing import Any

import torch

from miro_core import config, hookimpl
from miro_core.interfaces import Guidance
from miro_core.sampling import Cond


class MultiRewardCFG(Guidance):
    """Multi-reward CFG, v = v+ + w (v+ - v-), both branches in one 2B forward (paper eq. 3)."""

    name = "multi_reward_cfg"

    @config
    class Config:
        scale: float = 7.0
        interval: tuple[float, float] | None = None

    def active(self, t: torch.Tensor) -> bool:
        """Whether guidance applies at time ``t`` (all rows share one time while sampling)."""
        if self.config.interval is None:
            return True
        a, b = self.config.interval
        tv = float(t.reshape(-1)[0])
        return a <= tv <= b

    def prepare_negative(self, negative: Cond, empty_text: Any) -> Cond:
        """Hook for variants that change the negative branch once per sampling run (text dropping)."""
        return negative

    def branches(self, model_fn: Any, x_t: torch.Tensor, t: torch.Tensor, positive: Cond,
                 negative: Cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(v_pos, v_neg)`` from ONE batched forward of size 2B; ``v_neg`` is None outside the interval."""
        active = self.active(t)
        if not active and not getattr(model_fn, "stateful", False):
            return model_fn(x_t, t, positive), None
        n = x_t.shape[0]
        v = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat(positive, negative))
        return v[:n], (v[n:] if active else None)

    def combine(self, v_pos: torch.Tensor, v_neg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided velocity from the two branches (variants override this, not the forward)."""
        return v_pos + self.config.scale * (v_pos - v_neg)

    def __call__(self, model_fn: Any, x_t: torch.Tensor, t: torch.Tensor, positive: Cond, negative: Cond) -> torch.Tensor:
        v_pos, v_neg = self.branches(model_fn, x_t, t, positive, negative)
        return v_pos if v_neg is None else self.combine(v_pos, v_neg, t)


@hookimpl
def miro_register_guidance(register):
    register(MultiRewardCFG)
