"""Rectified flow matching: time sampling, interpolation, target, loss, and ODE solvers.

Convention (DESIGN.md section 1): ``t = 0`` is data, ``t = 1`` is noise;
``x_t = (1 - t) x + t eps``; the regression target is ``v* = eps - x``; sampling integrates
``dx/dt = v(x, t)`` from ``t = 1`` down to ``t = 0``.
"""

from __future__ import annotations

__all__ = [
    "FlowConfig",
    "sample_t",
    "interpolate",
    "velocity_target",
    "flow_matching_loss",
    "shift_time",
    "timesteps",
    "euler",
    "heun",
    "SOLVERS",
    "integrate",
]

import math
from collections.abc import Callable
from typing import Literal

import torch

from ._config import config
from ._errors import ConfigError, did_you_mean

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@config
class FlowConfig:
    """Training-time flow matching options.

    ``time_sampling``: ``logit_normal`` (t = sigmoid(N(logit_mean, logit_std^2)), the default) or ``uniform``.
    """

    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0


def sample_t(
    n: int,
    *,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` training times in (0, 1) as float32 (drawn on CPU with ``generator``, then moved to ``device``)."""
    if kind == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator) * std + mean)
    elif kind == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ConfigError(
            f"Unknown time sampling {kind!r}.{did_you_mean(kind, ['logit_normal', 'uniform'])} "
            "Use 'logit_normal' or 'uniform'."
        )
    return t.to(device)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x + t eps`` with ``t`` of shape ``[B]``."""
    tb = _bcast(t, x)
    return (1.0 - tb) * x + tb * eps


def velocity_target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``eps - x``."""
    return eps - x


def flow_matching_loss(v_pred: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the predicted velocity and ``eps - x`` (computed in float32)."""
    return (v_pred.float() - velocity_target(x, eps).float()).pow(2).mean()


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution time shift ``s t / (1 + (s - 1) t)`` (``s > 1`` spends more steps near the noise end)."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def timesteps(num_steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``num_steps + 1`` decreasing times from 1 to 0 (float64), optionally shifted."""
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1 (got {num_steps}).")
    if not (shift > 0 and math.isfinite(shift)):
        raise ConfigError(f"time shift must be a positive number (got {shift}).")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_time(t, shift).to(device)


def _tb(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def euler(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Explicit Euler over the time grid ``ts`` (decreasing); one velocity evaluation per step."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = velocity(x, _tb(t, x))
        x = x + (t_next - t).to(x.dtype) * v
    return x


def heun(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Heun's method (explicit trapezoid, 2nd order) over ``ts``; two velocity evaluations per step."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        dt = (t_next - t).to(x.dtype)
        v = velocity(x, _tb(t, x))
        x_pred = x + dt * v
        v_next = velocity(x_pred, _tb(t_next, x))
        x = x + dt * 0.5 * (v + v_next)
    return x


#: Solver name -> function ``(velocity, x_1, ts) -> x_0``.
SOLVERS: dict[str, Callable[[VelocityFn, torch.Tensor, torch.Tensor], torch.Tensor]] = {"euler": euler, "heun": heun}


def integrate(
    velocity: VelocityFn, x1: torch.Tensor, num_steps: int = 50, solver: str = "euler", shift: float = 1.0
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from noise ``x1`` at ``t = 1`` to ``t = 0``."""
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise ConfigError(
            f"Unknown solver {solver!r}.{did_you_mean(solver, SOLVERS)} Available solvers: {', '.join(SOLVERS)}."
        ) from None
    return fn(velocity, x1, timesteps(num_steps, shift, device=x1.device))
