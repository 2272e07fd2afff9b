"""Training loop: loss decreases, checkpoints round-trip, exact resume, accumulation, dropout, errors."""

import shutil

import numpy as np
import pytest
import torch

from miro_core import CheckpointError, ConfigError, structure
from miro_core.training import TrainConfig, train
from miro_core.training.checkpoint import load_state_dict_file, load_training_state, read_checkpoint_meta
from miro_core.training.loop import Batcher, batch_indices, lr_factor
from miro_core.training.distributed import DistInfo

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")


@pytest.fixture(scope="module")
def run6(tmp_path_factory):
    """One uninterrupted 6-step run (checkpoints at 3 and 6), shared by several tests."""
    tmp = tmp_path_factory.mktemp("run6")
    cfg = tiny_config(tmp)
    result = train(cfg, tmp / "out", store=make_store(), progress=False)
    return tmp, cfg, result


def _losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_loss_decreases(tmp_path):
    cfg = tiny_config(tmp_path, steps=30, batch_size=8, checkpoint_every=0, **{"optim.lr": 1e-2, "optim.warmup_steps": 1})
    result = train(cfg, tmp_path / "out", store=make_store(), progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)


def test_checkpoint_round_trip(run6):
    tmp, cfg, result = run6
    ckpt = result.checkpoint_dir
    assert ckpt.name == "step_00000006" and result.step == 6
    assert (ckpt.parent / "latest").read_text().strip() == ckpt.name
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    path, meta = read_checkpoint_meta(tmp / "out")  # an --out dir resolves to its latest checkpoint
    assert path == ckpt and meta["step"] == 6
    assert structure(meta["train_config"], TrainConfig) == structure(cfg, TrainConfig)
    assert meta["reward_names"] == ["aesthetic", "pick"] and meta["binner"] == "quantile"
    assert set(meta["binner_states"]) == {"aesthetic", "pick"} and "edges" in meta["binner_states"]["pick"]
    assert meta["model_info"]["latent_shape"] == [3, 8, 8]
    raw, ema = load_state_dict_file(ckpt / "model.safetensors"), load_state_dict_file(ckpt / "ema.safetensors")
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # EMA is a different average
    state = load_training_state(ckpt)  # torch.load(weights_only=True)
    assert state["step"] == 6 and "optimizer" in state and "generator" in state["rng"]
    # the weights load back into a model built from config.json alone
    from miro_core.sampling import MiroPipeline

    pipe = MiroPipeline.from_checkpoint(ckpt, use_ema=False)
    for k, v in pipe.model.state_dict().items():
        torch.testing.assert_close(v, raw[k], rtol=0, atol=0)


def test_resume_is_exact(run6, tmp_path):
    tmp, cfg, full = run6
    # simulate a crash right after the step-3 checkpoint: copy the run, drop step 6, point latest at step 3
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "checkpoints" / "latest").write_text("step_00000003\n")
    resumed = train(cfg, out, store=make_store(), progress=False, resume=True)
    a, b = _losses(full.history), _losses(resumed.history)
    assert sorted(b) == [4, 5, 6]
    for s in (4, 5, 6):
        assert a[s] == b[s], (s, a[s], b[s])
    wa = load_state_dict_file(full.checkpoint_dir / "model.safetensors")
    wb = load_state_dict_file(resumed.checkpoint_dir / "model.safetensors")
    ea = load_state_dict_file(full.checkpoint_dir / "ema.safetensors")
    eb = load_state_dict_file(resumed.checkpoint_dir / "ema.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]) and torch.equal(ea[k], eb[k]), k


RIN_TINY = {"name": "rin", "options": {"interface_dim": 16, "latent_dim": 16, "num_latents": 4, "num_blocks": 1,
                                       "layers_per_block": 1, "heads": 2, "interface_heads": 2}}


def test_resume_is_exact_with_rin_lamb_and_learned_weighting(tmp_path):
    """The real self-conditioning rin (its draws come from the loop's generator), the official LAMB and the
    learned loss weighting: a run resumed at step 2 equals the uninterrupted one bit for bit."""
    over = {"model.backbone": RIN_TINY, "model.loss_weighting": "learned", "model.logvar_channels": 8,
            "optim.name": "lamb", "optim.betas": [0.9, 0.999]}
    cfg = tiny_config(tmp_path, steps=4, checkpoint_every=2, **over)
    full = train(cfg, tmp_path / "full", store=make_store(), progress=False)
    out = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", out)
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    (out / "checkpoints" / "latest").write_text("step_00000002\n")
    torch.manual_seed(12345)  # a different global RNG state must not matter
    resumed = train(cfg, out, store=make_store(), progress=False, resume=True)
    a, b = _losses(full.history), _losses(resumed.history)
    assert sorted(b) == [3, 4] and all(a[s] == b[s] for s in (3, 4)), (a, b)
    wa = load_state_dict_file(full.checkpoint_dir / "model.safetensors")
    wb = load_state_dict_file(resumed.checkpoint_dir / "model.safetensors")
    assert any(k.startswith("loss_weighting.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_batcher_draws_backbone_uniforms_for_the_global_batch(tmp_path):
    """Each rank gets its slice of ONE global draw: ranks differ, and together they equal a single process."""
    from miro_core.training.data import prepare_data
    from miro_core import registry

    cfg = structure(tiny_config(tmp_path), TrainConfig)
    te = registry("text_encoders").create("hash_text", {})
    ae = registry("autoencoders").create("pixel", {})
    data = prepare_data(cfg.data, te, ae, build=True, text_encoder_spec=cfg.model.text_encoder,
                        autoencoder_spec=cfg.model.autoencoder, source=None, store=make_store(), device=torch.device("cpu"))
    single = Batcher(data, cfg, DistInfo(), torch.device("cpu"), uniforms=("self_cond",))
    ranks = [Batcher(data, cfg, DistInfo(rank=r, world_size=2, local_rank=r), torch.device("cpu"),
                     uniforms=("self_cond",)) for r in (0, 1)]
    u = single(3, torch.Generator().manual_seed(7))[0]["u_self_cond"]
    parts = [b(3, torch.Generator().manual_seed(7))[0]["u_self_cond"] for b in ranks]
    assert u.shape == (8,) and not torch.equal(parts[0], parts[1])
    torch.testing.assert_close(torch.cat(parts), u, rtol=0, atol=0)
    # a backbone that asks for nothing leaves the generator sequence as before
    plain = Batcher(data, cfg, DistInfo(), torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert "u_self_cond" not in plain(3, g1)[0]
    single(3, g2)
    assert not torch.equal(g1.get_state(), g2.get_state())


def test_resume_rejects_changed_config(run6, tmp_path):
    tmp, cfg, _ = run6
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)
    changed = tiny_config(tmp, **{"optim.lr": 0.5})
    with pytest.raises(CheckpointError, match="optim"):
        train(changed, out, store=make_store(), progress=False, resume=True)


def test_grad_accumulation_matches_full_batch(tmp_path):
    runs = []
    for accum in (1, 2):
        cfg = tiny_config(tmp_path, steps=3, checkpoint_every=0, grad_accum=accum, **{"optim.grad_clip": 0.0})
        r = train(cfg, tmp_path / f"out{accum}", store=make_store(), progress=False)
        runs.append((r, load_state_dict_file(r.checkpoint_dir / "model.safetensors")))
    (r1, w1), (r2, w2) = runs
    for s in (1, 2, 3):
        assert _losses(r1.history)[s] == pytest.approx(_losses(r2.history)[s], rel=1e-5)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def test_baseline_and_lamb(tmp_path):
    cfg = tiny_config(tmp_path, steps=2, checkpoint_every=0, **{"data.rewards": ["none"], "optim.name": "lamb"})
    r = train(cfg, tmp_path / "out", store=None, progress=False)
    _, meta = read_checkpoint_meta(r.checkpoint_dir)
    assert meta["reward_names"] == [] and meta["binner"] is None
    assert all(np.isfinite(h["loss"]) for h in r.history if "loss" in h)


def test_batcher_dropout_and_missing(tmp_path):
    from miro_core import registry
    from miro_core.training.data import prepare_data

    store = make_store(missing_every=4)
    cfg = structure(tiny_config(tmp_path, **{"data.reward_dropout": {"pick": 1.0}, "data.caption_dropout": 1.0}),
                    TrainConfig)
    te = registry("text_encoders").create("hash_text")
    ae = registry("autoencoders").create("pixel")
    data = prepare_data(cfg.data, te, ae, text_encoder_spec=cfg.model.text_encoder,
                        autoencoder_spec=cfg.model.autoencoder, store=store)
    assert torch.isnan(data.levels[::4, 0]).all() and not torch.isnan(data.levels[1::4]).any()
    b = Batcher(data, cfg, DistInfo(), torch.device("cpu"))(0, torch.Generator().manual_seed(0))[0]
    assert torch.isnan(b["levels"][:, 1]).all()  # pick dropped with p = 1
    empty, _ = te.encode([""])
    assert b["mask"].sum(1).eq(empty.shape[1]).all()  # every caption replaced by the empty caption
    torch.testing.assert_close(b["tokens"][:, : empty.shape[1]], empty.expand(len(b["tokens"]), -1, -1))
    # default: no dropout, levels come straight from the store rows
    cfg0 = structure(tiny_config(tmp_path, **{"data.caption_dropout": 0.0}), TrainConfig)
    b0 = Batcher(data, cfg0, DistInfo(), torch.device("cpu"))(0, torch.Generator().manual_seed(0))[0]
    rows = batch_indices(len(data), cfg0.seed, 0, cfg0.batch_size)
    torch.testing.assert_close(b0["levels"], data.levels[rows], equal_nan=True)
    # the cache was reused: one entry only
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def test_data_order_is_a_function_of_step():
    a = torch.cat([batch_indices(10, 3, s, 4) for s in range(5)])
    assert sorted(a[:10].tolist()) == list(range(10))  # first epoch is a permutation
    assert torch.equal(batch_indices(10, 3, 2, 4), a[8:12])


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, "constant", 0.0) == 1.0


@pytest.mark.parametrize(
    "over,store,match",
    [
        ({"data.rewards": ["aesthetc"]}, True, "Did you mean 'aesthetic'"),
        ({"data.rewards": ["aesthetic"]}, False, "no reward store"),
        ({"batch_size": 6, "grad_accum": 4}, True, "multiple"),
        ({"data.reward_dropout": {"clip": 0.1}}, True, "reward_dropout"),
        ({"optim.lr_typo": 1.0}, True, "unknown key"),
    ],
)
def test_config_errors(tmp_path, over, store, match):
    with pytest.raises(ConfigError, match=match):
        train(tiny_config(tmp_path, **over), tmp_path / "out", store=make_store() if store else None, progress=False)


def test_eval_fn_sample_grids_and_tensorboard(tmp_path):
    calls = []

    def eval_fn(pipe, step):
        img = pipe.generate(["a red square on the left"], num_steps=2, seed=0)
        calls.append((step, tuple(img.shape), pipe.reward_names))
        return {"mean_pixel": float(img.mean()), "step_echo": step}

    cfg = tiny_config(tmp_path, steps=2, checkpoint_every=0, eval_every=1, sample_every=2,
                      **{"sample.num_steps": 2, "sample.prompts": ["a blue square on the right", "x"]})
    r = train(cfg, tmp_path / "out", store=make_store(), progress=True, eval_fn=eval_fn)
    assert calls == [(1, (1, 3, 8, 8), ("aesthetic", "pick")), (2, (1, 3, 8, 8), ("aesthetic", "pick"))]
    evals = [h for h in r.history if "eval/mean_pixel" in h]
    assert [h["step"] for h in evals] == [1, 2] and evals[1]["eval/step_echo"] == 2.0
    assert (tmp_path / "out" / "samples" / "step_00000002.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "out" / "tb"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "eval/mean_pixel"} <= set(tags["scalars"])
    assert "samples" in tags["images"]
