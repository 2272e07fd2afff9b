"""Tests of ``cfg_rescale``: MIRO's guidance contract, the formula against numpy, and its limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miro_core import ConfigError, registry
from miro_core.sampling import Cond
from miro_core.testing import GuidanceContract


class TestCfgRescaleGuidanceContract(GuidanceContract):
    guidance_name = "cfg_rescale"


class Toy:
    """v = x (1 + 3 L) + (2 - L) z + t with L = sum(levels) and a fixed pattern z whose size differs per sample, so
    that std(v+) / std(v_cfg) differs from sample to sample (a per-batch rescaling would not match)."""

    stateful = False

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        z = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(5))
        z = z * torch.tensor([0.1, 1.0, 4.0])[:, None, None, None]
        z = torch.cat([z, z]) if x.shape[0] == 6 else z  # the batch of 2B is the positive rows, then the negative
        lv = cond.levels.sum(1)[:, None, None, None]
        return x * (1 + 3 * lv) + (2 - lv) * z + t[:, None, None, None]


def _setup(b=3):
    g = torch.Generator().manual_seed(0)
    tokens, mask = torch.randn(b, 4, 5, generator=g), torch.ones(b, 4, dtype=torch.bool)
    pos, neg = Cond(tokens, mask, torch.ones(b, 2)), Cond(tokens, mask, torch.zeros(b, 2))
    return torch.randn(b, 3, 6, 6, generator=g), torch.full((b,), 0.6), pos, neg


def _numpy_reference(vp: np.ndarray, vn: np.ndarray, w: float, phi: float) -> np.ndarray:
    out = []
    for p, q in zip(vp, vn):  # per sample, as in Lin et al. (std over all non-batch dimensions)
        cfg = p + w * (p - q)
        rs = cfg * (p.std() / cfg.std())
        out.append(phi * rs + (1 - phi) * cfg)
    return np.stack(out)


@pytest.mark.parametrize("w", [0.0, 3.0, 7.0])
@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_formula_matches_numpy_and_one_batched_forward(w, phi):
    x, t, pos, neg = _setup()
    fn = Toy()
    v = registry("guidance").create("cfg_rescale", {"scale": w, "phi": phi})(fn, x, t, pos, neg)
    assert fn.calls == [6]  # ONE forward of size 2B
    vp, vn = Toy()(x, t, pos).double().numpy(), Toy()(x, t, neg).double().numpy()
    np.testing.assert_allclose(v.double().numpy(), _numpy_reference(vp, vn, w, phi), rtol=1e-5, atol=1e-5)


def test_phi_zero_is_multi_reward_cfg_and_phi_one_keeps_the_positive_spread():
    x, t, pos, neg = _setup()
    plain = registry("guidance").create("multi_reward_cfg", {"scale": 7.0})(Toy(), x, t, pos, neg)
    torch.testing.assert_close(registry("guidance").create("cfg_rescale", {"phi": 0.0})(Toy(), x, t, pos, neg), plain)
    full = registry("guidance").create("cfg_rescale", {"phi": 1.0})(Toy(), x, t, pos, neg)
    vp = Toy()(x, t, pos)
    torch.testing.assert_close(full.flatten(1).std(1, unbiased=False), vp.flatten(1).std(1, unbiased=False))
    assert (plain.flatten(1).std(1) > 2 * vp.flatten(1).std(1)).all()  # what the rescaling removes
    # the direction of the guided prediction is kept
    cos = torch.nn.functional.cosine_similarity(full.flatten(1), plain.flatten(1), dim=1)
    assert (cos > 0.999).all()


def test_interval_and_stateful_models():
    x, _, pos, neg = _setup()
    g = registry("guidance").create("cfg_rescale", {"scale": 3.0, "interval": [0.2, 0.5]})
    assert g.config.interval == (0.2, 0.5)
    outside = torch.full((3,), 0.8)
    fn = Toy()
    torch.testing.assert_close(g(fn, x, outside, pos, neg), Toy()(x, outside, pos))
    assert fn.calls == [3]  # outside the interval: the positive branch alone
    fn.stateful, fn.calls = True, []
    torch.testing.assert_close(g(fn, x, outside, pos, neg), Toy()(x, outside, pos))
    assert fn.calls == [6]  # a stateful (self-conditioning) model keeps its 2B batch
    inside = torch.full((3,), 0.3)
    assert not torch.allclose(g(Toy(), x, inside, pos, neg), Toy()(x, inside, pos))


def test_zero_prediction_and_bad_options():
    x, t, pos, neg = _setup()
    zero = registry("guidance").create("cfg_rescale")(lambda x, t, c: torch.zeros_like(x), x, t, pos, neg)
    assert torch.equal(zero, torch.zeros_like(x))  # no 0 / 0
    with pytest.raises(ConfigError, match="interval must satisfy"):
        registry("guidance").create("cfg_rescale", {"interval": [0.6, 0.2]})
    with pytest.raises(ConfigError):
        registry("guidance").create("cfg_rescale", {"phi": 1.5})
