"""No guidance: the positive (conditional) prediction alone, one forward of size B per step."""

from __future__ import annotations

__all__ = ["NoGuidance"]

from typing import Any

import torch

from miro_core import hookimpl
from miro_core.interfaces import Guidance


class NoGuidance(Guidance):
    """No guidance: v = v(x_t, c, s+)."""

    name = "none"

    def __call__(self, model_fn: Any, x_t: torch.Tensor, t: torch.Tensor, positive: Any, negative: Any) -> torch.Tensor:
        return model_fn(x_t, t, positive)


@hookimpl
def miro_register_guidance(register):
    register(NoGuidance)
