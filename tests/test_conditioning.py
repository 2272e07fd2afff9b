"""RewardConditioning: shapes, NaN handling, level sensitivity, masking, Fourier parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miro_core import ConfigError, structure, unstructure
from miro_core.conditioning import RewardConditioning, fourier_features

REWARDS7 = ("aesthetic", "hpsv2", "image_reward", "pick", "vqa", "jina_clip", "sciscore")


def make(rewards=(), **kw):
    torch.manual_seed(0)
    return RewardConditioning(RewardConditioning.Config(rewards=tuple(rewards), text_dim=24, dim=32, fourier_dim=16,
                                                        num_heads=4, **kw))


def text(b=3, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, -2:] = False
    return torch.randn(b, length, 24, generator=g), mask


@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("regs,layers", [(0, 0), (2, 1)])
def test_shapes(n, regs, layers):
    cond = make(REWARDS7[:n], num_registers=regs, context_layers=layers)
    tok, mask = text()
    levels = torch.rand(3, n)
    ctx, cmask = cond(tok, mask, levels)
    assert ctx.shape == (3, 5 + regs + n, 32) and cmask.shape == (3, 5 + regs + n)
    assert cmask.dtype == torch.bool
    assert torch.equal(cmask[:, :5], mask) and cmask[:, 5:].all()
    assert torch.isfinite(ctx).all()
    ctx.sum().backward()


def test_zero_rewards_accepts_none_levels():
    cond = make(())
    tok, mask = text()
    a, _ = cond(tok, mask, None)
    b, _ = cond(tok, mask, torch.zeros(3, 0))
    torch.testing.assert_close(a, b)


def test_wrong_number_of_levels_raises():
    cond = make(("a", "b"))
    tok, mask = text()
    with pytest.raises(ConfigError, match="rewards=2"):
        cond(tok, mask, torch.rand(3, 3))


def test_nan_gives_learned_missing_token():
    cond = make(("a", "b", "c"))
    tok, mask = text()
    levels = torch.tensor([[0.2, float("nan"), 1.0], [float("nan"), 0.5, 0.0], [0.3, 0.3, float("nan")]])
    ctx, _ = cond(tok, mask, levels)
    rw = ctx[:, 5:]
    torch.testing.assert_close(rw[0, 1], cond.missing[1])
    torch.testing.assert_close(rw[1, 0], cond.missing[0])
    torch.testing.assert_close(rw[2, 2], cond.missing[2])
    assert torch.isfinite(ctx).all()
    # missing differs from every real level, including 0
    for lv in (0.0, 0.5, 1.0):
        real = cond.reward_tokens(torch.tensor([[lv, lv, lv]]))[0]
        assert (real - cond.missing).abs().amax(-1).min() > 1e-3
    # missing tokens receive gradients; NaN does not leak into other parameters' grads
    ctx.sum().backward()
    assert cond.missing.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in cond.parameters() if p.grad is not None)


def test_levels_give_different_tokens_per_bin():
    cond = make(("a",))
    bins = 64
    levels = torch.arange(bins, dtype=torch.float32)[:, None] / (bins - 1)
    toks = cond.reward_tokens(levels)[:, 0]
    d = torch.cdist(toks, toks).fill_diagonal_(float("inf"))
    assert d.min() > 1e-3  # every one of 64 bins gives a distinct token
    feats = fourier_features(levels[:, 0], 64, 64.0)
    fd = torch.cdist(feats, feats).fill_diagonal_(float("inf"))
    assert fd.min() > 0.5  # adjacent bins are well separated in the Fourier features


def test_rewards_have_own_mlp_and_position():
    cond = make(("a", "b"))
    tok = cond.reward_tokens(torch.tensor([[0.5, 0.5]]))[0]
    assert (tok[0] - tok[1]).abs().max() > 1e-3  # same level, different reward -> different token


def test_masked_text_padding():
    cond = make(("a", "b"), num_registers=1, context_layers=2)
    tok, mask = text()
    levels = torch.rand(3, 2)
    ctx, cmask = cond(tok, mask, levels)
    tok2 = tok.clone()
    tok2[0, -2:] = 1e4  # padded positions
    ctx2, _ = cond(tok2, mask, levels)
    torch.testing.assert_close(ctx, ctx2)
    assert (ctx[0, 3:5] == 0).all()  # padded positions are zeroed
    # with no text at all (all masked), rewards still produce a finite context
    ctx3, m3 = cond(tok, torch.zeros_like(mask), levels)
    assert torch.isfinite(ctx3).all() and m3[:, -2:].all() and not m3[:, :5].any()


def test_context_layers_mix_rewards_into_text():
    cond = make(("a",), context_layers=1)
    tok, mask = text()
    a, _ = cond(tok, mask, torch.full((3, 1), 0.0))
    b, _ = cond(tok, mask, torch.full((3, 1), 1.0))
    assert (a[:, :5][mask] - b[:, :5][mask]).abs().max() > 1e-4


def test_fourier_parity_with_independent_formula():
    fourier_dim, fmax = 10, 64.0
    levels = np.array([0.0, 1 / 63, 0.25, 0.5, 0.999, 1.0])
    half = fourier_dim // 2
    ref = np.zeros((len(levels), fourier_dim))
    for r, s in enumerate(levels):
        for i in range(half):
            f = fmax ** (i / (half - 1))
            ref[r, i] = math.sin(math.pi * f * s)
            ref[r, half + i] = math.cos(math.pi * f * s)
    out = fourier_features(torch.tensor(levels, dtype=torch.float32), fourier_dim, fmax)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)


def test_config_round_trip_and_unknown_key():
    cfg = RewardConditioning.Config(rewards=("a", "b"), dim=64)
    assert structure(unstructure(cfg), RewardConditioning.Config) == cfg
    with pytest.raises(ConfigError):
        structure({"dimm": 3}, RewardConditioning.Config)
    with pytest.raises(ConfigError, match="unique"):
        make(("a", "a"))


def test_state_dict_round_trip():
    a = make(("a", "b"), num_registers=2, context_layers=1)
    b = make(("a", "b"), num_registers=2, context_layers=1)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    b.load_state_dict(a.state_dict())
    tok, mask = text()
    lv = torch.rand(3, 2)
    torch.testing.assert_close(a(tok, mask, lv)[0], b(tok, mask, lv)[0])
