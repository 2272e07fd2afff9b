"""MiroPipeline: from_checkpoint, guidance wiring, seeds, target validation, helpers, corrupt checkpoints."""

import json
import shutil

import pytest
import torch

from miro_core import CheckpointError, ConfigError
from miro_core.sampling import MiroPipeline, interpolate_rewards, isolate_reward
from miro_core.training import train

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")
PROMPTS = ["a red square on the left", "a blue square on the right"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samp")
    return train(tiny_config(tmp, steps=2, checkpoint_every=0), tmp / "out", store=make_store(), progress=False).checkpoint_dir


@pytest.fixture(scope="module")
def pipe(ckpt):
    return MiroPipeline.from_checkpoint(ckpt)


def test_images_and_seed(pipe):
    assert pipe.reward_names == ("aesthetic", "pick") and pipe.image_size == 8
    a = pipe(PROMPTS, num_inference_steps=3, seed=1, output_type="pt")
    assert a.shape == (2, 3, 8, 8) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, pipe.generate(PROMPTS, num_steps=3, seed=1), rtol=0, atol=0)
    assert not torch.equal(a, pipe(PROMPTS, num_inference_steps=3, seed=2, output_type="pt"))


def test_guidance_wiring(pipe):
    kw = dict(num_inference_steps=3, seed=0, output_type="pt")
    # scale 0 == no guidance; the guided run batches both branches (2B rows per model call)
    torch.testing.assert_close(pipe(PROMPTS, guidance_scale=0.0, **kw), pipe(PROMPTS, guidance="none", **kw))
    g = pipe(PROMPTS, guidance_scale=7.0, **kw)
    fn = pipe.last_model_fn
    assert fn.calls == 3 and fn.rows == 3 * 4
    assert not torch.allclose(g, pipe(PROMPTS, guidance="none", **kw))
    pipe(PROMPTS, solver="heun", **kw)
    assert pipe.last_model_fn.calls == 6
    pipe(PROMPTS, guidance_interval=(0.0, 0.5), **kw)  # t = 1, 2/3 outside; 1/3 inside
    assert pipe.last_model_fn.rows == 2 + 2 + 4
    # the positive targets matter; negative targets matter; text dropping matters
    lat = lambda **k: pipe(PROMPTS, **{**kw, "output_type": "latent"}, **k)  # noqa: E731
    base = lat()
    assert not torch.allclose(base, lat(reward_targets={"aesthetic": 0.0}))
    assert not torch.allclose(base, lat(negative_reward_targets={"pick": 1.0}))
    assert not torch.allclose(base, lat(drop_text_in_negative=True))
    torch.testing.assert_close(lat(guidance="multi_reward_cfg_text_drop"), lat(drop_text_in_negative=True))


def test_target_validation(pipe):
    with pytest.raises(ConfigError, match="aesthetic, pick"):
        pipe(PROMPTS, reward_targets={"hpsv2": 1.0}, num_inference_steps=1)
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        pipe(PROMPTS, negative_reward_targets={"pick": 1.5}, num_inference_steps=1)
    with pytest.raises(ConfigError, match="Unknown solver"):
        pipe(PROMPTS, solver="rk9", num_inference_steps=1)
    with pytest.raises(ConfigError, match="interval"):
        pipe(PROMPTS, guidance_interval=(0.8, 0.2), num_inference_steps=1)


def test_output_types_noise_and_batching(pipe):
    """diffusers-style call: output types, latents= as the initial noise, one generator per image, chunking."""
    kw = dict(num_inference_steps=2)
    noise = torch.randn(2, *pipe.latent_shape, generator=torch.Generator().manual_seed(4))
    lat = pipe(PROMPTS, latents=noise, output_type="latent", **kw)
    assert lat.shape == (2, *pipe.latent_shape)
    torch.testing.assert_close(pipe(PROMPTS, generator=torch.Generator().manual_seed(4), output_type="latent", **kw),
                               lat, rtol=0, atol=0)
    # one generator per image: image i gets the noise of generator i alone
    gens = [torch.Generator().manual_seed(4), torch.Generator().manual_seed(9)]
    per = pipe(PROMPTS, generator=gens, output_type="latent", **kw)
    solo = pipe(PROMPTS[:1], generator=torch.Generator().manual_seed(4), output_type="latent", **kw)
    torch.testing.assert_close(per[:1], solo, rtol=1e-5, atol=1e-6)
    # chunked sampling gives the images of one batch; num_images_per_prompt repeats prompts in order
    many = pipe(PROMPTS, num_images_per_prompt=3, seed=2, output_type="pt", **kw)
    chunked = pipe(PROMPTS, num_images_per_prompt=3, seed=2, output_type="pt", batch_size=2, **kw)
    assert many.shape == (6, 3, 8, 8)
    torch.testing.assert_close(chunked, many, rtol=1e-5, atol=1e-6)
    pil = pipe(PROMPTS, seed=2, **kw)
    assert len(pil) == 2 and pil[0].size == (8, 8) and pil[0].mode == "RGB"
    np_out = pipe(PROMPTS, seed=2, output_type="np", **kw)
    assert np_out.shape == (2, 8, 8, 3)
    with pytest.raises(ConfigError, match="latents must have shape"):
        pipe(PROMPTS, latents=noise[:1], **kw)
    with pytest.raises(ConfigError, match="one generator per image"):
        pipe(PROMPTS, generator=gens[:1], **kw)
    with pytest.raises(ConfigError, match="output_type"):
        pipe(PROMPTS, output_type="jpeg", **kw)


def test_save_pretrained_round_trip(pipe, ckpt, tmp_path):
    """save_pretrained writes config.json + model.safetensors (no optimizer state) that from_pretrained reloads
    to the same images; from_pretrained also accepts a training checkpoint."""
    out = pipe.save_pretrained(tmp_path / "pre")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "miro-pretrained" and cfg["reward_names"] == ["aesthetic", "pick"]
    again = MiroPipeline.from_pretrained(out)
    kw = dict(num_inference_steps=2, seed=3, output_type="pt")
    torch.testing.assert_close(again(PROMPTS, **kw), pipe(PROMPTS, **kw), rtol=0, atol=0)
    torch.testing.assert_close(MiroPipeline.from_pretrained(ckpt)(PROMPTS, **kw), pipe(PROMPTS, **kw), rtol=0, atol=0)
    # a later save replaces the directory atomically and nothing else is left beside it
    pipe.save_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        MiroPipeline.from_pretrained(tmp_path / "missing" / "dir")


def test_sampling_presets(pipe):
    """`official` = the text-dropping negative branch, `paper` = eq. 3; both w = 7, 50 steps."""
    from miro_core.sampling import SAMPLING_PRESETS

    assert SAMPLING_PRESETS["official"]["guidance"] == "multi_reward_cfg_text_drop"
    assert SAMPLING_PRESETS["paper"]["guidance"] == "multi_reward_cfg"
    assert all(p["guidance_scale"] == 7.0 and p["num_inference_steps"] == 50 for p in SAMPLING_PRESETS.values())
    kw = dict(num_inference_steps=2, seed=1, output_type="latent")
    try:
        official = pipe.use_sampling("official")(PROMPTS, **kw)
        torch.testing.assert_close(official, pipe(PROMPTS, guidance="multi_reward_cfg_text_drop", **kw))
        paper = pipe.use_sampling("paper")(PROMPTS, **kw)
        torch.testing.assert_close(paper, pipe(PROMPTS, guidance="multi_reward_cfg", **kw))
        assert not torch.allclose(official, paper)
        with pytest.raises(ConfigError, match="official"):
            pipe.use_sampling("offical")
    finally:
        pipe.use_sampling("paper")


def test_helpers():
    names = ["a", "b", "c"]
    assert isolate_reward(names, "b") == ({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 0.0, "c": 1.0})
    pos, neg = interpolate_rewards(names, "a", "c", 0.25)
    assert pos == {"a": 1.0, "b": 1.0, "c": 1.0} and neg == {"a": 0.25, "b": 1.0, "c": 0.75}
    with pytest.raises(ConfigError):
        isolate_reward(names, "d")


def test_rin_backbone_trains_and_samples(tmp_path):
    """The real self-conditioning RIN backbone through train -> checkpoint -> guided sampling."""
    rin = {"name": "rin", "options": {"interface_dim": 16, "latent_dim": 16, "num_latents": 4, "num_blocks": 1,
                                      "layers_per_block": 1, "heads": 2, "interface_heads": 2}}
    cfg = tiny_config(tmp_path, steps=2, checkpoint_every=0, **{"model.backbone": rin})
    r = train(cfg, tmp_path / "out", store=make_store(), progress=False)
    p = MiroPipeline.from_checkpoint(r.checkpoint_dir)
    assert p.model.stateful
    img = p(PROMPTS, num_inference_steps=2, seed=0, guidance_interval=(0.0, 0.6), output_type="pt")
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()
    assert p.last_model_fn.rows == 2 * 4  # a stateful backbone keeps the 2B batch outside the interval


def test_corrupt_and_incompatible_checkpoints(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        MiroPipeline.from_checkpoint(bad, use_ema=False)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        MiroPipeline.from_checkpoint(bad)
    inc = tmp_path / "inc"
    shutil.copytree(ckpt, inc)
    meta = json.loads((inc / "config.json").read_text())
    meta["train_config"]["model"]["conditioning"]["dim"] = 48
    (inc / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="incompatible"):
        MiroPipeline.from_checkpoint(inc)
    (inc / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        MiroPipeline.from_checkpoint(inc)
    with pytest.raises(CheckpointError, match="does not exist"):
        MiroPipeline.from_checkpoint(tmp_path / "nope")
