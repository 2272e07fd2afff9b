"""``miro-run`` with the sampling experiments of paper-mini switched on, at tiny size (2 rewards, 4 models).

Leave-one-out is on (2 more models); single-reward models only add trainings of the same kind: their plan is
checked directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from miro_eval.run import main

pytestmark = pytest.mark.slow  # ~30 s on 2 free cores (4 tiny trainings); minutes on a loaded machine

REWARDS = ["world_sharpness", "world_vividness"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("miro-run-exp") / "out"
    sets = ["experiments.leave_one_out=true", "experiments.controllability=true",
            "experiments.controllability_prompts=3", "experiments.test_time_scaling=true", "experiments.tts_max_log2=2",
            "experiments.tts_prompts=2", "experiments.tts_geneval_images_per_category=1", "experiments.tradeoff=true",
            "eval.eval_every=0", "experiments.guidance_sweep=true", "experiments.guidance_sweep_scales=[0.0, 3.0]"]
    argv = ["--preset", "tiny", "--rewards", ",".join(REWARDS), "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return out


def test_model_plan_of_paper_mini():
    from miro_eval.run import MiroRun, build_parser, resolve_config

    rewards = ["--rewards", "world_sharpness,world_vividness,world_cleanliness"]
    cfg = resolve_config(build_parser().parse_args(["--preset", "paper-mini", *rewards]))
    assert MiroRun(cfg, "unused").model_plan() == {"miro": ("world_sharpness", "world_vividness", "world_cleanliness"),
                                                   "baseline": ()}  # the ablations are opt-in
    ablations = ["--set", "experiments.single_reward=true", "--set", "experiments.leave_one_out=true"]
    cfg = resolve_config(build_parser().parse_args(["--preset", "paper-mini", *rewards, *ablations]))
    plan = MiroRun(cfg, "unused").model_plan()
    assert plan == {
        "miro": ("world_sharpness", "world_vividness", "world_cleanliness"),
        "baseline": (),
        "only_world_sharpness": ("world_sharpness",),
        "only_world_vividness": ("world_vividness",),
        "only_world_cleanliness": ("world_cleanliness",),
        "without_world_sharpness": ("world_vividness", "world_cleanliness"),
        "without_world_vividness": ("world_sharpness", "world_cleanliness"),
        "without_world_cleanliness": ("world_sharpness", "world_vividness"),
    }
    # preset experiment settings follow --rewards (world_alignment is not among them)
    assert set(cfg.experiments.controllability_rewards) == {"world_sharpness", "world_vividness", "world_cleanliness"}
    assert cfg.experiments.tts_selection == ""


def test_all_experiments_reported(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["models"]) == {"miro", "baseline", "without_world_sharpness", "without_world_vividness"}
    assert m["model_rewards"]["without_world_sharpness"] == ["world_vividness"]
    assert set(m["comparison"]["reference_wins"]) == {"baseline"}  # leave-one-out models are not in Figure 4
    loo = m["leave_one_out"]
    assert set(loo["deltas"]) == set(REWARDS)
    full = m["models"]["miro"]["world_vividness/mean"]
    assert loo["own_delta"]["world_vividness"] == pytest.approx(m["models"]["without_world_vividness"]["world_vividness/mean"] - full)
    # controllability: default = the first reward, 5 levels, a Spearman value (or null when undefined)
    c = m["controllability"]["world_sharpness"]
    assert c["levels"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(c["means"]["world_sharpness"]) == 5
    from scipy.stats import spearmanr

    def undefined(v):
        return v is None or (isinstance(v, float) and np.isnan(v))

    # Spearman of target level vs mean measured score: recomputed here from the reported levels and means
    means = np.asarray(c["means"]["world_sharpness"], np.float64)
    rho = np.nan if np.all(means == means[0]) else float(spearmanr(c["levels"], means).statistic)
    assert undefined(c["spearman_means"]) == bool(np.isnan(rho))
    if not np.isnan(rho):
        assert c["spearman_means"] == pytest.approx(rho, abs=1e-9)
    # the per-image value (3 prompts x 5 levels) is a correlation with a p-value, or undefined with its p-value
    assert c["num_images_per_level"] == 3
    if undefined(c["spearman"]):
        assert undefined(c["p_value"])
    else:
        assert -1.0 <= c["spearman"] <= 1.0 and 0.0 <= c["p_value"] <= 1.0
    # test-time scaling: N = 1, 2, 4 for MIRO and baseline, rewards + compositional overall
    t = m["test_time_scaling"]
    assert t["ns"] == [1, 2, 4] and set(t["results"]) == {"miro", "baseline"}
    for by_n in t["results"].values():
        assert set(by_n) == {"1", "2", "4"}
        assert {"world_sharpness", "world_vividness", "overall"} <= set(by_n["4"])
        # selection by world_sharpness: the kept images' mean is non-decreasing in N
        sel = [by_n[n]["world_sharpness"] for n in ("1", "2", "4")]
        assert sel[0] <= sel[1] + 1e-9 <= sel[2] + 2e-9
    assert m["tradeoff"]["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "convergence" not in m  # eval_every=0: no curves


def test_guidance_sweep_matches_main_evaluation(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    gs = m["guidance_sweep"]
    assert gs["scales"] == [0.0, 3.0] and m["config"]["eval"]["guidance_scale"] == 3.0
    assert set(gs["series"]) == {"miro (multi_reward_cfg)", "miro (multi_reward_cfg_text_drop)", "miro (text_cfg)",
                                 "baseline (text CFG)"}
    metrics = gs["metrics"]
    assert metrics == ["world_sharpness/mean", "world_vividness/mean", "geneval/overall"]
    # the point at the evaluation's own scale and guidance is the main evaluation, number for number
    for label, model in (("miro (multi_reward_cfg)", "miro"), ("baseline (text CFG)", "baseline")):
        for k in metrics:
            assert gs["series"][label][k][1] == pytest.approx(m["models"][model][k], rel=1e-6, abs=1e-9), (label, k)
    # w = 0 is the positive branch alone: the same for every MIRO variant
    for k in metrics:
        assert len({gs["series"][f"miro ({v})"][k][0] for v in ("multi_reward_cfg", "multi_reward_cfg_text_drop", "text_cfg")}) == 1
    # the variants are really different samplers at w > 0
    assert gs["series"]["miro (text_cfg)"]["world_vividness/mean"][1] != gs["series"]["miro (multi_reward_cfg)"]["world_vividness/mean"][1]


def test_report_has_every_section_and_plot(run_dir):
    text = (run_dir / "report.md").read_text()
    for section in ("## Controllability", "## Leave one reward out", "## Test-time scaling", "## Trade-off", "## Guidance scale"):
        assert section in text
    for plot in ("models.png", "radar.png", "leave_one_out.png", "controllability_world_sharpness.png",
                 "test_time_scaling.png", "tradeoff.png", "guidance_sweep.png"):
        assert (run_dir / "plots" / plot).exists(), plot
        assert f"plots/{plot}" in text


def _strip_plots(value):
    """An experiment's result without its plot paths (they name the out folder)."""
    if isinstance(value, dict):
        return {k: _strip_plots(v) for k, v in value.items() if k != "plot"}
    if isinstance(value, list):
        return [_strip_plots(v) for v in value]
    return value


@pytest.mark.parametrize("suite, key, others", [
    ("comparison", "comparison", ["baseline"]),
    ("leave_one_out", "leave_one_out", ["without_world_sharpness", "without_world_vividness"]),
    ("controllability_sweep", "controllability", []),
    ("tradeoff", "tradeoff", []),
    ("test_time_scaling", "test_time_scaling", ["baseline"]),
    ("guidance_sweep", "guidance_sweep", ["baseline"]),
])
def test_each_experiment_alone_through_miro_eval_gives_miro_runs_numbers(run_dir, tmp_path, suite, key, others):
    """`miro eval --suite <experiment> --checkpoint OUT/models/miro --set run_dir=OUT [--set models.X=...]`:
    the experiment's result is the one in miro-run's metrics.json, number for number."""
    from miro_core._plugins import reset_plugins
    from miro_core.cli import main as miro

    reset_plugins(None)
    m = json.loads((run_dir / "metrics.json").read_text())
    argv = ["eval", "--suite", suite, "--checkpoint", str(run_dir / "models" / "miro"), "--set", f"run_dir='{run_dir}'",
            "--out", str(tmp_path / suite), "--no-progress", "--device", "cpu"]
    for name in others:
        argv += ["--set", f"models.{name}='{run_dir / 'models' / name}'"]
    assert miro(argv) == 0
    got = json.loads((tmp_path / suite / "metrics.json").read_text())
    assert _strip_plots(got[key]) == _strip_plots(m[key])
    if "models" in got:  # the main evaluation of each model it compares, as miro-run's
        assert got["models"] == {k: m["models"][k] for k in got["models"]}
    assert got["metrics"] and (tmp_path / suite / "report.md").exists()


def test_experiment_suite_names_the_model_it_misses(run_dir, tmp_path, capsys):
    from miro_core._plugins import reset_plugins
    from miro_core.cli import main as miro

    reset_plugins(None)
    rc = miro(["eval", "--suite", "leave_one_out", "--checkpoint", str(run_dir / "models" / "miro"), "--set",
               f"run_dir='{run_dir}'", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "--set models.without_<reward>=DIR" in capsys.readouterr().err


def test_sample_efficiency_of_the_baseline(run_dir):
    """samples_to_match on the reported curves: baseline samples needed to reach MIRO's best-of-1."""
    from miro_eval.suites.best_of_n import samples_to_match

    t = json.loads((run_dir / "metrics.json").read_text())["test_time_scaling"]
    se = t["sample_efficiency"]
    assert set(se) == {"world_sharpness", "world_vividness", "overall"}
    for k, v in se.items():
        assert v["reference_best_of_1"] == t["results"]["miro"]["1"][k]
        curve = [t["results"]["baseline"][str(n)][k] for n in t["ns"]]
        assert v["samples_to_match"] == samples_to_match(t["ns"], curve, v["reference_best_of_1"])
