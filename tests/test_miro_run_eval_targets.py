"""``eval.positive_targets`` / ``eval.negative_targets``: the reward targets of miro-run's main evaluation."""

from __future__ import annotations

import pytest
import torch

from miro_core import ConfigError
from miro_eval.run import MiroRun, build_parser, resolve_config
from miro_eval.suites._experiment import RunContext

REWARDS = "world_sharpness,world_vividness"


def cfg_of(*sets: str, rewards: str = REWARDS):
    argv = ["--preset", "tiny", "--rewards", rewards]
    for s in sets:
        argv += ["--set", s]
    return resolve_config(build_parser().parse_args(argv))


class RecordingPipe:
    """A stand-in reward-conditioned model: records the sampling kwargs of every call, returns grey images."""

    def __init__(self, reward_names=("world_sharpness", "world_vividness")):
        self.reward_names = tuple(reward_names)
        self.calls: list[dict] = []

    def __call__(self, prompts, **kw):
        self.calls.append(kw)
        return torch.full((len(prompts), 3, 16, 16), 0.5)


def test_targets_reach_the_main_evaluation(tmp_path):
    cfg = cfg_of("eval.positive_targets.world_vividness=0.5", "eval.negative_targets.world_sharpness=1.0",
                 "eval.geneval=false", "eval.num_prompts=2")
    assert cfg.eval.positive_targets == {"world_vividness": 0.5}
    run = RunContext(cfg, tmp_path / "out", progress=False)  # miro-run's evaluation side (MiroRun extends it)
    pipe = RecordingPipe()
    run._pipes["miro"] = pipe
    run.evaluate_model("miro")
    assert pipe.calls, "the main evaluation did not sample"
    for kw in pipe.calls:
        assert kw["reward_targets"] == {"world_vividness": 0.5}
        assert kw["negative_reward_targets"] == {"world_sharpness": 1.0}
    # a model without the named reward (single-reward, leave-one-out) gets only its own rewards' targets
    only = run.sampling_kwargs(RecordingPipe(("world_sharpness",)))
    assert "reward_targets" not in only and only["negative_reward_targets"] == {"world_sharpness": 1.0}
    # the unconditioned baseline gets none
    base = run.sampling_kwargs(RecordingPipe(()))
    assert "reward_targets" not in base and "negative_reward_targets" not in base


def test_no_targets_keep_the_defaults_and_the_cache_keys(tmp_path):
    from miro_core import unstructure
    from miro_eval.suites._experiment import eval_key

    cfg = cfg_of()
    kw = MiroRun(cfg, tmp_path / "out", progress=False).sampling_kwargs(RecordingPipe())
    assert "reward_targets" not in kw and "negative_reward_targets" not in kw
    key = eval_key(cfg.eval)
    assert "positive_targets" not in key and "negative_targets" not in key  # results cached before the field stay valid
    assert eval_key(cfg_of("eval.positive_targets.world_vividness=0.5").eval)["positive_targets"] == {"world_vividness": 0.5}
    assert set(unstructure(cfg.eval)) - set(key) == {"positive_targets", "negative_targets"}


def test_experiments_that_set_targets_keep_their_own(tmp_path):
    from miro_eval.suites._experiment import own_targets
    from miro_eval.suites.guidance_sweep import sweep_kwargs

    run = MiroRun(cfg_of("eval.positive_targets.world_vividness=0.5"), tmp_path / "out", progress=False)
    pipe = RecordingPipe()
    assert "reward_targets" not in own_targets(run.sampling_kwargs(pipe))
    # text CFG of MIRO holds the rewards at s+ in both branches, the eval's s+ included
    kw = sweep_kwargs(run, pipe, "text_cfg", 3.0)
    assert kw["negative_reward_targets"] == {"world_sharpness": 1.0, "world_vividness": 0.5}
    assert sweep_kwargs(run, pipe, "multi_reward_cfg", 3.0)["reward_targets"] == {"world_vividness": 0.5}


@pytest.mark.parametrize("setting, match", [
    ("eval.positive_targets.world_alignment=0.5", "not in --rewards"),
    ("eval.negative_targets.world_vividness=1.5", r"in \[0, 1\]"),
])
def test_bad_targets_are_config_errors(setting, match):
    with pytest.raises(ConfigError, match=match):
        cfg_of(setting)
