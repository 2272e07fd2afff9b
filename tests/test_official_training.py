"""The training side of the official recipe, checked against the official ``miro-t2i`` code: LAMB with its
parameter groups, the learned log-variance loss weighting, the paper recipe, and ``--init-from`` a release."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from miro.models.preconditioning import FlowPrecond
from miro.utils.optimizers import Lamb as OfficialLamb
from test_official_parity import make_official_release
from transformers.trainer_pt_utils import get_parameter_names

from miro_core import structure
from miro_core.cad_conditioning import CADConditioning
from miro_core.model import LogVarWeighting
from miro_core.training import TrainConfig
from miro_core.training.loop import make_optimizer
from miro_models.backbones._layers import RMSNorm

from _miro_train_fakes import make_store, tiny_config


def _model(seed=0):
    torch.manual_seed(seed)
    cond = CADConditioning(CADConditioning.Config(rewards=("a", "b"), text_dim=8, dim=16, fourier_dim=8,
                                                  num_registers=2, context_layers=1, num_heads=4))
    return nn.ModuleDict({"conditioning": cond, "norm": RMSNorm(16), "loss_weighting": LogVarWeighting(8)})


def _loss(model, g):
    tokens = torch.randn(3, 5, 8, generator=g)
    ctx, _ = model["conditioning"](tokens, torch.ones(3, 5, dtype=torch.bool), torch.rand(3, 2, generator=g))
    return (model["norm"](ctx) ** 2).mean() + model["loss_weighting"](torch.rand(3, generator=g)).pow(2).mean()


def test_lamb_matches_the_official_optimizer_and_groups():
    """Our make_optimizer (lamb) == the official Lamb(decouple=False) over the official groups: decayed = not in a
    LayerNorm / RMSNorm / Embedding and no "bias" in the name, plus the preconditioning (loss weighting); trust
    ratio on the decayed group only."""
    ours_model, ref_model = _model(), _model()
    cfg = structure({"optim": {"name": "lamb", "lr": 1e-2, "betas": [0.9, 0.999], "weight_decay": 0.01,
                               "eps": 1e-8}}, TrainConfig)
    ours = make_optimizer(ours_model, cfg)
    net = nn.ModuleDict({"conditioning": ref_model["conditioning"], "norm": ref_model["norm"]})
    decay = [n for n in get_parameter_names(net, [nn.LayerNorm, nn.Embedding, RMSNorm]) if "bias" not in n]
    groups = [{"params": [p for n, p in net.named_parameters() if n in decay]
               + list(ref_model["loss_weighting"].parameters()), "weight_decay": 0.01, "layer_adaptation": True},
              {"params": [p for n, p in net.named_parameters() if n not in decay], "weight_decay": 0.0,
               "layer_adaptation": False}]
    ref = OfficialLamb(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decouple=False)
    assert sum(len(g["params"]) for g in ref.param_groups) == len(list(ref_model.parameters()))
    assert [len(g["params"]) for g in ours.param_groups] == [len(g["params"]) for g in ref.param_groups]
    pairs = list(zip(ours_model.named_parameters(), ref_model.parameters()))
    for step in range(6):
        # same parameters and gradients on both sides each step; each optimizer keeps its own moments, so the
        # bias correction, the moments and the trust ratio are compared over several steps (without letting
        # float rounding compound through a chaotic trajectory)
        ours.zero_grad()
        _loss(ours_model, torch.Generator().manual_seed(step)).backward()
        with torch.no_grad():
            for (_, a), b in pairs:
                b.copy_(a)
                b.grad = None if a.grad is None else a.grad.clone()
        ours.step()
        ref.step()
        for (name, a), b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"step {step} {n}: {m}")
    moved = sum(not torch.equal(a, _model().state_dict()[name]) for (name, a), _ in pairs)
    assert moved > 10


def test_learned_weighting_matches_the_official_loss():
    """``l / exp(logvar) + logvar`` with logvar from the official FlowPrecond.logvar_proj on gamma = 1 - t."""
    torch.manual_seed(0)
    pre = FlowPrecond(num_latents=4, latents_dim=8, logvar_channels=16)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p))
    ours = LogVarWeighting(16)
    ours.load_state_dict({"fourier.freqs": pre.logvar_proj[0].freqs, "fourier.phases": pre.logvar_proj[0].phases,
                          "fc.weight": pre.logvar_proj[1].weight, "fc.bias": pre.logvar_proj[1].bias})
    gamma = torch.tensor([0.05, 0.5, 0.9])
    per_element = torch.rand(3, 4, 2, 2)
    logvar = pre.compute_logvar({"y": torch.zeros(3, 4, 2, 2), "gamma": gamma}).reshape(3, 1, 1, 1)
    want = per_element / logvar.exp() + logvar
    torch.testing.assert_close(ours.weight(per_element, 1 - gamma), want, rtol=1e-6, atol=1e-6)
    assert logvar.abs().max() > 0.1


def test_paper_recipe_is_a_valid_config_with_the_official_settings():
    from miro_core.training.recipes import load_recipe

    cfg = structure(load_recipe("paper"), TrainConfig)
    assert cfg.model.backbone.name == "rin" and cfg.model.loss_weighting == "learned"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == ("lamb", 1e-3, (0.9, 0.999), 0.01)
    assert (cfg.optim.warmup_steps, cfg.optim.cosine_rate, cfg.optim.ema_warmup) == (5000, 0.8, False)
    assert cfg.data.caption_dropout == 0.0 and cfg.batch_size == 1024
    # the release's channel statistics: our kl scale = 2 sigma, shift = mu
    assert cfg.model.autoencoder.options["scale"][0] == pytest.approx(2 * 7.8518)


@pytest.fixture
def host_with_t5_kl():
    from _miro_train_fakes import make_host
    from miro_core._plugins import reset_plugins

    reset_plugins(make_host(with_rin=True, with_binner=True, extra=("miro_models.text_encoders.t5",
                                                                    "miro_models.autoencoders.kl")))
    yield
    reset_plugins(None)


@pytest.mark.usefixtures("host_with_t5_kl")
def test_init_from_an_official_release_keeps_known_reward_tokens(tmp_path):
    """miro train --init-from RELEASE: the architecture comes from the release; rewards it knows keep their
    embedder and position, a new reward starts fresh, and the report says which."""
    from miro_core.cli import main
    from miro_core.pretrained import read_pretrained
    from miro_core.training import train
    from miro_core.training.checkpoint import load_state_dict_file

    release, t5, vae, _, _ = make_official_release(tmp_path)
    model_cfg, rewards, state = read_pretrained(release)
    assert rewards == ["pick", "aesthetic", "jina_clip"]
    model_cfg["text_encoder"]["options"]["model"] = str(t5)
    model_cfg["autoencoder"]["options"]["model"] = str(vae)
    cfg = tiny_config(tmp_path, steps=1, checkpoint_every=0, **{"optim.lr": 0.0, "optim.warmup_steps": 0,
                                                                 "data.image_size": 16})
    cfg["model"] = model_cfg
    cfg["init_from"] = str(release)
    cfg["data"]["rewards"] = ["aesthetic", "pick"]
    result = train(cfg, tmp_path / "out", store=make_store(), progress=False)
    assert result.init_report["kept"] == ["aesthetic", "pick"] and result.init_report["dropped"] == ["jina_clip"]
    assert json.loads((tmp_path / "out" / "init_report.json").read_text())["new"] == []
    w = load_state_dict_file(result.checkpoint_dir / "model.safetensors")
    # lr 0: the weights are the release's, with the reward rows re-ordered by name (ours: aesthetic=0, pick=1)
    torch.testing.assert_close(w["conditioning.position"][0], state["conditioning.position"][1])
    torch.testing.assert_close(w["conditioning.embedders.1.fc1.weight"], state["conditioning.embedders.0.fc1.weight"])
    torch.testing.assert_close(w["backbone.blocks.1.write.ffn.w3.weight"], state["backbone.blocks.1.write.ffn.w3.weight"])
    torch.testing.assert_close(w["loss_weighting.fc.weight"], state["loss_weighting.fc.weight"])
    # a model that does not fit is a clear error naming the misfit
    bad = dict(cfg, model={**model_cfg, "backbone": {"name": "rin", "options": {**model_cfg["backbone"]["options"],
                                                                                "interface_dim": 48}}})
    with pytest.raises(Exception, match="do not fit"):
        train(bad, tmp_path / "bad", store=make_store(), progress=False)
    assert main(["train", "--init-from", str(release), "--print-config", "--out", str(tmp_path / "x")]) == 0


@pytest.mark.usefixtures("host_with_t5_kl")
def test_init_from_a_checkpoint_with_a_new_reward(tmp_path):
    """A reward the pretrained model does not know gets the fresh initialisation of a seeded build; the known one
    keeps its trained token; everything else is the pretrained EMA weights."""
    from miro_core.model import build_model
    from miro_core.training import train
    from miro_core.training.checkpoint import load_state_dict_file

    rin = {"name": "rin", "options": {"interface_dim": 16, "latent_dim": 16, "num_latents": 4, "num_blocks": 1,
                                      "layers_per_block": 1, "heads": 2, "interface_heads": 2}}
    first = train(tiny_config(tmp_path, steps=3, checkpoint_every=0, **{"model.backbone": rin,
                                                                          "data.rewards": ["aesthetic"]}),
                  tmp_path / "first", store=make_store(), progress=False)
    pre = load_state_dict_file(first.checkpoint_dir / "ema.safetensors")
    cfg = tiny_config(tmp_path, steps=1, checkpoint_every=0, **{"model.backbone": rin, "optim.lr": 0.0,
                                                                 "optim.warmup_steps": 0})
    cfg["init_from"] = str(first.checkpoint_dir)
    second = train(cfg, tmp_path / "second", store=make_store(), progress=False)
    assert second.init_report == {"source": str(first.checkpoint_dir), "kept": ["aesthetic"], "new": ["pick"],
                                  "dropped": []}
    w = load_state_dict_file(second.checkpoint_dir / "model.safetensors")
    torch.manual_seed(0)  # the loop builds the model under manual_seed(seed) with seed 0
    fresh = build_model(structure(cfg, TrainConfig).model, ["aesthetic", "pick"], 16, 3, 8).state_dict()
    torch.testing.assert_close(w["conditioning.embedders.0.fc1.weight"], pre["conditioning.embedders.0.fc1.weight"])
    torch.testing.assert_close(w["conditioning.position"][0], pre["conditioning.position"][0])
    torch.testing.assert_close(w["conditioning.embedders.1.fc1.weight"], fresh["conditioning.embedders.1.fc1.weight"])
    torch.testing.assert_close(w["conditioning.position"][1], fresh["conditioning.position"][1])
    assert not torch.equal(w["conditioning.position"][1], pre["conditioning.position"][0])
    torch.testing.assert_close(w["backbone.latents"], pre["backbone.latents"])


def test_sample_cli_from_an_official_release_and_bf16(tmp_path):
    """`miro sample --pretrained RELEASE --text-encoder T5 --vae VAE` writes images with the release's defaults;
    a bf16 pipeline (torch_dtype) samples on CPU."""
    from PIL import Image

    from miro_core.cli import main
    from miro_core.sampling import MiroPipeline

    release, t5, vae, _, _ = make_official_release(tmp_path)
    out = tmp_path / "samples"
    assert main(["sample", "--pretrained", str(release), "--text-encoder", str(t5), "--vae", str(vae),
                 "--prompt", "a red circle", "--n", "2", "--steps", "2", "--target", "pick=0.5",
                 "--out", str(out)]) == 0
    side = json.loads((out / "sample_0001.json").read_text())
    assert side["guidance_strategy"] == "multi_reward_cfg_text_drop" and side["guidance_scale"] == 7.0
    assert side["positive_targets"] == {"pick": 0.5, "aesthetic": 1.0, "jina_clip": 1.0}
    assert Image.open(out / "sample_0000.png").size == (16, 16)
    pipe = MiroPipeline.from_pretrained(release, text_encoder=t5, vae=vae, torch_dtype=torch.bfloat16)
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    lat = pipe(["a red circle"], num_inference_steps=2, seed=0, output_type="latent")
    assert lat.dtype == torch.float32 and torch.isfinite(lat).all()
