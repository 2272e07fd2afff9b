"""Unit tests of the evaluation suites with small fakes (no trained model needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from miro_core import Reward, registry
from miro_eval import (
    BestOfN,
    Report,
    comparison_table,
    controllability_sweep,
    convergence_speedup,
    convergence_suite,
    leave_one_out_table,
    pair_targets,
    reward_curves,
    select_best,
    spearman,
    steps_to_reach,
    write_json,
)
from miro_eval.tradeoff import isolate_targets, pairwise_sweep


# -- fakes -------------------------------------------------------------------------------------------
class MeanBrightness(Reward):
    """Fake reward: the mean pixel value (ignores text)."""

    name = "fake_brightness"
    uses_text = False

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


class FakeGenerator:
    """Image brightness = target level of ``fake_brightness`` (+ seeded noise); counts calls."""

    def __init__(self, noise: float = 0.05):
        self.noise = noise
        self.calls = 0

    def __call__(self, prompts, seed=0, reward_targets=None, negative_reward_targets=None, **kw):
        self.calls += 1
        g = torch.Generator().manual_seed(int(seed))
        level = (reward_targets or {}).get("fake_brightness", 0.5)
        base = torch.full((len(prompts), 3, 8, 8), 0.2 + 0.6 * float(level))
        return (base + self.noise * torch.randn(len(prompts), 1, 1, 1, generator=g)).clamp(0, 1)


# -- convergence ---------------------------------------------------------------------------------------
def test_steps_to_reach_interpolates_between_eval_points():
    steps, vals = [0, 100, 200, 300], [0.0, 1.0, 2.0, 4.0]
    assert steps_to_reach(steps, vals, 1.5) == pytest.approx(150.0)
    assert steps_to_reach(steps, vals, 3.0) == pytest.approx(250.0)
    assert steps_to_reach(steps, vals, 0.0) == 0.0
    assert steps_to_reach(steps, vals, 5.0) is None  # never reached
    # lower-is-better metrics
    assert steps_to_reach(steps, [4.0, 2.0, 1.0, 0.0], 1.5, higher_is_better=False) == pytest.approx(150.0)


def test_speedup_matches_hand_computation():
    baseline = ([100, 200, 300, 400], [1.0, 2.0, 3.0, 4.0])  # reaches its final 4.0 at step 400
    miro = ([100, 200, 300, 400], [2.0, 4.5, 5.0, 5.5])  # reaches 4.0 at 100 + 2/2.5*100 = 180
    out = convergence_speedup(baseline, miro)
    assert out["target"] == 4.0 and out["reached"]
    assert out["steps_baseline"] == pytest.approx(400.0)
    assert out["steps_miro"] == pytest.approx(180.0)
    assert out["speedup"] == pytest.approx(400.0 / 180.0)


def test_speedup_never_reached_is_none():
    out = convergence_speedup(([10, 20], [1.0, 3.0]), ([10, 20], [0.5, 1.0]))
    assert out["reached"] is False and out["speedup"] is None and out["steps_miro"] is None


def test_speedup_noisy_baseline_uses_first_crossing():
    # baseline overshoots then ends lower: it first reached its final value (2.0) at step 150
    out = convergence_speedup(([100, 200, 300], [1.0, 3.0, 2.0]), ([100, 200, 300], [2.0, 2.5, 3.0]))
    assert out["steps_baseline"] == pytest.approx(150.0)
    assert out["speedup"] == pytest.approx(1.5)


def test_reward_curves_and_suite_from_history():
    hist_b = [{"step": 0, "loss": 1.0}, {"step": 10, "r/mean": 1.0}, {"step": 20, "r/mean": 2.0, "loss": 0.5}]
    hist_m = [{"step": 10, "r/mean": 2.0}, {"step": 20, "r/mean": 3.0}]
    curves = reward_curves(hist_b)
    assert list(curves["r/mean"][0]) == [10, 20] and list(curves["loss"][0]) == [0, 20]
    out = convergence_suite({"baseline": hist_b, "miro": hist_m}, ["r/mean"])
    assert out["speedup"]["r/mean"]["speedup"] == pytest.approx(2.0)
    json.dumps(out)


# -- controllability ---------------------------------------------------------------------------------
def test_spearman_values():
    rho, p = spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 11])
    assert rho == pytest.approx(1.0) and p < 0.05
    rho, _ = spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert rho == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])[0])
    assert spearman([1, 2, np.nan, 4, 5, 6], [1, 2, 3, 4, 6, 5])[0] == pytest.approx(0.9)


def test_controllability_sweep_detects_a_controllable_reward():
    gen = FakeGenerator()
    reward = MeanBrightness()
    out = controllability_sweep(gen, ["fake_brightness", "other"], "fake_brightness", ["a", "b", "c", "d"],
                                {"fake_brightness": reward}, levels=(0.0, 0.25, 0.5, 0.75, 1.0), batch_size=2)
    assert out["spearman"] > 0.9 and out["p_value"] < 1e-3
    assert out["spearman_means"] == pytest.approx(1.0)
    assert np.all(np.diff(out["means"]["fake_brightness"]) > 0)
    with pytest.raises(ValueError):
        controllability_sweep(gen, ["fake_brightness"], "fake_brightness", ["a"], {"fake_brightness": reward}, levels=(0, 1))


def test_controllability_sweep_uncontrollable_reward_has_low_correlation():
    class Ignores(FakeGenerator):
        def __call__(self, prompts, seed=0, reward_targets=None, **kw):
            return super().__call__(prompts, seed=seed, reward_targets=None)

    out = controllability_sweep(Ignores(noise=0.2), ["fake_brightness"], "fake_brightness", [f"p{i}" for i in range(8)],
                                {"fake_brightness": MeanBrightness()}, batch_size=8)
    assert abs(out["spearman"]) < 0.5  # same seeds at every level: no systematic trend


# -- best-of-N -----------------------------------------------------------------------------------------
def test_select_best_picks_argmax_among_first_n_and_skips_nan():
    scores = np.array([[0.1, np.nan, 0.5], [0.3, 0.2, 0.4], [0.9, 0.1, np.nan], [0.0, 0.8, 0.6]])
    assert select_best(scores, 1).tolist() == [0, 0, 0]
    assert select_best(scores, 2).tolist() == [1, 1, 0]
    assert select_best(scores, 4).tolist() == [2, 3, 3]
    with pytest.raises(ValueError):
        select_best(scores, 5)


def test_best_of_n_is_monotone_and_cached():
    gen = FakeGenerator(noise=0.2)
    reward = MeanBrightness()
    bon = BestOfN(gen, reward, n_max=8, batch_size=4)
    prompts = ["a", "b", "c"]
    means = []
    for n in (1, 2, 4, 8):
        bon.n = n
        means.append(float(reward.score(bon(prompts, seed=3), prompts).mean()))
    assert all(b >= a - 1e-9 for a, b in zip(means, means[1:]))
    assert means[-1] > means[0]
    calls = gen.calls
    bon.n = 4
    bon(prompts, seed=3)
    assert gen.calls == calls  # candidates are generated once per prompt batch
    # best-of-1 is the first candidate, i.e. exactly what the generator returns for that seed
    imgs, scores = bon.candidates(prompts, seed=3)
    assert imgs.shape[:2] == (8, 3) and scores.shape == (8, 3)


def test_test_time_scaling_evaluator_via_registry(monkeypatch):
    from miro_core import reset_plugins
    from miro_core._plugins import PluginHost

    import miro_eval.test_time_scaling as tts_mod
    from miro_core import hookimpl

    class _FakePlugin:
        @hookimpl
        def miro_register_rewards(register):  # noqa: N805 - plugin object
            register(MeanBrightness)

    host = PluginHost(load_entrypoints=False, extra_plugins=[(tts_mod, "tts"), (_FakePlugin, "fake")])
    reset_plugins(host)
    try:
        ev = registry("evaluators").create("test_time_scaling", {"selection_reward": "fake_brightness", "max_log2": 3,
                                                                 "batch_size": 4})
        out = ev.evaluate(FakeGenerator(noise=0.2), prompts=["a", "b", "c", "d"])
        vals = [out[f"best_of_{n}/fake_brightness"] for n in (1, 2, 4, 8)]
        assert all(b >= a - 1e-9 for a, b in zip(vals, vals[1:])) and vals[-1] > vals[0]
    finally:
        reset_plugins(None)


# -- trade-offs, comparisons, report -----------------------------------------------------------------
def test_pair_and_isolate_targets():
    pos, neg = pair_targets(["a", "b", "c"], "a", "b", 0.25)
    assert pos == {"a": 1.0, "b": 1.0, "c": 1.0} and neg == {"a": 0.25, "b": 0.75, "c": 1.0}
    pos, neg = isolate_targets(["a", "b"], "b")
    assert neg == {"a": 1.0, "b": 0.0}
    assert isolate_targets(["a", "b"], None)[1] == {"a": 0.0, "b": 0.0}
    seen = []

    class Recording(FakeGenerator):
        def __call__(self, prompts, seed=0, reward_targets=None, negative_reward_targets=None, **kw):
            seen.append((dict(reward_targets), dict(negative_reward_targets)))
            return super().__call__(prompts, seed, reward_targets, negative_reward_targets, **kw)

    names = ["fake_brightness", "x"]
    out = pairwise_sweep(Recording(noise=0.0), names, "fake_brightness", "x", ["p"], {"fake_brightness": MeanBrightness()},
                         ts=(0.0, 0.5, 1.0))
    # one generation per t, with exactly the pair targets of that t (s+ = 1; s-[a] = t, s-[b] = 1 - t)
    assert seen == [pair_targets(names, "fake_brightness", "x", t) for t in (0.0, 0.5, 1.0)]
    assert out["t"] == [0.0, 0.5, 1.0]
    # noise-free images have brightness 0.2 + 0.6 * s+[fake_brightness] = 0.8 at every t
    assert out["means"]["fake_brightness"] == pytest.approx([0.8, 0.8, 0.8], abs=1e-6)


def test_comparison_and_leave_one_out_tables():
    models = {"miro": {"a": 3.0, "b": 2.0, "loss": 0.1}, "baseline": {"a": 1.0, "b": 2.5, "loss": 0.2},
              "only_a": {"a": 4.0, "b": 0.5, "loss": 0.3}}
    t = comparison_table(models, ["a", "b", "loss"], lower_is_better=["loss"])
    assert t["best"] == {"a": "only_a", "b": "baseline", "loss": "miro"}
    assert t["reference_wins"] == {"baseline": "2/3", "only_a": "2/3"}
    loo = leave_one_out_table({"a/mean": 3.0, "b/mean": 2.0}, {"a": {"a/mean": 2.0, "b/mean": 2.5}}, ["a/mean", "b/mean"])
    assert loo["deltas"]["a"] == {"a/mean": -1.0, "b/mean": 0.5} and loo["own_delta"]["a"] == -1.0


def test_report_and_metrics_json(tmp_path):
    from miro_eval.plots import plot_curves, plot_radar, plot_test_time_scaling, save_grid

    curves = {"baseline": {"r": {"steps": [1, 2], "values": [0.1, 0.2]}}, "miro": {"r": {"steps": [1, 2], "values": [0.2, 0.4]}}}
    p1 = plot_curves(curves, ["r"], tmp_path / "plots" / "curves.png")
    p2 = plot_radar({"miro": {"a": 1, "b": 2, "c": 3}, "baseline": {"a": 0.5, "b": 2.5, "c": 1}}, ["a", "b", "c"], tmp_path / "plots" / "radar.png")
    p3 = plot_test_time_scaling({"miro": {1: {"r": 0.1}, 2: {"r": 0.2}}}, ["r"], tmp_path / "plots" / "tts.png")
    p4 = save_grid(torch.rand(5, 3, 8, 8), tmp_path / "grid.png", nrow=4)
    for p in (p1, p2, p3, p4):
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = Report("title", tmp_path)
    rep.table(["model", "r"], [["miro", 0.123456], ["baseline", float("nan")]])
    rep.image(p1, "curves")
    path = rep.write()
    text = path.read_text()
    assert "| miro | 0.1235 |" in text and "n/a" in text and "](plots/curves.png)" in text
    write_json(tmp_path / "metrics.json", {"x": float("inf"), "y": np.float32(1.5), "z": (1, 2)})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"x": None, "y": 1.5, "z": [1, 2]}


def test_reward_scores_evaluator_mean_std(tmp_path):
    from miro_core import hookimpl, reset_plugins
    from miro_core._plugins import PluginHost

    import miro_eval.reward_scores as rs_mod

    class _FakePlugin:
        @hookimpl
        def miro_register_rewards(register):  # noqa: N805
            register(MeanBrightness)

    reset_plugins(PluginHost(load_entrypoints=False, extra_plugins=[(rs_mod, "rs"), (_FakePlugin, "fake")]))
    try:
        prompt_file = tmp_path / "prompts.txt"
        prompt_file.write_text("a\n\nb\nc\n")
        ev = registry("evaluators").create("reward_scores", {"rewards": ["fake_brightness"], "prompt_file": str(prompt_file),
                                                            "images_per_prompt": 2, "batch_size": 4})
        gen = FakeGenerator(noise=0.0)
        out = ev.evaluate(gen, reward_targets={"fake_brightness": 1.0})
        assert out["fake_brightness/mean"] == pytest.approx(0.8) and out["fake_brightness/std"] == pytest.approx(0.0, abs=1e-6)
        assert ev.last_images.shape[0] == 6  # 3 prompts x 2 images
        out = ev.evaluate(gen, prompts=["x"], reward_targets={"fake_brightness": 0.0})
        assert out["fake_brightness/mean"] == pytest.approx(0.2)
        with pytest.raises(Exception, match="at least one reward"):
            registry("evaluators").create("reward_scores", {"prompts": ["a"]}).evaluate(gen)
    finally:
        reset_plugins(None)
