"""LAMB (You et al., 2020) as the official MIRO recipe uses it: Adam moments with bias correction, L2 weight
decay added to the Adam step (coupled), and a per-tensor trust ratio ``||w|| / ||step||`` on the groups that ask
for it (``trust_ratio``; default: the groups with weight decay, i.e. not on biases and norms)."""

from __future__ import annotations

__all__ = ["Lamb"]

import torch
from torch.optim import Optimizer


class Lamb(Optimizer):
    """``p -= lr * r * (m_hat / (sqrt(v_hat) + eps) + wd * p)`` with ``r = ||p|| / ||step||`` where the group's
    ``trust_ratio`` is true (default: ``weight_decay > 0``), else ``r = 1`` (Adam with L2)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: invalid lr {lr}, eps {eps} or betas {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            adapt = group.get("trust_ratio", wd > 0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                update = (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + group["eps"])
                if wd:
                    update.add_(p.float(), alpha=wd)
                if adapt:
                    w_norm, u_norm = p.float().norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    p.add_((update * (-group["lr"] * trust)).to(p.dtype))  # (lr * r) first, as the release
                else:
                    p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss
