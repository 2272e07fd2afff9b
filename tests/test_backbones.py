"""Backbones ``rin``, ``dit`` and ``unet``: contract, layers, self-conditioning, masking, overfitting a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from miro_core import registry
from miro_core.testing import BackboneContract, unzero_parameters
from miro_models.backbones._layers import Attention, RMSNorm, patchify, timestep_features, unpatchify

RIN_TINY = {"image_size": 16, "context_dim": 32, "interface_dim": 32, "latent_dim": 48, "num_latents": 8,
            "num_blocks": 2, "layers_per_block": 1, "heads": 4, "interface_heads": 2}
DIT_TINY = {"image_size": 16, "context_dim": 32, "hidden_dim": 48, "depth": 2, "heads": 4}
UNET_TINY = {"image_size": 16, "context_dim": 32, "patch_size": 1, "base_channels": 16, "channel_mult": (1, 2),
             "num_res_blocks": 1, "attention_resolutions": (16, 8), "heads": 2, "num_groups": 4}
UNET_PATCHED = {**UNET_TINY, "patch_size": 2, "attention_resolutions": (8,)}


_unzero = unzero_parameters


class TestRINContract(BackboneContract):
    backbone_name = "rin"
    options = RIN_TINY


class TestDiTContract(BackboneContract):
    backbone_name = "dit"
    options = DIT_TINY


class TestUNetContract(BackboneContract):
    backbone_name = "unet"
    options = UNET_TINY


class TestUNetPatchedContract(BackboneContract):
    backbone_name = "unet"
    options = UNET_PATCHED


def _inputs(batch=3, shape=(3, 16, 16), ctx_len=6, ctx_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, *shape, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, ctx_len, ctx_dim, generator=g), torch.ones(batch, ctx_len, dtype=torch.bool))


# -- layers -----------------------------------------------------------------------------------------------
def test_patchify_roundtrip():
    x = torch.randn(2, 4, 8, 12)
    tok = patchify(x, 2)
    assert tok.shape == (2, 24, 16)
    torch.testing.assert_close(unpatchify(tok, 2, 4, 8, 12), x)
    # first patch = top-left 2x2 of every channel
    torch.testing.assert_close(tok[0, 0].view(4, 2, 2), x[0, :, :2, :2])


def test_rmsnorm_formula():
    x = torch.randn(3, 5, 8)
    n = RMSNorm(8)
    with torch.no_grad():
        n.weight.copy_(torch.linspace(0.5, 2, 8))
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * n.weight
    torch.testing.assert_close(n(x), ref)


def test_attention_matches_manual_and_masks():
    torch.manual_seed(0)
    att = Attention(16, 2, kv_dim=8, qk_norm=True)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = att(x, ctx, mask)
    # manual reference
    q = att.q(x).view(2, 3, 2, 8).transpose(1, 2)
    k, v = att.kv(ctx).view(2, 5, 2, 2, 8).permute(2, 0, 3, 1, 4)
    q, k = att.q_norm(q), att.k_norm(k)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    ref = att.out((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # a row whose keys are all masked contributes nothing (no NaN)
    none = torch.zeros(2, 5, dtype=torch.bool)
    out0 = att(x, ctx, none)
    assert torch.isfinite(out0).all()
    torch.testing.assert_close(out0, att.out.bias.expand_as(out0))


def test_timestep_features_distinguish_times():
    f = timestep_features(torch.tensor([0.0, 0.001, 0.5, 1.0]), 64)
    assert f.shape == (4, 64)
    assert torch.cdist(f, f).fill_diagonal_(1e9).min() > 0.1


# -- shared behaviour ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("rin", RIN_TINY), ("dit", DIT_TINY), ("unet", UNET_TINY)])
def test_eval_deterministic_and_time_and_context_matter(name, opts):
    torch.manual_seed(0)
    extra = {"eval_self_cond": False} if name == "rin" else {}  # rin: no state carried between calls
    model = _unzero(registry("backbones").create(name, {**opts, **extra})).eval()
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        a = model(x, t, ctx, mask)
        b = model(x, t, ctx, mask)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert (model(x, 1 - t, ctx, mask) - a).abs().max() > 1e-4
        assert (model(x, t, ctx.flip(0), mask) - a).abs().max() > 1e-4
        # a fully masked context is allowed (no text, no rewards) and stays finite
        assert torch.isfinite(model(x, t, ctx, torch.zeros_like(mask))).all()


@pytest.mark.parametrize("name,opts", [("rin", RIN_TINY), ("dit", DIT_TINY), ("unet", UNET_TINY)])
def test_padding_length_invariance(name, opts):
    """Appending masked padding to the context leaves the output unchanged."""
    torch.manual_seed(0)
    model = _unzero(registry("backbones").create(name, {**opts, **({"eval_self_cond": False} if name == "rin" else {})})).eval()
    x, t, ctx, mask = _inputs()
    pad_ctx = torch.cat([ctx, torch.randn(3, 4, 32) * 100], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx, mask), model(x, t, pad_ctx, pad_mask), atol=1e-5, rtol=1e-4)


def test_wrong_input_size_raises():
    model = registry("backbones").create("dit", dict(DIT_TINY))
    x, t, ctx, mask = _inputs(shape=(3, 8, 8))
    with pytest.raises(ValueError, match="16x16"):
        model(x, t, ctx, mask)


# -- RIN self-conditioning ----------------------------------------------------------------------------------
def test_rin_eval_self_conditioning_state():
    torch.manual_seed(0)
    model = _unzero(registry("backbones").create("rin", dict(RIN_TINY))).eval()
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        first = model(x, t, ctx, mask)
        second = model(x, t, ctx, mask)  # reuses the latents of the first call
        assert (second - first).abs().max() > 1e-5
        model.reset_state()
        torch.testing.assert_close(model(x, t, ctx, mask), first)
        # a different batch size never reuses stale latents
        model.reset_state()
        one = model(x[:1], t[:1], ctx[:1], mask[:1])
        model(x, t, ctx, mask)
        torch.testing.assert_close(model(x[:1], t[:1], ctx[:1], mask[:1]), one)


def test_rin_training_self_conditioning_follows_the_drawn_uniforms():
    """Training: samples whose uniform is below self_cond_rate start from the latents of a no-grad first pass at
    the same (x_t, t); the rest from zeros. Checked against the preconditioning written out here."""
    torch.manual_seed(0)
    x, t, ctx, mask = _inputs()
    model = _unzero(registry("backbones").create("rin", dict(RIN_TINY))).train()
    u = torch.tensor([0.1, 0.95, 0.5])  # rate 0.9: samples 0 and 2 are self-conditioned
    v = model(x, t, ctx, mask, self_cond=u)
    gamma = 1 - t
    x_in = x / torch.sqrt((0.5 * gamma) ** 2 + (1 - gamma) ** 2).view(-1, 1, 1, 1)
    with torch.no_grad():
        _, z = model._run(x_in, gamma, ctx, mask, None)
        ref, _ = model._run(x_in, gamma, ctx, mask, z * torch.tensor([1.0, 0.0, 1.0]).view(-1, 1, 1))
    torch.testing.assert_close(v.detach(), ref * math.sqrt(1.25))
    # another draw changes only the sample whose decision flipped
    with torch.no_grad():
        v2 = model(x, t, ctx, mask, self_cond=torch.tensor([0.1, 0.95, 0.99]))
    torch.testing.assert_close(v2[:2], v.detach()[:2])
    assert (v2[2] - v.detach()[2]).abs().max() > 1e-5
    # gradients reach the self-conditioning MLP (only through the second pass: the first is no_grad)
    v.pow(2).mean().backward()
    assert model.self_cond.fc1.weight.grad.abs().sum() > 0
    # switching to train() drops eval state
    model.eval()
    with torch.no_grad():
        model(x, t, ctx, mask)
    assert model._prev_latents is not None
    model.train()
    assert model._prev_latents is None


def test_presets_build_configs():
    from miro_core import structure
    from miro_models.backbones.dit import DiT
    from miro_models.backbones.rin import RIN

    paper = structure(RIN.presets["paper"], RIN.Config)
    assert (paper.num_latents, paper.latent_dim, paper.num_blocks, paper.layers_per_block) == (256, 1024, 4, 4)
    assert (paper.interface_dim, paper.heads, paper.interface_heads) == (512, 32, 16)
    structure(DiT.presets["paper_scale"], DiT.Config)


# -- learning -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [
    ("rin", {**RIN_TINY, "image_size": 8, "self_cond_rate": 0.5}),
    ("dit", {**DIT_TINY, "image_size": 8}),
    ("unet", {**UNET_TINY, "image_size": 8}),
])
def test_overfits_tiny_batch(name, opts):
    torch.manual_seed(0)
    model = registry("backbones").create(name, dict(opts)).train()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.rand(4, generator=g)
    ctx, mask = torch.randn(4, 5, 32, generator=g), torch.ones(4, 5, dtype=torch.bool)
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
    target = eps - x0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(250):
        loss = F.mse_loss(model(xt, t, ctx, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.1 * first, (name, first, last)


# -- UNet ---------------------------------------------------------------------------------------------------
def test_unet_cross_attention_uses_context():
    torch.manual_seed(0)
    model = _unzero(registry("backbones").create("unet", dict(UNET_TINY))).eval()
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        a = model(x, t, ctx, mask)
        assert (model(x, t, torch.randn_like(ctx), mask) - a).abs().max() > 1e-3
        # the context reaches the output only through cross-attention: zeroing its output projections
        # (and removing every attention block) makes the output context-independent
        for blk in [m for m in model.modules() if type(m).__name__ == "_AttnBlock"]:
            blk.cross.out.weight.zero_()
            blk.cross.out.bias.zero_()
        b = model(x, t, ctx, mask)
        torch.testing.assert_close(model(x, t, torch.randn_like(ctx), mask), b)
    plain = _unzero(registry("backbones").create(
        "unet", {**UNET_TINY, "attention_resolutions": (), "mid_attention": False})).eval()
    assert not any(type(m).__name__ == "_AttnBlock" for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, ctx, mask), plain(x, t, ctx * 3 + 1, mask))


def test_unet_fully_masked_context_is_finite_and_ignored():
    torch.manual_seed(0)
    model = _unzero(registry("backbones").create("unet", dict(UNET_TINY))).eval()
    x, t, ctx, mask = _inputs()
    none = torch.zeros_like(mask)
    none_first = mask.clone()
    none_first[0] = False
    with torch.no_grad():
        out = model(x, t, ctx, none)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(x, t, ctx * 100 - 7, none), out)
        # one fully masked sample in a batch does not disturb the others
        mixed = model(x, t, ctx, none_first)
        torch.testing.assert_close(mixed[0], out[0])
        torch.testing.assert_close(mixed[1:], model(x, t, ctx, mask)[1:])


def test_unet_structure_config_and_errors():
    import json

    from miro_core import structure, unstructure
    from miro_models.backbones.unet import UNet

    fresh = registry("backbones").create("unet", dict(UNET_TINY))
    x, t, ctx, mask = _inputs()
    with torch.no_grad():  # zero-initialised output conv: v = 0 at initialisation
        assert fresh(x, t, ctx, mask).abs().max() == 0
    data = json.loads(json.dumps(unstructure(fresh.config)))  # tuples -> lists -> tuples
    assert structure(data, UNet.Config) == fresh.config
    n_attn = sum(type(m).__name__ == "_AttnBlock" for m in fresh.modules())
    assert n_attn == 1 + 1 + 2 + 2 + 1  # down 16, down 8, up 8 (x2), up 16 (x2), middle
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fresh.modules())
    for name in UNet.presets:
        structure(UNet.presets[name], UNet.Config)
    default = registry("backbones").create("unet", {})
    assert 1_000_000 < sum(p.numel() for p in default.parameters()) < 3_000_000
    with torch.no_grad():
        v = _unzero(default).eval()(torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 5, 256),
                                    torch.ones(2, 5, dtype=torch.bool))
    assert v.shape == (2, 3, 32, 32) and v.is_contiguous() and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="16x16"):
        fresh(torch.randn(1, 3, 8, 8), t[:1], ctx[:1], mask[:1])
    with pytest.raises(ValueError, match="not divisible"):
        registry("backbones").create("unet", {**UNET_TINY, "image_size": 18, "patch_size": 2})
