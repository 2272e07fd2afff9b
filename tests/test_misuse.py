"""Misuse is loud: one reward-list parser for score / bin / train / miro-run, `miro train --store` without
rewards, `miro store info --store` (old positional spelling still accepted), miro-run rebins stale bins."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import ConfigError  # noqa: E402
from miro_core.cli import main  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import RewardStore  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


def _miro(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------ one parser
CASES = ["a,b", "a", "a, b", " a,b", "a,,b", ",a", "a,", " , ", "", " ", "a,a", "a b", "none", "all", "all,a",
         "none,a", "NONE", "a;b", "é"]


def _outcome(fn, text):
    try:
        return ("ok", tuple(fn(text)))
    except ConfigError as exc:
        msg = str(exc)
        # the flag name and the keywords a command accepts differ; the rule that was broken must not
        kind = ("malformed" if "is malformed" in msg else "twice" if "more than once" in msg
                else "keyword" if "not accepted here" in msg or "stands alone" in msg else msg)
        return ("error", kind)


def test_score_bin_train_and_miro_run_share_one_rule_set():
    from miro_core._reward_list import parse_reward_list
    from miro_core.cli.score_cmd import parse_reward_list as score_parse
    from miro_eval.run import parse_reward_list as run_parse

    for text in CASES:
        core = _outcome(lambda t: parse_reward_list(t, allow_all=True, allow_none=True), text)
        score = _outcome(score_parse, text)
        run = _outcome(run_parse, text)
        if text.lower() in ("none", "all"):
            assert score == ("error", "keyword"), text  # miro score needs names
            assert run == (("ok", ()) if text.lower() == "none" else ("error", "keyword")), text
            continue
        if core[0] == "ok":
            assert score == core and run == core, (text, core, score, run)
        else:
            assert score[0] == run[0] == "error" and score[1] == run[1] == core[1], (text, core, score, run)
    assert _outcome(score_parse, "a, b") == ("error", "malformed")  # one rule: no spaces, everywhere
    assert _outcome(score_parse, "a,a") == ("error", "twice")


def test_train_parses_rewards_with_the_shared_parser():
    from miro_core.cli import build_parser
    from miro_core.cli.train_cmd import config_from_args

    parser, _ = build_parser()

    def cfg(*argv):
        return config_from_args(parser.parse_args(["train", "--out", "o", *argv]))

    assert cfg("--store", "s", "--rewards", "a,b").data.rewards == ("a", "b")
    assert cfg("--store", "s", "--rewards", "all").data.rewards == ("all",)
    assert cfg("--rewards", "none").data.rewards == ("none",)
    assert cfg().data.rewards == ()  # no store, no rewards: the baseline, nothing to misread
    for bad, needle in ((" , ", "is malformed"), ("a, b", "is malformed"), ("a,a", "more than once"),
                        ("all,a", "stands alone")):
        with pytest.raises(ConfigError, match=needle):
            cfg("--store", "s", "--rewards", bad)


@pytest.mark.parametrize("argv, needle", [
    (["--store", "STORE"], "no rewards to condition on"),
    (["--store", "STORE", "--rewards", " , "], "is malformed"),
    (["--store", "STORE", "--rewards", ""], "is malformed"),
    (["--set", "data.store=STORE"], "no rewards to condition on"),
])
def test_train_with_store_and_no_rewards_is_an_error(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    argv = [a.replace("STORE", str(tmp_path / "s")) for a in argv]
    rc, _, err = _miro(capsys, "train", "--data", "test_shapes", "--out", str(out), *argv)
    assert rc == 2 and needle in err and "Traceback" not in err, err
    if "no rewards" in needle:
        assert "--rewards all" in err and "--rewards none" in err  # the message names both fixes
    assert not out.exists()


# ------------------------------------------------------------------------------- store info --store
def test_store_info_store_flag_and_old_positional(tmp_path, capsys, caplog):
    root = tmp_path / "data"
    helpers.write_folder(root, 4)
    url = str(tmp_path / "st")
    score_dataset(str(root), ["brightness"], url, workers=0, progress=False)
    rc, out, err = _miro(capsys, "store", "info", "--store", url, "--json")
    assert rc == 0 and json.loads(out)["num_rows"] == 4
    import logging

    with caplog.at_level(logging.WARNING):
        rc, out2, _ = _miro(capsys, "store", "info", url, "--json")
    assert rc == 0 and json.loads(out2) == json.loads(out)
    assert "deprecated" in caplog.text and "--store" in caplog.text
    rc, _, err = _miro(capsys, "store", "info")
    assert rc == 2 and "needs the store" in err
    rc, _, err = _miro(capsys, "store", "info", url, "--store", str(tmp_path / "other"))
    assert rc == 2 and "two stores" in err


# ------------------------------------------------------------------------------- miro-run rebins
def test_miro_run_rebins_stale_bins_by_itself(tmp_path):
    from miro_eval._run_config import RunConfig
    from miro_eval.run import MiroRun

    root = tmp_path / "data"
    helpers.write_folder(root, 12)
    run = MiroRun(RunConfig(data=str(root), rewards=("brightness",), binner="equal_width_test", bins=4), tmp_path / "o",
                  progress=False)
    score_dataset(str(root), ["brightness"], run.store_url, limit=6, chunk_rows=4, workers=0, progress=False)
    run.bin()
    assert RewardStore.open(run.store_url).bin_attrs("equal_width_test", "brightness")["num_rows"] == 6
    score_dataset(str(root), ["brightness"], run.store_url, workers=0, progress=False)  # 6 more rows
    assert RewardStore.open(run.store_url).stale_bins("equal_width_test") != {}
    run.bin()  # same bins and seed as before: only staleness asks for the rebin
    s = RewardStore.open(run.store_url)
    assert s.stale_bins("equal_width_test") == {}
    assert np.isfinite(s.levels(["brightness"], "equal_width_test")).all()


def test_miro_run_reward_option_is_the_spelling_of_miro_score():
    from miro_eval.run import build_parser, resolve_config

    miro_core.reset_plugins(None)  # miro-run validates names against the real built-ins
    args = build_parser().parse_args(["--preset", "tiny", "--rewards", "world_sharpness,world_alignment",
                                      "--reward-option", "world_alignment.threshold=0.5",
                                      "--set", "reward_options.world_sharpness.x=1"])
    cfg = resolve_config(args)
    assert cfg.reward_options == {"world_alignment": {"threshold": 0.5}, "world_sharpness": {"x": 1}}
    bad = build_parser().parse_args(["--rewards", "world_sharpness", "--reward-option", "world_vividness.x=1"])
    with pytest.raises(ConfigError, match="not in --rewards"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="reward.key=value"):
        resolve_config(build_parser().parse_args(["--reward-option", "world_sharpness=1"]))
