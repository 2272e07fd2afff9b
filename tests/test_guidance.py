"""Guidance strategies: eq. 3 against a fake model, one 2B forward, interval, text dropping, registry contract."""

import pytest
import torch

from miro_core.sampling import Cond
from miro_core.testing import GuidanceContract

from _miro_train_fakes import miro_host  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("miro_host")


class FakeModelFn:
    """v = x * (1 + sum(levels)) + mean(text tokens) + t: simple, but depends on every input."""

    stateful = False

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond: Cond):
        self.calls.append(x.shape[0])
        m = cond.text_mask.float()[..., None]
        text = (cond.text_tokens * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
        lv = torch.nan_to_num(cond.levels, nan=-1.0).sum(1)
        return x * (1 + lv)[:, None, None, None] + text[:, None, None, None] + t[:, None, None, None]


def _conds(b=3, n=2, length=4, dim=5):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, length, dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, -1] = False
    pos = Cond(tokens, mask, torch.ones(b, n))
    neg = Cond(tokens, mask, torch.zeros(b, n))
    x = torch.randn(b, 3, 4, 4, generator=g)
    t = torch.full((b,), 0.6)
    return x, t, pos, neg


class TestMultiRewardCFG(GuidanceContract):
    guidance_name = "multi_reward_cfg"

    def test_formula_and_single_batched_forward(self):
        from miro_core import registry

        x, t, pos, neg = _conds()
        for w in (0.0, 1.0, 7.0):
            fn = FakeModelFn()
            g = registry("guidance").create("multi_reward_cfg", {"scale": w})
            v = g(fn, x, t, pos, neg)
            ref = FakeModelFn()
            vp, vn = ref(x, t, pos), ref(x, t, neg)
            torch.testing.assert_close(v, vp + w * (vp - vn))
            assert fn.calls == [2 * x.shape[0]]  # ONE forward of size 2B

    def test_default_scale_is_7(self):
        assert self.make_guidance().config.scale == 7.0

    def test_interval(self):
        from miro_core import registry

        x, _, pos, neg = _conds()
        g = registry("guidance").create("multi_reward_cfg", {"scale": 3.0, "interval": (0.2, 0.5)})
        fn = FakeModelFn()
        inside, outside = torch.full((3,), 0.3), torch.full((3,), 0.8)
        v_out = g(fn, x, outside, pos, neg)
        torch.testing.assert_close(v_out, FakeModelFn()(x, outside, pos))
        assert fn.calls == [3]  # outside the interval: positive branch only
        vp, vn = FakeModelFn()(x, inside, pos), FakeModelFn()(x, inside, neg)
        torch.testing.assert_close(g(fn, x, inside, pos, neg), vp + 3.0 * (vp - vn))
        # a stateful model (self-conditioning) keeps its batch size 2B even outside the interval
        fn2 = FakeModelFn()
        fn2.stateful = True
        torch.testing.assert_close(g(fn2, x, outside, pos, neg), FakeModelFn()(x, outside, pos))
        assert fn2.calls == [6]


class TestTextDrop(GuidanceContract):
    guidance_name = "multi_reward_cfg_text_drop"

    def test_negative_uses_empty_caption(self):
        x, t, pos, neg = _conds()
        empty = Cond(torch.full((1, 2, 5), 0.25), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2))
        g = self.make_guidance()
        neg2 = g.prepare_negative(neg, lambda: empty)
        assert neg2.text_tokens.shape == (3, 2, 5) and torch.equal(neg2.levels, neg.levels)
        fn = FakeModelFn()
        v = g(fn, x, t, pos, neg2)
        ref = FakeModelFn()
        vp, vn = ref(x, t, pos), ref(x, t, neg2)
        torch.testing.assert_close(v, vp + 7.0 * (vp - vn))
        assert fn.calls == [6]
        # the text differs from the plain strategy's negative branch
        assert not torch.allclose(vn, ref(x, t, neg))


class TestNone(GuidanceContract):
    guidance_name = "none"

    def test_positive_only(self):
        x, t, pos, neg = _conds()
        fn = FakeModelFn()
        torch.testing.assert_close(self.make_guidance()(fn, x, t, pos, neg), FakeModelFn()(x, t, pos))
        assert fn.calls == [3]


def test_batched_forward_equals_two_forwards_real_model():
    """The 2B batch through the real conditioning + a backbone equals two separate B forwards."""
    from miro_core.model import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": {"name": "tiny_test"}, "conditioning": {"dim": 32, "fourier_dim": 8}},
                        ["aesthetic", "pick"], text_dim=5, in_channels=3, image_size=4).eval()
    x, t, pos, neg = _conds()
    neg.levels[1, 0] = float("nan")  # a missing level in the negative branch
    short = Cond(pos.text_tokens[:, :2], pos.text_mask[:, :2], pos.levels)  # different text length: padded

    def fn(xx, tt, c):
        return model(xx, tt, c.text_tokens, c.text_mask, c.levels)

    with torch.no_grad():
        both = fn(torch.cat([x, x]), torch.cat([t, t]), Cond.cat(short, neg))
        torch.testing.assert_close(both[:3], fn(x, t, short), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[3:], fn(x, t, neg), atol=1e-5, rtol=1e-5)
