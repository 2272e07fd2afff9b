"""Parity with the official MIRO release (``miro-t2i`` 0.1.4, import name ``miro``), the acceptance test of the
faithful ``rin``: a small official-format checkpoint is built with the OFFICIAL classes at test time (every float
parameter perturbed, so zero-initialised paths such as the self-conditioning LayerNorm are exercised; a tiny
random T5 and VAE saved in their real formats), loaded with our ``from_pretrained``, and compared in fp32 on CPU
with max absolute difference <= 1e-5."""

from __future__ import annotations

import copy
import json

import attrs
import numpy as np
import pytest
import torch

from miro.models.networks.rin import CADRINTextCond
from miro.models.postprocessing import VAEPostProcessing
from miro.models.preconditioning import FlowPrecond
from miro.models.preprocessing import PrecomputedSDLatentPreconditioning
from test_autoencoders import make_tiny_vae
from test_text_encoders import make_tiny_t5

from miro_core.pretrained import OFFICIAL_REWARD_ALIASES
from miro_core.sampling import MiroPipeline

ATOL = 1e-5
#: a subset of the official keys in a non-canonical order: names and order must both be mapped
KEYS = ["pick_a_score_score", "aesthetic_score", "clip_score"]
OURS = [OFFICIAL_REWARD_ALIASES[k] for k in KEYS]
NET = dict(data_size=8, num_input_channels=4, patch_size=2, data_dim=32, num_latents=8, latents_dim=64, num_blocks=2,
           num_processing_layers=2, read_write_heads=4, compute_heads=8, latent_mlp_multiplier=4,
           data_mlp_multiplier=4, label_dim=32, num_cond_tokens=77, num_text_registers=4, coherence_keys=KEYS,
           coherence_dropout=0.0, dropout_strategy="binomial", use_cond_rin_block=True,
           concat_cond_token_to_latents=False, use_self_conditioning=True)
PRECOND = dict(num_latents=8, latents_dim=64, do_normalization=True, sigma_data=0.5, do_gradnorm_reweighting=True,
               logvar_channels=16, logvar_mlp_layers=0)
PROMPTS = ["a red circle", "two blue squares on the left of a green star"]


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def make_official_release(root):
    """An official-format directory written with the official classes, plus tiny T5 / VAE directories."""
    torch.manual_seed(1)
    net = CADRINTextCond(**NET)
    pre = FlowPrecond(**PRECOND)
    data_pre = PrecomputedSDLatentPreconditioning(channel_wise_normalisation=True, model_type="sdxl")
    post = VAEPostProcessing(channel_wise_normalisation=True, model_type="sdxl")
    _perturb(net, 2)
    _perturb(pre, 3)
    state = {**{f"network.{k}": v for k, v in net.state_dict().items()},
             **{f"preconditioning.{k}": v for k, v in pre.state_dict().items()},
             **{f"data_preprocessing.{k}": v for k, v in data_pre.state_dict().items()},
             **{f"postprocessing.{k}": v for k, v in post.state_dict().items()}}
    release = root / "release"
    release.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(release / "model.safetensors"))
    config = {"network": NET, "preconditioning": PRECOND,
              "data_preprocessing": {"channel_wise_normalisation": True, "model_type": "sdxl", "vae_sample": True},
              "postprocessing": {"channel_wise_normalisation": True, "model_type": "sdxl"},
              "scheduler": {"start": 1, "end": 0, "clip_min": 1e-9}, "coherence_keys": KEYS,
              "sampler_defaults": {"num_steps": 50, "cfg_rate": 7.0}, "data_resolution": 8, "img_resolution": 16,
              "max_text_len": 77, "model_type": "sdxl", "vae_repo": "stabilityai/sdxl-vae",
              "text_encoder_repo": "google/flan-t5-xl"}
    (release / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(4)
    np.save(release / "uncond_embedding.npy", (torch.randn(1, 32, generator=g) * 0.3).numpy())
    return release, make_tiny_t5(root / "t5src"), make_tiny_vae(root / "vaesrc"), net.eval(), pre.eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    return make_official_release(root)


@pytest.fixture(scope="module")
def ours(release):
    path, t5, vae, _, _ = release
    return MiroPipeline.from_pretrained(path, text_encoder=t5, vae=vae)


def _inputs(seed=0, batch=3, length=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    emb = torch.randn(batch, length, 32, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    levels = torch.rand(batch, len(KEYS), generator=g)
    return x, emb, mask, levels


def _official_batch(x, gamma, emb, mask, levels, prev=None, drop=()):
    batch = {"y": x.clone(), "gamma": gamma, "text_tokens_embeddings": emb, "text_tokens_mask": mask}
    if prev is not None:
        batch["previous_latents"] = prev
    for j, k in enumerate(KEYS):
        if k not in drop:
            batch[f"{k}_coherence"] = levels[:, j]
    return batch


def _max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def test_loads_as_rin_with_aliased_rewards(ours):
    assert ours.reward_names == tuple(OURS) == ("pick", "aesthetic", "jina_clip")
    assert type(ours.model.backbone).__name__ == "RIN"
    assert type(ours.model.conditioning).__name__ == "CADConditioning"
    assert ours.defaults["guidance"] == "multi_reward_cfg_text_drop" and ours.defaults["guidance_scale"] == 7.0
    assert ours.negative_text is not None and tuple(ours.negative_text.text_tokens.shape) == (1, 1, 32)


@pytest.mark.parametrize("gamma", [0.03, 0.4, 0.97])
def test_raw_network_output(release, ours, gamma):
    """The network without preconditioning, zero previous latents, several times."""
    net = release[3]
    raw = copy.deepcopy(ours.model)
    raw.backbone.config = attrs.evolve(raw.backbone.config, precondition=False)
    x, emb, mask, levels = _inputs()
    g = torch.full((3,), gamma)
    with torch.no_grad():
        want, _ = net(_official_batch(x, g, emb, mask, levels, prev=torch.zeros(3, 8, 64)))
        raw.reset_state()
        got = raw(x, 1 - g, emb, mask, levels)
    assert want.abs().max() > 0.1
    assert _max_diff(got, want) <= ATOL


def test_preconditioned_first_and_self_conditioned_second_step(release, ours):
    net, pre = release[3], release[4]
    x, emb, mask, levels = _inputs(1)
    x2 = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    g1, g2 = torch.full((3,), 0.2), torch.full((3,), 0.45)
    with torch.no_grad():
        f1, z1 = pre(net, _official_batch(x, g1, emb, mask, levels))  # no previous latents: zeros
        f2, _ = pre(net, _official_batch(x2, g2, emb, mask, levels, prev=z1))
        ours.model.reset_state()
        v1 = ours.model(x, 1 - g1, emb, mask, levels)
        v2 = ours.model(x2, 1 - g2, emb, mask, levels)  # reuses the latents of the first call
    assert _max_diff(v1, f1) <= ATOL
    assert _max_diff(v2, f2) <= ATOL
    assert _max_diff(f2, pre(net, _official_batch(x2, g2, emb, mask, levels))[0]) > 1e-3  # step 2 did use z1


def test_nan_and_absent_rewards(release, ours):
    """Official eval: a NaN level and a key absent from the batch both give the position-only token."""
    net, pre = release[3], release[4]
    x, emb, mask, levels = _inputs(2)
    g = torch.full((3,), 0.6)
    nan_levels = levels.clone()
    nan_levels[:, 1] = float("nan")
    with torch.no_grad():
        f_nan, _ = pre(net, _official_batch(x, g, emb, mask, nan_levels))
        f_absent, _ = pre(net, _official_batch(x, g, emb, mask, levels, drop=(KEYS[2],)))
        f_zero, _ = pre(net, _official_batch(x, g, emb, mask, torch.zeros_like(levels)))
        ours.model.reset_state()
        v_nan = ours.model(x, 1 - g, emb, mask, nan_levels)
        absent = levels.clone()
        absent[:, 2] = float("nan")
        ours.model.reset_state()
        v_absent = ours.model(x, 1 - g, emb, mask, absent)
    assert _max_diff(v_nan, f_nan) <= ATOL
    assert _max_diff(v_absent, f_absent) <= ATOL
    assert _max_diff(f_nan, f_zero) > 1e-3  # missing is not level 0


class _Capture(torch.nn.Module):
    """Stands in for the official VAE post-processing: keeps the pre-VAE latents."""

    def forward(self, x):
        self.latents = x.detach().clone()
        return np.zeros((x.shape[0], 4, 4, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def official_pipe(release, monkeypatch_module):
    import miro.pipeline as official

    path, t5, vae, _, _ = release
    monkeypatch_module.setattr(official, "DEFAULT_VAE", str(vae))
    return official.MiroPipeline.from_pretrained(str(path), text_encoder=str(t5))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


CASES = [
    ("defaults", {}, {}, 7.0),
    ("custom targets", {"pick_a_score_score": 0.25, "aesthetic_score": 1.0, "clip_score": 0.6},
     {"pick_a_score_score": 0.9, "aesthetic_score": 0.1, "clip_score": 0.3}, 3.0),
    ("no guidance", {"aesthetic_score": 0.5}, {}, 0.0),
]


def _ours_targets(t):
    return {OFFICIAL_REWARD_ALIASES[k]: v for k, v in t.items()}


@pytest.mark.parametrize("name,pos,neg,w", CASES, ids=[c[0] for c in CASES])
def test_pipeline_latents_after_four_euler_steps(official_pipe, ours, name, pos, neg, w):
    official_pipe.postprocessing = _Capture()
    official_pipe(PROMPTS, reward_targets=pos, negative_reward_targets=neg, num_inference_steps=4,
                  guidance_scale=w, generator=torch.Generator().manual_seed(11))
    want = official_pipe.postprocessing.latents
    got = ours(PROMPTS, reward_targets=_ours_targets(pos), negative_reward_targets=_ours_targets(neg),
               num_inference_steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(11),
               output_type="latent")
    assert want.abs().max() > 0.1
    assert _max_diff(got, want) <= ATOL, name
    # the same initial noise passed explicitly gives the same result
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    again = ours(PROMPTS, reward_targets=_ours_targets(pos), negative_reward_targets=_ours_targets(neg),
                 num_inference_steps=4, guidance_scale=w, latents=noise, output_type="latent")
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_decoded_images_match_the_official_uint8_within_one_level(release, official_pipe, ours):
    """Our per-channel VAE normalisation equals the release's; the release truncates to uint8, we keep floats."""
    import miro.pipeline as official
    from diffusers import AutoencoderKL
    from miro.models.postprocessing import VAEDecoderPostProcessing

    vae = AutoencoderKL.from_pretrained(str(release[2]))
    official_pipe.postprocessing = VAEDecoderPostProcessing(vae=vae, channel_wise_normalisation=True, model_type="sdxl")
    assert official.DEFAULT_VAE == str(release[2])
    want = np.stack([np.asarray(im) for im in official_pipe(PROMPTS, num_inference_steps=2,
                                                            generator=torch.Generator().manual_seed(3))])
    got = ours(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt")
    got_u8 = (got.permute(0, 2, 3, 1).numpy() * 255).astype(np.int64)  # truncation, as the release does
    assert want.shape == got_u8.shape
    assert np.abs(got_u8 - want.astype(np.int64)).max() <= 1


def test_convert_official_reloads_to_the_same_outputs(release, ours, tmp_path):
    from miro_core.cli import main

    path, t5, vae, _, _ = release
    out = tmp_path / "converted"
    assert main(["convert", "official", str(path), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "miro-pretrained" and cfg["reward_names"] == OURS
    converted = MiroPipeline.from_pretrained(out, text_encoder=t5, vae=vae)
    kw = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="latent")
    a = ours(PROMPTS, **kw)
    kw["generator"] = torch.Generator().manual_seed(5)
    torch.testing.assert_close(converted(PROMPTS, **kw), a, rtol=0, atol=0)
    # and save_pretrained of the converted pipeline round-trips too
    again = MiroPipeline.from_pretrained(converted.save_pretrained(tmp_path / "resaved"), text_encoder=t5, vae=vae)
    kw["generator"] = torch.Generator().manual_seed(5)
    torch.testing.assert_close(again(PROMPTS, **kw), a, rtol=0, atol=0)


def test_paper_preset_has_the_released_parameter_count():
    """The ``paper`` recipe builds exactly the released network: 360,411,664 float parameters (backbone +
    conditioning), counted here with the official classes too."""
    from miro_core.model import build_model
    from miro_core.training.recipes import load_recipe

    recipe = load_recipe("paper")
    official = CADRINTextCond(
        data_size=32, num_input_channels=4, patch_size=2, data_dim=512, num_latents=256, latents_dim=1024,
        num_blocks=4, num_processing_layers=4, read_write_heads=16, compute_heads=32, label_dim=2048,
        num_cond_tokens=77, num_text_registers=16, coherence_keys=list(OFFICIAL_REWARD_ALIASES),
        use_cond_rin_block=True, concat_cond_token_to_latents=False, use_self_conditioning=True)
    n_official = sum(p.numel() for p in official.parameters() if p.is_floating_point())
    model = build_model(recipe["model"], list(OFFICIAL_REWARD_ALIASES.values()), 2048, 4, 32)
    n_ours = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("loss_weighting."))
    assert n_official == 360_411_664
    assert n_ours == n_official


def test_variant_subfolder_and_errors(release, tmp_path):
    """``variant=`` picks a subfolder (the official ablations repository layout); bad inputs name the fix."""
    import shutil

    from miro_core import CheckpointError

    path, t5, vae, _, _ = release
    root = tmp_path / "ablations"
    shutil.copytree(path, root / "miro-no-clip")
    pipe = MiroPipeline.from_pretrained(root, variant="miro-no-clip", text_encoder=t5, vae=vae)
    assert pipe.reward_names == tuple(OURS)
    with pytest.raises(CheckpointError, match="variants there: miro-no-clip"):
        MiroPipeline.from_pretrained(root, variant="nope")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    from safetensors.torch import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["network.mystery.weight"] = torch.zeros(2)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="network.mystery.weight"):
        MiroPipeline.from_pretrained(broken, text_encoder=t5, vae=vae)
    del state["network.mystery.weight"]
    save_file(state, str(broken / "model.safetensors"))
    # a pickled object array would run code when unpickled: it is refused, never loaded
    np.save(broken / "uncond_embedding.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="not a plain numpy array"):
        MiroPipeline.from_pretrained(broken, text_encoder=t5, vae=vae)
    (broken / "uncond_embedding.npy").unlink()
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="uncond_embedding.npy"):
        MiroPipeline.from_pretrained(broken, text_encoder=t5, vae=vae)


@pytest.mark.slow
def test_paper_scale_network_parity():
    """The released configuration itself (360M parameters, random perturbed weights, 7 rewards, FLAN-T5-XL width):
    official CADRINTextCond + FlowPrecond vs our converted rin, preconditioned step 1 and self-conditioned step 2."""
    from miro.models.networks.rin import CADRINTextCond as Net
    from miro.models.preconditioning import FlowPrecond as Pre

    from miro_core import structure
    from miro_core.model import ModelConfig, build_model
    from miro_core.pretrained import official_to_miro
    from miro_core.training.checkpoint import load_into

    keys = list(OFFICIAL_REWARD_ALIASES)
    net_cfg = dict(data_size=32, num_input_channels=4, patch_size=2, data_dim=512, num_latents=256, latents_dim=1024,
                   num_blocks=4, num_processing_layers=4, read_write_heads=16, compute_heads=32, label_dim=2048,
                   num_cond_tokens=77, num_text_registers=16, coherence_keys=keys, use_cond_rin_block=True,
                   concat_cond_token_to_latents=False, use_self_conditioning=True)
    pre_cfg = dict(num_latents=256, latents_dim=1024, do_normalization="noise_driven", sigma_data=0.5,
                   do_gradnorm_reweighting=True, logvar_channels=128)
    torch.manual_seed(0)
    net, pre = Net(**net_cfg).eval(), Pre(**pre_cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*net.parameters(), *pre.parameters()]:
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    state = {**{f"network.{k}": v for k, v in net.state_dict().items()},
             **{f"preconditioning.{k}": v for k, v in pre.state_dict().items()}}
    cfg, ours_state = official_to_miro({"network": net_cfg, "preconditioning": pre_cfg, "coherence_keys": keys}, state)
    del state
    model = build_model(structure(cfg["model"], ModelConfig), cfg["reward_names"], 2048, 4, 32)
    load_into(model, ours_state, "paper-scale release")
    model.eval()
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("loss_weighting.")) == 360_411_664
    x, emb = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 20, 2048, generator=g) * 0.2
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 9:] = False
    levels = torch.rand(2, 7, generator=g)
    batch = {"y": x.clone(), "gamma": torch.full((2,), 0.3), "text_tokens_embeddings": emb, "text_tokens_mask": mask,
             **{f"{k}_coherence": levels[:, j] for j, k in enumerate(keys)}}
    with torch.no_grad():
        f1, z1 = pre(net, dict(batch))
        f2, _ = pre(net, {**batch, "y": x * 0.9, "gamma": torch.full((2,), 0.5), "previous_latents": z1})
        model.reset_state()
        v1 = model(x, torch.full((2,), 0.7), emb, mask, levels)
        v2 = model(x * 0.9, torch.full((2,), 0.5), emb, mask, levels)
    assert f1.abs().max() > 0.5
    assert _max_diff(v1, f1) <= ATOL and _max_diff(v2, f2) <= ATOL


def test_official_release_through_miro_eval(release, tmp_path):
    """`miro eval --pretrained RELEASE` evaluates the official release with the same code as any other model."""
    from miro_core.cli import main

    path, t5, vae, _, _ = release
    out = tmp_path / "eval"
    assert main(["eval", "--suite", "rewards", "--pretrained", str(path), "--text-encoder", str(t5), "--vae", str(vae),
                 "--out", str(out), "--no-progress", "--set", "rewards=['world_vividness']",
                 "--set", "prompts=['a red circle', 'two blue squares']", "--set", "sampling.num_steps=2",
                 "--set", "device='cpu'"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    flat = json.dumps(metrics["metrics"])
    assert "world_vividness" in flat and metrics["source"]["pretrained"]
