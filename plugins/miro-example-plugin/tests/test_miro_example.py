"""Tests of the example plugin: MIRO's contract test classes, plus checks of our own formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miro_core import MISSING_BIN, registry
from miro_core.testing import BinnerContract, RewardContract


class TestColorfulnessContract(RewardContract):
    reward_name = "hasler_colorfulness"


class TestZScoreContract(BinnerContract):
    binner_name = "zscore"


def _reference_colorfulness(img: np.ndarray) -> float:
    """Straight transcription of Hasler & Suesstrunk on an HxWx3 uint8-scale array, pixel by pixel."""
    rg, yb = [], []
    for row in img:
        for r, g, b in row:
            rg.append(float(r) - float(g))
            yb.append(0.5 * (float(r) + float(g)) - float(b))
    n = len(rg)
    m_rg, m_yb = sum(rg) / n, sum(yb) / n
    s_rg = math.sqrt(sum((v - m_rg) ** 2 for v in rg) / n)
    s_yb = math.sqrt(sum((v - m_yb) ** 2 for v in yb) / n)
    return math.sqrt(s_rg**2 + s_yb**2) + 0.3 * math.sqrt(m_rg**2 + m_yb**2)


def test_colorfulness_matches_reference():
    reward = registry("rewards").create("hasler_colorfulness")
    assert reward.uses_text is False
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 12, 10, generator=g)
    imgs[1] = imgs[1].mean(0, keepdim=True)  # grey image
    got = reward.score(imgs, ["", "", ""])
    for i in range(3):
        ref = _reference_colorfulness((imgs[i].permute(1, 2, 0).double().numpy() * 255.0))
        assert got[i].item() == pytest.approx(ref, rel=1e-5, abs=1e-4)
    assert got[1].item() == pytest.approx(0.0, abs=1e-3)


def test_colorfulness_orders_images():
    reward = registry("rewards").create("hasler_colorfulness")
    grey = torch.full((1, 3, 16, 16), 0.5)
    pale = grey.clone()
    pale[:, 0] += 0.1
    vivid = torch.zeros(1, 3, 16, 16)
    vivid[:, 0, :, :8] = 1.0
    vivid[:, 2, :, 8:] = 1.0
    s = reward.score(torch.cat([grey, pale, vivid]), ["a", "b", "c"])
    assert s[0] < s[1] < s[2]
    assert s[1].item() == pytest.approx(0.3 * math.hypot(25.5, 12.75), rel=1e-5)  # flat tint: mean term only


def test_colorfulness_ignores_text():
    reward = registry("rewards").create("hasler_colorfulness")
    imgs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(reward.score(imgs, ["x", "y"]), reward.score(imgs, ["a red car", ""]))


def test_zscore_bins_match_formula():
    b = registry("binners").create("zscore", {"num_bins": 6, "clip_sigma": 3.0})
    x = np.array([0.0, 2.0, 4.0, 6.0, 8.0])  # mean 4, std sqrt(8)
    state = b.fit(x)
    assert state["mean"] == pytest.approx(4.0) and state["std"] == pytest.approx(math.sqrt(8.0))
    z = (np.array([-100.0, 4.0, 4.0 + math.sqrt(8.0) * 1.01, 100.0, np.nan]) - 4.0) / math.sqrt(8.0)
    expected = [0, 3, 4, 5, MISSING_BIN]  # bins of width 1 sigma over [-3, 3]
    assert b.transform(z * math.sqrt(8.0) + 4.0, state).tolist() == expected


def test_zscore_constant_column_middle_bin():
    b = registry("binners").create("zscore", {"num_bins": 8})
    x = np.full(50, 2.0)
    assert (b.transform(x, b.fit(x)) == 4).all()
