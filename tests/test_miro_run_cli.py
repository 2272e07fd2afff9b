"""``miro-run`` command-line errors: one paragraph on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from miro_eval.run import build_parser, main, parse_reward_list, resolve_config


def _run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--rewards", "no_such_reward"], "Unknown reward 'no_such_reward'"),
        (["--rewards", "world_sharpness,,world_alignment"], "is malformed"),
        (["--rewards", "world_sharpness, world_alignment"], "is malformed"),
        (["--rewards", "pick,pick"], "more than once"),
        (["--binner", "quantil"], "Did you mean 'quantile'?"),
        (["--backbone", "unet9000"], "Unknown backbone 'unet9000'"),
        (["--preset", "huge"], "Unknown preset 'huge'"),
        (["--set", "eval.no_such_field=1"], "unknown key(s) no_such_field"),
        (["--set", "steps"], "not of the form key.path=value"),
        (["--steps", "0"], "at least 1 step"),
        (["--set", 'experiments.guidance_sweep_variants=["cfg"]'], "'cfg', which is not a guidance; known: "),
        (["--set", "experiments.guidance_sweep_scales=[-1.0]"], "must be finite and >= 0"),
    ],
)
def test_bad_input_is_one_paragraph_exit_2(capsys, tmp_path, argv, needle):
    rc, out, err = _run(capsys, *argv, "--out", str(tmp_path / "o"), "--no-progress")
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err and err.startswith("error: ")
    assert err.strip().count("\n") == 0  # one paragraph
    assert not (tmp_path / "o").exists()  # validated before any work


def test_config_file_and_set_precedence(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nsteps = 7\nbins = 5\n[eval]\nnum_steps = 3\n')
    args = build_parser().parse_args(["--config", str(toml), "--bins", "6", "--set", "eval.num_steps=4", "--set", "train.optim.lr=0.01"])
    cfg = resolve_config(args)
    assert cfg.preset == "tiny" and cfg.steps == 7 and cfg.bins == 6 and cfg.eval.num_steps == 4
    assert cfg.train["optim"]["lr"] == 0.01
    assert cfg.image_size == 16  # from the tiny preset


def test_bad_toml_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    rc, _, err = _run(capsys, "--config", str(bad))
    assert rc == 2 and "not valid TOML" in err
    rc, _, err = _run(capsys, "--config", str(tmp_path / "missing.toml"))
    assert rc == 2 and "does not exist" in err


def test_parse_reward_list():
    assert parse_reward_list("a,b_c,d-1") == ("a", "b_c", "d-1")
    assert parse_reward_list("none") == ()


def test_user_form_with_dit_and_uniform_resolves():
    args = build_parser().parse_args(["--rewards", "world_sharpness,world_alignment", "--binner", "uniform",
                                      "--backbone", "dit", "--preset", "quick"])
    cfg = resolve_config(args)
    assert cfg.rewards == ("world_sharpness", "world_alignment") and cfg.binner == "uniform"
    assert cfg.backbone == "dit" and cfg.backbone_options["hidden_dim"] == 128  # the small DiT of the presets


def test_real_reward_without_weights_fails_clearly(capsys, tmp_path, monkeypatch):
    """`miro-run --rewards aesthetic,hpsv2,pick --data FOLDER`: the reward's own error, not a traceback."""
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: no weights anywhere
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a blue square number {i}")
    rc, _, err = _run(capsys, "--rewards", "aesthetic,hpsv2,pick", "--binner", "quantile", "--data", str(folder),
                      "--preset", "tiny", "--out", str(tmp_path / "o"), "--no-progress")
    assert rc == 2 and "Traceback" not in err
    assert "aesthetic" in err.lower()


def test_console_script_exit_code():
    exe = Path(sys.executable).with_name("miro-run")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "miro_eval.run"]
    proc = subprocess.run([*cmd, "--preset", "nope"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert "Unknown preset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_rewards_none_without_eval_rewards_warns_how_to_measure_the_baseline(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="miro_eval.run"):
        resolve_config(build_parser().parse_args(["--rewards", "none", "--preset", "tiny"]))
    assert any("no reward scores it" in r.getMessage() and "eval_rewards" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="miro_eval.run"):
        cfg = resolve_config(build_parser().parse_args(["--rewards", "none", "--preset", "tiny", "--set",
                                                        'eval_rewards=["world_sharpness"]']))
    assert cfg.eval_rewards == ("world_sharpness",)
    assert not any("no reward scores it" in r.getMessage() for r in caplog.records)
