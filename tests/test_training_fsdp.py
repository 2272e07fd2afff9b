"""FSDP training (``parallel = "fsdp"``, FSDP2 ``fully_shard`` per block) on 2-process torchrun (gloo, CPU): the same
weights as DDP and as one process, checkpoints in the one-process format (full tensors gathered on rank 0) that
resume under DDP and FSDP alike, exact resume after kill -9, and the option's errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from miro_core import ConfigError, structure
from miro_core.training import train
from miro_core.training.checkpoint import load_for_inference, load_state_dict_file, load_training_state
from miro_core.training.config import TrainConfig

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401
from _torchrun_kill import kill_torchrun

pytestmark = pytest.mark.usefixtures("miro_host_module")
TESTS = Path(__file__).resolve().parent

#: two RIN blocks (two FSDP units besides the conditioning's and the loss weighting's); self-conditioning at rate
#: 0.5 on micro-batches of 2 samples per rank: some micro-batches of a rank have no self-conditioned sample (the
#: backbone must still run the pass under FSDP, or the ranks' all-gathers go out of step and the run hangs)
RIN_TINY = {"name": "rin", "options": {"interface_dim": 16, "latent_dim": 16, "num_latents": 4, "num_blocks": 2,
                                       "layers_per_block": 1, "heads": 2, "interface_heads": 2,
                                       "self_cond_rate": 0.5}}
#: what the issue asks to hold under FSDP: LAMB, an active gradient clip, grad accumulation, learned loss
#: weighting, EMA (compared below), fp32
OVER = {"model.backbone": RIN_TINY, "optim.name": "lamb", "optim.grad_clip": 0.5, "grad_accum": 2,
        "model.loss_weighting": "learned", "optim.ema_decay": 0.9, "keep_checkpoints": 0, "precision": "fp32"}

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from _miro_train_fakes import make_host, make_store
from miro_core._plugins import reset_plugins
import miro_core.training.loop as loop
reset_plugins(make_host(with_rin=True))
if {slow!r}:
    real = loop.train_step
    def slow_step(*a, **k):
        time.sleep(0.3)  # room for the kill to land mid-run
        return real(*a, **k)
    loop.train_step = slow_step
cfg = json.loads({cfg!r})
r = loop.train(cfg, {out!r}, store=make_store(), progress=False, resume={resume!r})
if os.environ.get("RANK") == "0":
    open({hist!r}, "w").write(json.dumps(r.history))
"""


def _launch(tmp_path: Path, name: str, cfg: dict, out: Path, resume: bool = False, slow: bool = False):
    script, hist = tmp_path / f"{name}.py", tmp_path / f"{name}.json"
    script.write_text(SCRIPT.format(tests=str(TESTS), cfg=json.dumps(cfg), out=str(out), resume=resume, slow=slow,
                                    hist=str(hist)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIRO_LOAD_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return proc, hist


def _finish(proc, hist) -> list[dict]:
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("the torchrun job hung: " + out.decode()[-4000:]) from None
    assert proc.returncode == 0, out.decode()[-4000:]
    return json.loads(hist.read_text())


def _run(tmp_path: Path, name: str, cfg: dict, out: Path, resume: bool = False) -> list[dict]:
    return _finish(*_launch(tmp_path, name, cfg, out, resume))


def _ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def _assert_weights_close(a_dir: Path, b_dir: Path, what: str) -> None:
    for f in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_state_dict_file(a_dir / f), load_state_dict_file(b_dir / f)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape, k
            if k.endswith(("k_norm.bias", "qkv.bias")):
                continue  # zero true gradient: reduction-order noise turned into +-lr steps (see test_training_ddp)
            # the DDP tolerance of tests/test_training_ddp.py for rin
            torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{what} {f} {k}: {m}")


def _history(h: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in h if "loss" in r}


def test_the_parallel_option_is_checked_and_one_process_trains_unsharded(tmp_path, caplog):
    with pytest.raises(ConfigError, match=r"parallel must be 'ddp'.*or 'fsdp'.*got 'zero'"):
        structure({"parallel": "zero"}, TrainConfig, path="train")
    assert structure({}, TrainConfig).parallel == "ddp"
    ddp = train(tiny_config(tmp_path, steps=2, checkpoint_every=0), tmp_path / "ddp", store=make_store(), progress=False)
    with caplog.at_level(logging.WARNING, logger="miro_core.training.loop"):
        fsdp = train(tiny_config(tmp_path, steps=2, checkpoint_every=0, parallel="fsdp"), tmp_path / "fsdp",
                     store=make_store(), progress=False)
    assert "training unsharded" in caplog.text and "torchrun --nproc_per_node" in caplog.text
    wa = load_state_dict_file(ddp.checkpoint_dir / "model.safetensors")
    wb = load_state_dict_file(fsdp.checkpoint_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((fsdp.checkpoint_dir / "config.json").read_text())["parallel"] == "single"


def test_fsdp_units_are_the_blocks_then_the_root():
    from torch import nn

    from miro_core.model import build_model
    from miro_core.training.loop import fsdp_units
    from miro_models.backbones.unet import UNet

    model = build_model({"backbone": RIN_TINY, "text_encoder": {"name": "hash_text"}, "autoencoder": {"name": "pixel"},
                         "loss_weighting": "learned"}, ["aesthetic"], 16, 3, 8)
    units = fsdp_units(model)
    assert {"backbone.blocks.0", "backbone.blocks.1", "loss_weighting"} <= set(units)
    assert not any(u.startswith("backbone.blocks.0.") for u in units)  # a block is one unit, not its layers
    holder = nn.Module()
    holder.backbone = UNet(structure({"image_size": 8, "base_channels": 8, "channel_mult": [1, 2],
                                      "attention_resolutions": []}, UNet.Config))
    names = fsdp_units(holder)
    assert {"backbone.down.0", "backbone.down.1", "backbone.up.0"} <= set(names)
    # a backbone may name its own units; children are sharded before their parents whatever the declared order
    model.backbone.fsdp_units = lambda: ["blocks", "blocks.1"]
    units = fsdp_units(model)
    assert units.index("backbone.blocks.1") < units.index("backbone.blocks")
    model.backbone.fsdp_units = lambda: ["nope"]
    with pytest.raises(ConfigError, match="not sub-modules"):
        fsdp_units(model)


@pytest.mark.slow
def test_fsdp_equals_ddp_and_one_process_and_checkpoints_resume_across_modes(tmp_path):
    """4 steps, checkpoint at 2 and 4: FSDP on 2 ranks == DDP on 2 ranks == one process (weights, EMA, losses and
    the clipping norm, which must be the global norm over the shards); the FSDP checkpoint has the one-process
    format (same tensors, same optimizer-state layout), loads for sampling, and a run resumed at step 2 under the
    other mode ends where the uninterrupted runs end."""
    cfg = tiny_config(tmp_path, steps=4, checkpoint_every=2, **OVER)
    single = train(cfg, tmp_path / "single", store=make_store(), progress=False)  # also builds the shared cache
    ddp_h = _run(tmp_path, "ddp", cfg, tmp_path / "ddp")
    fsdp_h = _run(tmp_path, "fsdp", {**cfg, "parallel": "fsdp"}, tmp_path / "fsdp")
    one, d, f = _history(single.history), _history(ddp_h), _history(fsdp_h)
    assert sorted(f) == [1, 2, 3, 4]
    for s in f:
        assert f[s]["loss"] == pytest.approx(d[s]["loss"], rel=1e-5) == pytest.approx(one[s]["loss"], rel=1e-5)
        # the logged norm is the one clip_grad_norm_ used: the global norm, not this rank's shard's
        assert f[s]["grad_norm"] == pytest.approx(d[s]["grad_norm"], rel=1e-4)
        assert f[s]["grad_norm"] > OVER["optim.grad_clip"]  # the clip was active
    _assert_weights_close(_ckpt(tmp_path / "ddp", 4), _ckpt(tmp_path / "fsdp", 4), "fsdp vs ddp")
    _assert_weights_close(single.checkpoint_dir, _ckpt(tmp_path / "fsdp", 4), "fsdp vs one process")

    # the on-disk format: the optimizer state of the full tensors, as DDP writes it
    ta, tb = load_training_state(_ckpt(tmp_path / "ddp", 4)), load_training_state(_ckpt(tmp_path / "fsdp", 4))
    oa, ob = ta["optimizer"], tb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            w = ob["state"][i][k]
            assert type(w) is torch.Tensor and w.shape == v.shape and w.dtype == v.dtype, (i, k)
    assert tb["ema_updates"] == ta["ema_updates"] == 4
    meta_d = json.loads((_ckpt(tmp_path / "ddp", 4) / "config.json").read_text())
    meta_f = json.loads((_ckpt(tmp_path / "fsdp", 4) / "config.json").read_text())
    assert meta_f["parallel"] == "fsdp" and meta_d["parallel"] == "ddp" and meta_f["world_size"] == 2
    assert {"backbone.blocks.0", "backbone.blocks.1", "loss_weighting"} <= set(meta_f["fsdp_units"])
    # each rank holds half of the parameters, optimizer state and EMA (rank 0's shard: the larger one)
    for k in ("parameters", "optimizer", "ema"):
        ratio = meta_f["memory_per_rank"][k] / meta_d["memory_per_rank"][k]
        assert 0.5 <= ratio < 0.52, (k, ratio)
    pipe = load_for_inference(_ckpt(tmp_path / "fsdp", 4))  # what `miro sample` does
    img = pipe(["a red square on the left"], num_inference_steps=2, seed=0, output_type="pt")
    assert torch.isfinite(img).all()

    # resume across modes from step 2
    for src, mode in (("fsdp", "ddp"), ("ddp", "fsdp")):
        out = tmp_path / f"{src}_then_{mode}"
        shutil.copytree(tmp_path / src, out)
        shutil.rmtree(_ckpt(out, 4))
        h = _history(_run(tmp_path, f"{src}_then_{mode}", {**cfg, "parallel": mode}, out, resume=True))
        assert sorted(h) == [3, 4]
        for s in h:
            assert h[s]["loss"] == pytest.approx(d[s]["loss"], rel=1e-5)
        _assert_weights_close(_ckpt(tmp_path / src, 4), _ckpt(out, 4), f"{src} resumed under {mode}")
        assert json.loads((_ckpt(out, 4) / "config.json").read_text())["parallel"] == mode


@pytest.mark.slow
def test_kill9_an_fsdp_run_then_resume_equals_uninterrupted(tmp_path):
    steps = 10
    cfg = tiny_config(tmp_path, steps=steps, checkpoint_every=2, parallel="fsdp", **OVER)
    full = _run(tmp_path, "full", cfg, tmp_path / "full")

    out = tmp_path / "killed"
    proc, _ = _launch(tmp_path, "killed", cfg, out, slow=True)
    ckpts = out / "checkpoints"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (ckpts / "step_00000004").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill"
    kill_torchrun(proc)
    done = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_"))
    assert done and done[-1] < f"step_{steps:08d}", done
    resumed = _run(tmp_path, "resumed", cfg, out, resume=True)
    a, b = _history(full), _history(resumed)
    first = min(b)
    assert 4 < first <= steps  # it went on from a checkpoint at or after step 4, not from scratch
    assert sorted(b) == list(range(first, steps + 1))
    for s in b:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-6, abs=1e-7)
    for f in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_state_dict_file(_ckpt(tmp_path / "full", steps) / f), load_state_dict_file(_ckpt(out, steps) / f)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{f} {k}: {m}")
