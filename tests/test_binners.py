"""Built-in binners: contracts, parity with independent references, and the edge cases of DESIGN.md 1/4."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import rankdata

from miro_core import ConfigError, MISSING_BIN, registry
from miro_core.testing import BinnerContract
from miro_rewards.binning import _common
from miro_rewards.binning.refined_quantile import refined_layout

ALL = ["quantile", "uniform", "refined_quantile"]


def make(name, **options):
    return registry("binners").create(name, options)


def roundtrip(state):
    return json.loads(json.dumps(state))


# --------------------------------------------------------------------------------------------- contracts
class TestQuantileContract(BinnerContract):
    binner_name = "quantile"


class TestUniformContract(BinnerContract):
    binner_name = "uniform"


class TestRefinedQuantileContract(BinnerContract):
    binner_name = "refined_quantile"
    options = {"num_bins": 16, "refine_top_fraction": 0.25, "refine_factor": 3.0}


# --------------------------------------------------------------------------------------------- defaults
def test_default_configs():
    assert make("quantile").num_bins == 64
    u = make("uniform")
    assert (u.num_bins, u.config.lower_quantile, u.config.upper_quantile) == (64, 0.001, 0.999)
    r = make("refined_quantile")
    assert r.num_bins == 64 and 0 < r.config.refine_top_fraction < 1 and r.config.refine_factor > 1


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("quantile", {"num_bins": 1}, "num_bins"),
        ("quantile", {"bins": 8}, "bins"),
        ("uniform", {"lower_quantile": 0.9, "upper_quantile": 0.1}, "lower_quantile"),
        ("uniform", {"upper_quantile": 1.5}, "upper_quantile"),
        ("refined_quantile", {"refine_top_fraction": 1.0}, "refine_top_fraction"),
        ("refined_quantile", {"refine_factor": 0.5}, "refine_factor"),
    ],
)
def test_invalid_options_raise_config_error(name, options, field):
    with pytest.raises(ConfigError, match=field):
        make(name, **options)


# --------------------------------------------------------------------------------------------- quantile
def test_quantile_matches_rankdata_reference():
    """No ties: bin = min(floor(B * (rank - 1) / (n - 1)), B - 1), computed from scipy ranks."""
    rng = np.random.default_rng(0)
    n, b = 20011, 64
    x = rng.standard_t(3, size=n)
    q = make("quantile", num_bins=b)
    bins = q.transform(x, roundtrip(q.fit(x)))
    ranks = rankdata(x, method="average")
    ref = np.minimum(np.floor(b * (ranks - 1) / (n - 1)), b - 1).astype(int)
    mismatch = np.flatnonzero(bins != ref)
    # Only values sitting exactly on an edge may differ (float round-off of the interpolation), by 1.
    assert mismatch.size <= 2 and (np.abs(bins[mismatch] - ref[mismatch]) <= 1).all()


def test_quantile_equal_population_on_calibration_and_held_out():
    rng = np.random.default_rng(1)
    b = 64
    cal = rng.lognormal(size=100_000)
    held = rng.lognormal(size=400_000)
    q = make("quantile", num_bins=b)
    state = q.fit(cal)
    counts = np.bincount(q.transform(cal, state), minlength=b)
    np.testing.assert_allclose(counts / cal.size, 1 / b, rtol=0.01)  # +-1 % of the bin share
    held_counts = np.bincount(q.transform(held, state), minlength=b)
    np.testing.assert_allclose(held_counts / held.size, 1 / b, rtol=0.15)  # sampling noise of 100k calibration


def test_quantile_ties_mid_rank_rule():
    """Discrete scores: equal scores share one bin, placed at the middle of the bins their tie group spans.
    (The extremes here are rare, so no saturated-extreme rebalancing happens: see the next tests.)"""
    rng = np.random.default_rng(2)
    b = 64
    values = np.array([0.0, 1.0, 2.0, 5.0, 6.0])
    probs = np.array([0.005, 0.3, 0.39, 0.3, 0.005])
    x = rng.choice(values, p=probs, size=50_000)
    q = make("quantile", num_bins=b)
    state = roundtrip(q.fit(x))
    bins = q.transform(x, state)
    edges = np.asarray(state["edges"])
    np.testing.assert_allclose(edges, np.maximum.accumulate(np.quantile(x, np.arange(1, b) / b)))  # plain quantiles
    cdf_hi = np.cumsum([np.mean(x == v) for v in values])
    cdf_lo = cdf_hi - [np.mean(x == v) for v in values]
    for v, lo_p, hi_p in zip(values, cdf_lo, cdf_hi):
        got = np.unique(bins[x == v])
        assert got.size == 1  # identical scores -> one bin
        lo, hi = np.sum(edges < v), np.sum(edges <= v)
        if lo == 0:  # the tie group holds the lowest edges: extremes stay extremes
            assert got[0] == 0
        elif hi == b - 1:  # ... the highest ones
            assert got[0] == b - 1
        elif hi - lo > 1:  # a tie group spanning several bins: its middle one
            assert got[0] == (lo + hi + 1) // 2
            mid_level = (lo_p + hi_p) / 2  # mid-rank percentile of the tie group
            assert abs((got[0] + 0.5) / b - mid_level) <= 1.0 / b
    assert (np.diff(q.transform(np.sort(x), state).astype(int)) >= 0).all()
    # scores between the atoms still fall between their bins (monotone map), e.g. 1.5 and 3.0
    between = q.transform(np.array([-1.0, 0.5, 1.5, 3.0, 5.5, 9.0]), state)
    atoms = q.transform(values, state)
    assert (between[0] <= atoms[0] <= between[1] <= atoms[1] <= between[2] <= atoms[2] <= between[3] <= atoms[3]
            <= between[4] <= atoms[4] <= between[5])
    assert atoms[0] == 0 and atoms[-1] == b - 1  # s- = 0 and s+ = 1 are levels the data has


def test_saturated_reward_top_bin_holds_the_best_data():
    """A reward that saturates at its maximum for most samples (e.g. a noise score of clean images)."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0.0, 1.0, 4000), np.full(6000, 3.0)])
    for name in ("quantile", "refined_quantile"):
        q = make(name, num_bins=16)
        bins = q.transform(x, roundtrip(q.fit(x)))
        assert (bins[x == 3.0] == 15).all()
        assert (bins[x < 3.0] < 15).all()


def test_quantile_saturated_extremes_leave_no_empty_bin():
    """A spike at the maximum (a clipped reward at 10.0, 25 %) and one at the minimum (0.0, 10 %): each takes
    its extreme bin alone and the continuous part is split into equal shares of the other bins (plain
    quantiles would leave the bins inside each spike empty)."""
    rng = np.random.default_rng(3)
    b = 32
    x = np.concatenate([rng.uniform(0, 10, size=65_000), np.full(25_000, 10.0), np.full(10_000, 0.0)])
    q = make("quantile", num_bins=b)
    state = roundtrip(q.fit(x))
    bins = q.transform(x, state)
    counts = np.bincount(bins, minlength=b)
    assert counts[0] == 10_000 and counts[b - 1] == 25_000
    np.testing.assert_allclose(counts[1 : b - 1] / 65_000, 1 / (b - 2), rtol=0.01)
    # against an independent computation: rank of each continuous score among the continuous scores
    cont = (x > 0) & (x < 10)
    ranks = rankdata(x[cont], method="average")
    ref = 1 + np.minimum(np.floor((b - 2) * (ranks - 1) / (cont.sum() - 1)), b - 3).astype(int)
    assert np.mean(bins[cont] == ref) > 0.9999
    assert (np.diff(q.transform(np.sort(x), state).astype(int)) >= 0).all()  # still a monotone map
    # held-out scores outside the calibration range go to the extreme bins
    np.testing.assert_array_equal(q.transform(np.array([-5.0, 0.0, 0.01, 9.999, 10.0, 11.0]), state),
                                  [0, 0, 1, b - 2, b - 1, b - 1])
    # only one saturated extreme: the other side stays plain
    top_only = np.concatenate([rng.uniform(0, 10, size=75_000), np.full(25_000, 10.0)])
    c = np.bincount(q.transform(top_only, q.fit(top_only)), minlength=b)
    assert c[b - 1] == 25_000
    np.testing.assert_allclose(c[: b - 1] / 75_000, 1 / (b - 1), rtol=0.01)


def test_quantile_two_valued_scores_use_both_extremes():
    x = np.array([0.0] * 700 + [1.0] * 300)
    q = make("quantile", num_bins=8)
    bins = q.transform(x, q.fit(x))
    assert set(bins[x == 0.0]) == {0} and set(bins[x == 1.0]) == {7}


def test_tiny_calibration_sets_spread_over_range():
    q = make("quantile", num_bins=64)
    x = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
    np.testing.assert_array_equal(q.transform(x, q.fit(x)), [32, 0, 48, 16, 63])
    two = np.array([5.0, -2.0])
    np.testing.assert_array_equal(q.transform(two, q.fit(two)), [63, 0])
    one = np.array([7.0])
    state = q.fit(one)
    np.testing.assert_array_equal(q.transform(np.array([7.0, 6.0, 8.0, np.nan]), state), [32, 0, 63, MISSING_BIN])


# --------------------------------------------------------------------------------------------- shared rules
@pytest.mark.parametrize("name", ALL)
def test_constant_column_goes_to_middle_bin(name):
    binner = make(name, num_bins=64)
    x = np.full(1000, 0.25, dtype=np.float32)
    state = roundtrip(binner.fit(x))
    assert (binner.transform(x, state) == 32).all()
    np.testing.assert_array_equal(binner.transform(np.array([0.0, 1.0]), state), [0, 63])


@pytest.mark.parametrize("name", ALL)
def test_nan_and_infinities(name):
    rng = np.random.default_rng(4)
    binner = make(name, num_bins=16)
    cal = rng.normal(size=2000)
    cal[:50] = np.nan
    cal[50:60] = np.inf
    cal[60:70] = -np.inf
    state = roundtrip(binner.fit(cal))
    assert state["fitted_on"] == 1930  # only finite scores are used to fit
    out = binner.transform(np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30]), state)
    assert out[0] == MISSING_BIN and out[1] == 15 and out[2] == 0 and 0 <= out[3] <= 15
    assert out[4] == 15 and out[5] == 0


@pytest.mark.parametrize("name", ALL)
def test_no_finite_calibration_values(name):
    binner = make(name, num_bins=8)
    state = roundtrip(binner.fit(np.array([np.nan, np.inf, -np.inf])))
    assert state["edges"] == [] and state["fitted_on"] == 0
    np.testing.assert_array_equal(binner.transform(np.array([np.nan, 1.0, np.inf, -np.inf]), state), [-1, 4, 7, 0])


@pytest.mark.parametrize("name", ALL)
def test_state_is_plain_json_and_checked(name):
    binner = make(name, num_bins=8)
    x = np.random.default_rng(5).normal(size=500).astype(np.float32)
    state = binner.fit(x)
    assert json.loads(json.dumps(state)) == state
    assert state["binner"] == name and state["num_bins"] == 8 and len(state["edges"]) == 7
    assert all(type(e) is float for e in state["edges"])
    with pytest.raises(ConfigError, match="num_bins"):
        make(name, num_bins=16).transform(x, state)
    other = "uniform" if name != "uniform" else "quantile"
    with pytest.raises(ConfigError, match=other):
        make(other, num_bins=8).transform(x, state)
    with pytest.raises(ConfigError, match="edges"):
        binner.transform(x, {"num_bins": 8})


@pytest.mark.parametrize("name", ALL)
def test_dtypes_and_shapes(name):
    binner = make(name, num_bins=12)
    x64 = np.random.default_rng(6).normal(size=(30, 40))
    x32 = x64.astype(np.float32)
    state = binner.fit(x32)
    a = binner.transform(x32, state)
    b = binner.transform(x32.astype(np.float64), state)  # same values, wider dtype -> same bins
    assert a.shape == (30, 40) and a.dtype == np.int16
    np.testing.assert_array_equal(a, b)
    ints = np.arange(100)
    assert binner.transform(ints, binner.fit(ints)).tolist()[:3] == [0, 0, 0]


def test_transform_blocks_match_single_searchsorted(monkeypatch):
    """The blocked transform gives the same result as one searchsorted over the whole array."""
    monkeypatch.setattr(_common, "_BLOCK", 1000)
    rng = np.random.default_rng(7)
    x = rng.normal(size=10_500).astype(np.float32)
    edges = np.sort(rng.normal(size=31))
    np.testing.assert_array_equal(_common.transform_edges(x, edges, 32), np.searchsorted(edges, x.astype(np.float64), side="right"))


def test_levels_of_bins():
    from miro_core import Binner

    lv = Binner.levels(np.array([0, 63, 32, MISSING_BIN], dtype=np.int16), 64)
    np.testing.assert_allclose(lv[:3], [0.0, 1.0, 32 / 63])
    assert math.isnan(lv[3])


# --------------------------------------------------------------------------------------------- uniform
def test_uniform_matches_hand_loop():
    rng = np.random.default_rng(8)
    b = 20
    x = rng.gamma(2.0, size=5000)
    u = make("uniform", num_bins=b, lower_quantile=0.01, upper_quantile=0.99)
    state = roundtrip(u.fit(x))
    low, high = np.quantile(x, [0.01, 0.99])
    assert state["low"] == pytest.approx(low) and state["high"] == pytest.approx(high)
    bins = u.transform(x, state)
    width = (high - low) / b
    for value, got in zip(x.tolist(), bins.tolist()):
        k = math.floor((value - low) / width)
        k = min(max(k, 0), b - 1)
        assert got == k, (value, got, k)
    assert (bins == 0).sum() >= 0.01 * x.size and (bins == b - 1).sum() >= 0.01 * x.size  # clipped tails


def test_uniform_plain_min_max_and_equal_width():
    u = make("uniform", num_bins=4, lower_quantile=0.0, upper_quantile=1.0)
    x = np.array([0.0, 0.99, 1.0, 2.5, 3.99, 4.0])
    state = u.fit(x)
    np.testing.assert_allclose(state["edges"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(u.transform(x, state), [0, 0, 1, 2, 3, 3])


# --------------------------------------------------------------------------------------------- refined
@pytest.mark.parametrize("b, f, r", [(64, 0.125, 2.0), (64, 0.1, 4.0), (16, 0.25, 3.0), (8, 0.5, 1.0), (4, 0.9, 10.0)])
def test_refined_layout(b, f, r):
    n_coarse, n_fine, levels = refined_layout(b, f, r)
    assert n_coarse + n_fine == b and n_coarse >= 1 and n_fine >= 1
    assert levels.size == b - 1 and (np.diff(levels) > 0).all()
    assert levels[n_coarse - 1] == pytest.approx(1 - f)  # the split point is an edge
    if r == 1.0:
        np.testing.assert_allclose(levels, np.arange(1, b) / b)  # no refinement = plain quantile


def test_refined_quantile_population_and_default_layout():
    rng = np.random.default_rng(9)
    x = rng.normal(size=200_000)
    rq = make("refined_quantile")
    state = rq.fit(x)
    assert (state["n_coarse"], state["n_fine"]) == (50, 14)
    counts = np.bincount(rq.transform(x, state), minlength=64) / x.size
    np.testing.assert_allclose(counts[:50], 0.875 / 50, rtol=0.01)  # equal population within coarse part
    np.testing.assert_allclose(counts[50:], 0.125 / 14, rtol=0.01)  # and within the refined part
    assert counts[:50].mean() / counts[50:].mean() == pytest.approx(2.0, rel=0.05)
    # the coarse part agrees with an independent rank computation of the (1-f) quantile split
    ranks = rankdata(x) / x.size
    assert np.all(rq.transform(x, state)[ranks <= 0.87] < 50) and np.all(rq.transform(x, state)[ranks > 0.88] >= 50)


def test_refined_factor_one_equals_quantile():
    x = np.random.default_rng(10).normal(size=3000)
    a = make("refined_quantile", num_bins=16, refine_top_fraction=0.25, refine_factor=1.0)
    q = make("quantile", num_bins=16)
    np.testing.assert_array_equal(a.transform(x, a.fit(x)), q.transform(x, q.fit(x)))


def test_transform_tie_rule_matches_two_sided_searchsorted(monkeypatch):
    """With repeated edges, every score gets (#edges < x + #edges <= x + 1) // 2 (the documented mid-rank rule),
    except tie groups that reach the bottom / top edge (bin 0 / top bin)."""
    monkeypatch.setattr(_common, "_BLOCK", 777)
    rng = np.random.default_rng(11)
    for _ in range(5):
        edges = np.sort(rng.integers(0, 12, size=15).astype(np.float64))  # many repeats
        x = np.concatenate([rng.integers(-1, 13, size=3000).astype(np.float64), rng.uniform(-1, 13, size=3000)])
        lo, hi = np.searchsorted(edges, x, "left"), np.searchsorted(edges, x, "right")
        ref = (lo + hi + 1) // 2
        tied = hi - lo > 1  # x equals a repeated edge
        ref[tied & (hi == edges.size) & (lo > 0)] = 15  # extremes stay extremes
        ref[tied & (lo == 0) & (hi < edges.size)] = 0
        np.testing.assert_array_equal(_common.transform_edges(x, edges, 16), ref)
