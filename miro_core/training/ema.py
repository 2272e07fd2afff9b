"""Exponential moving average of model weights (float32 shadow copy)."""

from __future__ import annotations

__all__ = ["EMA"]

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after every optimizer step.

    With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` (n = updates so far), so short runs
    get a useful average. Buffers are copied, not averaged. ``state_dict()`` has the model's keys, so it
    loads directly into a fresh model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        live = [params[k].detach().float() for k in keys]
        torch._foreach_lerp_(shadow, live, 1.0 - d)
        self.num_updates += 1

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full model state dict: EMA parameters (in the model's dtypes) + the model's buffers."""
        out = {}
        for k, v in model.state_dict().items():
            out[k] = self.shadow[k].to(v.dtype) if k in self.shadow else v.detach()
        return out

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            p.copy_(self.shadow[k].to(p.dtype))

    def load_shadow(self, state: dict[str, torch.Tensor], device: torch.device | str | None = None) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k] = state[k].float().to(device or self.shadow[k].device).clone()
