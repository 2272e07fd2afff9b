"""``miro train`` / ``miro sample`` end to end, and their user errors (exit 2, one message, no traceback)."""

import json

import pytest
from PIL import Image

from miro_core.cli import main
from miro_core.training import train

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")

TOML = """
steps = 50
log_every = 1
device = "cpu"
[model.backbone]
name = "dit"
options = {{ hidden = 16 }}
[model.text_encoder]
name = "hash_text"
[model.conditioning]
dim = 32
fourier_dim = 8
[data]
image_size = 8
cache_dir = "{cache}"
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return train(tiny_config(tmp, steps=1, checkpoint_every=0), tmp / "out", store=make_store(), progress=False).checkpoint_dir


def test_train_baseline_from_toml(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.format(cache=tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["train", "--data", "test_shapes:n=16", "--rewards", "none", "--backbone", "tiny_test", "--config", str(cfg),
            "--set", "steps=2", "--set", "batch_size=4", "--out", str(out), "--no-progress"]
    assert main(argv + ["--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # precedence: TOML < flags < --set
    assert printed["model"]["backbone"]["name"] == "tiny_test" and printed["steps"] == 2
    assert printed["data"]["rewards"] == ["none"] and printed["data"]["spec"] == "test_shapes:n=16"
    assert main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    meta = json.loads((out / "checkpoints" / "step_00000002" / "config.json").read_text())
    assert meta["reward_names"] == [] and meta["data"]["num_samples"] == 16
    assert list((out / "tb").iterdir())


def test_sample_writes_pngs_and_sidecars(ckpt, tmp_path, capsys):
    out = tmp_path / "imgs"
    rc = main(["sample", "--checkpoint", str(ckpt), "--prompt", "a red square on the left", "--prompt", "two squares",
               "--n", "2", "--steps", "2", "--target", "aesthetic=0.5", "--negative", "pick=0.25", "--guidance", "3",
               "--solver", "heun", "--seed", "5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (8, 8)
    side = json.loads(pngs[2].with_suffix(".json").read_text())
    assert side["prompt"] == "two squares" and side["seed"] == 5 and side["solver"] == "heun"
    assert side["positive_targets"] == {"aesthetic": 0.5, "pick": 1.0}
    assert side["negative_targets"] == {"aesthetic": 0.0, "pick": 0.25}
    assert side["guidance_scale"] == 3.0 and side["guidance_strategy"] == "multi_reward_cfg" and side["num_steps"] == 2


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--target", "hpsv2=1"], "Its rewards: aesthetic, pick"),
        (["--target", "aesthetic=1.5"], "outside [0, 1]"),
        (["--negative", "pick=-0.1"], "outside [0, 1]"),
        (["--target", "aesthetic"], "name=value"),
        (["--solver", "rk4"], "Unknown solver"),
        (["--guidance-strategy", "cfgg"], "Unknown guidance"),
    ],
)
def test_sample_user_errors(ckpt, tmp_path, capsys, extra, match):
    rc = main(["sample", "--checkpoint", str(ckpt), "--prompt", "x", "--steps", "1", "--out", str(tmp_path / "o")] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_checkpoints(ckpt, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "ema.safetensors").write_bytes(b"\x00" * 10)
    for path, match in ((bad, "corrupt"), (tmp_path / "missing", "does not exist"), (tmp_path, "not a MIRO checkpoint")):
        rc = main(["sample", "--checkpoint", str(path), "--prompt", "x", "--steps", "1", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and "Traceback" not in err, err


def test_train_user_errors(tmp_path, capsys):
    base = ["train", "--data", "test_shapes", "--backbone", "tiny_test", "--out", str(tmp_path / "o"), "--no-progress",
            "--set", "model.text_encoder.name=hash_text", "--set", "device=cpu"]
    cases = [
        (["--rewards", "aesthetic"], "no reward store"),
        (["--rewards", "none", "--set", "optim.lrr=1"], "unknown key"),
        (["--rewards", "none", "--config", str(tmp_path / "nope.toml")], "does not exist"),
        (["--rewards", "none", "--set", "noequals"], "key.path=value"),
    ]
    for extra, match in cases:
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and match in err and "Traceback" not in err, (extra, err)


def test_train_and_sample_with_a_real_store(tmp_path, capsys):
    """A real zarr reward store: join by id, quantile bins, the checkpoint records reward names + binner states."""
    import numpy as np

    from miro_core.store import RewardStore

    url = str(tmp_path / "store.zarr")
    ids = [f"s{i:04d}" for i in range(20)]  # 4 more rows than the data: the join is by id
    store = RewardStore.create(url, ids, chunk_rows=32)
    rng = np.random.default_rng(0)
    for name in ("aesthetic", "pick"):
        store.ensure_reward(name, {"version": "1"})
        vals = rng.normal(size=20).astype(np.float32)
        vals[3] = np.nan  # a failed score -> missing level
        store.write_scores(name, 0, vals)
    store.bin("quantile", {"num_bins": 4}, rewards=["aesthetic", "pick"])
    out = tmp_path / "out"
    rc = main(["train", "--data", "test_shapes:n=16", "--store", url, "--rewards", "pick,aesthetic", "--backbone",
               "tiny_test", "--steps", "2", "--batch-size", "4", "--out", str(out), "--no-progress",
               "--set", "model.text_encoder.name=hash_text", "--set", "model.conditioning.dim=32",
               "--set", "data.image_size=8", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "device=cpu"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "checkpoints" / "step_00000002" / "config.json").read_text())
    assert meta["reward_names"] == ["pick", "aesthetic"] and meta["binner"] == "quantile"
    assert set(meta["binner_states"]) == {"pick", "aesthetic"} and meta["data"]["num_samples"] == 16
    rc = main(["sample", "--checkpoint", str(out), "--prompt", "x", "--steps", "1", "--target", "clip=1",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Its rewards: pick, aesthetic" in err
