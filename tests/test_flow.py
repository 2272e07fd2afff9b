"""Flow matching: interpolation/target/loss, time sampling, and solver exactness on a Gaussian problem.

For data x ~ N(mu, sigma^2) and x_t = (1-t) x + t eps the optimal velocity E[eps - x | x_t] is linear in x_t:
    v(x_t, t) = -mu + (t - (1-t) sigma^2) / ((1-t)^2 sigma^2 + t^2) * (x_t - (1-t) mu)
and the ODE from t=1 maps noise z exactly to mu + sigma z. So every sample has a known exact end point.
"""

import math

import pytest
import torch

from miro_core import ConfigError
from miro_core.flow import (
    flow_matching_loss,
    integrate,
    interpolate,
    sample_t,
    shift_time,
    timesteps,
    velocity_target,
)

MU, SIGMA = 1.5, 0.4


def gaussian_velocity(x, t):
    t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - t) ** 2 * SIGMA**2 + t**2
    return -MU + (t - (1 - t) * SIGMA**2) / var * (x - (1 - t) * MU)


def _solve(solver, steps, z, shift=1.0):
    return integrate(gaussian_velocity, z, num_steps=steps, solver=solver, shift=shift)


def test_interpolation_and_target():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5])
    xt = interpolate(x, eps, t)
    torch.testing.assert_close(xt[0], x[0])
    torch.testing.assert_close(xt[1], eps[1])
    torch.testing.assert_close(xt[2], 0.75 * x[2] + 0.25 * eps[2])
    torch.testing.assert_close(velocity_target(x, eps), eps - x)
    # d x_t / d t equals the target: finite difference along t
    h = 1e-3
    fd = (interpolate(x, eps, t + h) - interpolate(x, eps, t)) / h
    torch.testing.assert_close(fd, eps - x, atol=1e-3, rtol=1e-3)
    assert flow_matching_loss(eps - x, x, eps).item() == 0.0
    assert flow_matching_loss(torch.zeros_like(x), x, eps).item() == pytest.approx(((eps - x) ** 2).mean().item())


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, kind="logit_normal", generator=g)
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1.0) < 0.01
    u = sample_t(200_000, kind="uniform", generator=g)
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    with pytest.raises(ConfigError, match="logit_normal"):
        sample_t(3, kind="gauss")


def test_timesteps_and_shift():
    ts = timesteps(4)
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    sh = timesteps(4, shift=3.0)
    assert sh[0] == 1.0 and sh[-1] == 0.0 and (sh[1:] < sh[:-1]).all()
    assert sh[2].item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))  # more time spent near noise
    torch.testing.assert_close(shift_time(ts, 1.0), ts)
    with pytest.raises(ConfigError):
        timesteps(0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_gaussian_final_distribution(solver):
    z = torch.randn(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = _solve(solver, 50, z)
    exact = MU + SIGMA * z
    assert abs(x0.mean().item() - MU) < 0.01
    assert abs(x0.std().item() - SIGMA) < (0.02 if solver == "euler" else 0.005)
    assert (x0 - exact).abs().max().item() < (0.1 if solver == "euler" else 0.005)
    assert (x0 - exact).abs().mean().item() < (0.02 if solver == "euler" else 0.001)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_convergence_order(solver, order, shift):
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)
    exact = MU + SIGMA * z
    errs = [(_solve(solver, n, z, shift) - exact).abs().max().item() for n in (32, 64, 128, 256)]
    ratios = [errs[i] / errs[i + 1] for i in range(3)]
    # error halves (euler) / quarters (heun) when the step count doubles
    for r in ratios[1:]:
        assert abs(math.log2(r) - order) < 0.2, (errs, ratios)


def test_unknown_solver():
    with pytest.raises(ConfigError, match="heun"):
        integrate(gaussian_velocity, torch.zeros(2), 4, solver="rk4")
