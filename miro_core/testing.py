"""Contract test base classes that any plugin's tests can subclass (as diffusers' scheduler tests do).

Usage in a plugin's test module::

    from miro_core.testing import RewardContract

    class TestMyReward(RewardContract):
        reward_name = "my_reward"           # looked up in the registry (so registration is tested too)
        def make_reward(self, tmp_path):     # optional: build it with test options (tiny weights...)
            return registry("rewards").create("my_reward", {"model_path": str(make_tiny(tmp_path))})

Each contract checks what the interface promises (DESIGN.md section 4); subclasses add their own tests
(formula parity against an independent computation, preprocessing, ...).
"""

from __future__ import annotations

__all__ = ["unzero_parameters", "RewardContract", "BinnerContract", "BackboneContract", "DataSourceContract", "TextEncoderContract",
           "AutoencoderContract", "GuidanceContract", "EvaluatorContract", "SuiteContract", "fake_generate"]

import json
from typing import Any, ClassVar

import numpy as np
import torch

from ._config import structure, unstructure
from ._plugins import registry
from .interfaces import MISSING_BIN, Autoencoder, Backbone, Binner, DataSource, Evaluator, Reward, Sample, Suite, TextEncoder


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


class RewardContract:
    """Contract for :class:`Reward` plugins."""

    reward_name: ClassVar[str]
    prompts: ClassVar[list[str]] = ["a red circle above a blue square", "two green triangles", "a photo of a cat"]
    image_size: ClassVar[int] = 64
    atol: ClassVar[float] = 1e-4

    def make_reward(self, tmp_path) -> Reward:
        return registry("rewards").create(self.reward_name)

    def _ready(self, tmp_path) -> Reward:
        reward = self.make_reward(tmp_path)
        reward.setup("cpu")
        return reward

    def test_registered(self):
        reg = registry("rewards").get(self.reward_name)
        assert issubclass(reg.cls, Reward)
        assert reg.cls.name == self.reward_name
        assert reg.distribution

    def test_config_round_trip(self, tmp_path):
        reward = self.make_reward(tmp_path)
        data = json.loads(json.dumps(unstructure(reward.config)))
        assert structure(data, type(reward).Config) == reward.config

    def test_score_shape_dtype_finite(self, tmp_path):
        reward = self._ready(tmp_path)
        out = reward.score(_images(len(self.prompts), self.image_size), list(self.prompts))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (len(self.prompts),)
        assert out.dtype in (torch.float32, torch.float64)
        assert torch.isfinite(out).all()

    def test_deterministic(self, tmp_path):
        reward = self._ready(tmp_path)
        imgs = _images(len(self.prompts), self.image_size, seed=1)
        a = reward.score(imgs, list(self.prompts))
        b = reward.score(imgs.clone(), list(self.prompts))
        torch.testing.assert_close(a, b)

    def test_batch_size_invariant(self, tmp_path):
        reward = self._ready(tmp_path)
        imgs = _images(len(self.prompts), self.image_size, seed=2)
        full = reward.score(imgs, list(self.prompts))
        single = torch.cat([reward.score(imgs[i : i + 1], [p]) for i, p in enumerate(self.prompts)])
        torch.testing.assert_close(full.float(), single.float(), atol=self.atol, rtol=1e-4)

    def test_non_square_input(self, tmp_path):
        reward = self._ready(tmp_path)
        g = torch.Generator().manual_seed(3)
        out = reward.score(torch.rand(1, 3, 48, 80, generator=g), [self.prompts[0]])
        assert out.shape == (1,) and torch.isfinite(out).all()

    def test_metadata(self, tmp_path):
        reward = self.make_reward(tmp_path)
        meta = reward.metadata()
        json.dumps(meta)
        assert meta["reward"] == self.reward_name and "version" in meta


class BinnerContract:
    """Contract for :class:`Binner` plugins."""

    binner_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {"num_bins": 8}

    def make_binner(self) -> Binner:
        return registry("binners").create(self.binner_name, dict(self.options))

    def test_registered(self):
        assert issubclass(registry("binners").get(self.binner_name).cls, Binner)

    def test_range_dtype_and_missing(self):
        b = self.make_binner()
        rng = np.random.default_rng(0)
        x = rng.normal(size=5000).astype(np.float32)
        x[::97] = np.nan
        bins, state = b.fit_transform(x)
        assert bins.dtype == np.int16 and bins.shape == x.shape
        assert (bins[np.isnan(x)] == MISSING_BIN).all()
        ok = bins[~np.isnan(x)]
        assert ok.min() >= 0 and ok.max() <= b.num_bins - 1
        json.dumps(state)

    def test_monotone(self):
        b = self.make_binner()
        x = np.random.default_rng(1).gamma(2.0, size=4000)
        state = b.fit(x)
        xs = np.sort(x)
        bins = b.transform(xs, state)
        assert (np.diff(bins.astype(int)) >= 0).all()

    def test_state_reload_gives_same_bins(self):
        b = self.make_binner()
        x = np.random.default_rng(2).uniform(-3, 7, size=3000)
        state = json.loads(json.dumps(b.fit(x)))
        np.testing.assert_array_equal(b.transform(x, state), self.make_binner().transform(x, state))

    def test_degenerate_inputs(self):
        b = self.make_binner()
        for x in (np.full(100, 3.0), np.array([1.0]), np.array([np.nan, np.nan]), np.array([-np.inf, 0.0, np.inf, 1.0])):
            bins = b.transform(x, json.loads(json.dumps(b.fit(x))))
            assert bins.shape == x.shape
            finite = ~np.isnan(x)
            assert (bins[~finite] == MISSING_BIN).all()
            assert ((bins[finite] >= 0) & (bins[finite] < b.num_bins)).all()


def unzero_parameters(model: torch.nn.Module, seed: int = 1, std: float = 0.05) -> torch.nn.Module:
    """Give all-zero parameters (zero-initialised output heads, adaLN, gates) small random values.

    Backbones commonly start with a zero output layer; a contract check on such a model would pass whatever
    the model does (its output is identically zero), so the contract tests run on an "unzeroed" copy.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


class BackboneContract:
    """Contract for :class:`Backbone` plugins. Subclasses give small ``options``."""

    backbone_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    input_shape: ClassVar[tuple[int, int, int]] = (3, 16, 16)
    context_len: ClassVar[int] = 7

    def make_backbone(self) -> Backbone:
        torch.manual_seed(0)
        return unzero_parameters(registry("backbones").create(self.backbone_name, dict(self.options)))

    def _inputs(self, model: Backbone, batch: int = 3):
        g = torch.Generator().manual_seed(0)
        dim = int(model.config.context_dim)
        x = torch.randn(batch, *self.input_shape, generator=g)
        t = torch.rand(batch, generator=g)
        ctx = torch.randn(batch, self.context_len, dim, generator=g)
        mask = torch.ones(batch, self.context_len, dtype=torch.bool)
        mask[0, -2:] = False
        return x, t, ctx, mask

    def test_shape(self):
        model = self.make_backbone().eval()
        x, t, ctx, mask = self._inputs(model)
        with torch.no_grad():
            v = model(x, t, ctx, mask)
        assert v.shape == x.shape and torch.isfinite(v).all()

    def test_gradients_flow(self):
        model = self.make_backbone().train()
        x, t, ctx, mask = self._inputs(model)
        model(x, t, ctx, mask).pow(2).mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)

    def test_masked_context_is_ignored(self):
        model = self.make_backbone().eval()
        x, t, ctx, mask = self._inputs(model)
        ctx2 = ctx.clone()
        ctx2[0, -2:] = 1e3  # masked positions must not matter
        with torch.no_grad():
            a = model(x, t, ctx, mask)[0]
            if hasattr(model, "reset_state"):  # stateful (self-conditioning) backbones: compare fresh calls
                model.reset_state()
            torch.testing.assert_close(a, model(x, t, ctx2, mask)[0], atol=1e-4, rtol=1e-4)

    def test_batch_independent(self):
        model = self.make_backbone().eval()
        x, t, ctx, mask = self._inputs(model)
        with torch.no_grad():
            full = model(x, t, ctx, mask)
            if hasattr(model, "reset_state"):
                model.reset_state()
            one = model(x[1:2], t[1:2], ctx[1:2], mask[1:2])
        torch.testing.assert_close(full[1:2], one, atol=1e-4, rtol=1e-4)


class DataSourceContract:
    """Contract for :class:`DataSource` plugins. Subclasses implement ``make_source(tmp_path)``."""

    def make_source(self, tmp_path) -> DataSource:
        raise NotImplementedError

    def test_samples_and_unique_ids(self, tmp_path):
        from .data import to_tensor

        src = self.make_source(tmp_path)
        samples = list(src)
        assert samples, "a test source should not be empty"
        assert len({s.id for s in samples}) == len(samples)
        for s in samples[:4]:
            assert isinstance(s, Sample) and isinstance(s.caption, str)
            img = to_tensor(s.image)
            assert img.ndim == 3 and img.shape[0] == 3 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0

    def test_deterministic_order(self, tmp_path):
        src = self.make_source(tmp_path)
        assert [s.id for s in src] == [s.id for s in src]

    def test_sharding_partitions(self, tmp_path):
        src = self.make_source(tmp_path)
        all_ids = [s.id for s in src]
        parts = [[s.id for s in src.iter_samples(r, 3)] for r in range(3)]
        assert sorted(sum(parts, [])) == sorted(all_ids)
        assert sum(len(p) for p in parts) == len(all_ids)


class TextEncoderContract:
    encoder_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def make_encoder(self, tmp_path) -> TextEncoder:
        return registry("text_encoders").create(self.encoder_name, dict(self.options))

    def test_encode(self, tmp_path):
        enc = self.make_encoder(tmp_path)
        enc.setup("cpu")
        tokens, mask = enc.encode(["a red circle", "two blue squares left of a green triangle", ""])
        assert tokens.ndim == 3 and tokens.shape[0] == 3 and tokens.shape[-1] == enc.dim
        assert mask.shape == tokens.shape[:2] and mask.dtype == torch.bool
        assert torch.isfinite(tokens).all()
        a, _ = enc.encode(["a red circle"])
        b, _ = enc.encode(["a red circle"])
        torch.testing.assert_close(a, b)


class AutoencoderContract:
    autoencoder_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    image_size: ClassVar[int] = 32
    roundtrip_atol: ClassVar[float | None] = None  # None: only shape checks

    def make_autoencoder(self, tmp_path) -> Autoencoder:
        return registry("autoencoders").create(self.autoencoder_name, dict(self.options))

    def test_shapes(self, tmp_path):
        ae = self.make_autoencoder(tmp_path)
        ae.setup("cpu")
        imgs = _images(2, self.image_size)
        with torch.no_grad():
            lat = ae.encode(imgs)
            assert tuple(lat.shape[1:]) == tuple(ae.latent_shape(self.image_size))
            rec = ae.decode(lat)
        assert rec.shape == imgs.shape
        if self.roundtrip_atol is not None:
            torch.testing.assert_close(rec, imgs, atol=self.roundtrip_atol, rtol=0)


class GuidanceContract:
    """Subclasses provide ``make_guidance()`` and ``call(guidance, model_fn, x, t)`` if the default differs."""

    guidance_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def make_guidance(self):
        return registry("guidance").create(self.guidance_name, dict(self.options))

    def test_registered(self):
        assert registry("guidance").get(self.guidance_name).cls.name == self.guidance_name

    def test_config_round_trip(self):
        g = self.make_guidance()
        assert structure(json.loads(json.dumps(unstructure(g.config))), type(g).Config) == g.config

    @staticmethod
    def _toy():
        """A toy velocity depending on x, t, the text and the reward levels; records each call's batch size."""
        from .sampling import Cond

        calls: list[int] = []

        def model_fn(x, t, cond):
            calls.append(int(x.shape[0]))
            m = cond.text_mask.to(x.dtype)[..., None]
            text = (cond.text_tokens * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
            lv = torch.nan_to_num(cond.levels, nan=-1.0).sum(1)
            return x * (1 + lv)[:, None, None, None] + (text + t)[:, None, None, None]

        g = torch.Generator().manual_seed(0)
        tokens = torch.randn(3, 4, 5, generator=g)
        mask = torch.ones(3, 4, dtype=torch.bool)
        mask[0, -1] = False
        pos, neg = Cond(tokens, mask, torch.ones(3, 2)), Cond(tokens, mask, torch.zeros(3, 2))
        return model_fn, calls, torch.randn(3, 3, 4, 4, generator=g), torch.full((3,), 0.6), pos, neg

    def test_velocity_shape_and_at_most_two_branches(self):
        model_fn, calls, x, t, pos, neg = self._toy()
        v = self.make_guidance()(model_fn, x, t, pos, neg)
        assert v.shape == x.shape and torch.isfinite(v).all()
        assert calls and sum(calls) <= 2 * x.shape[0] and all(c in (x.shape[0], 2 * x.shape[0]) for c in calls)

    def test_equal_targets_give_the_positive_prediction(self):
        model_fn, calls, x, t, pos, _ = self._toy()
        v = self.make_guidance()(model_fn, x, t, pos, pos)
        torch.testing.assert_close(v, model_fn(x, t, pos), atol=1e-5, rtol=1e-5)



def fake_generate(prompts, seed: int = 0, size: int = 16, **kwargs: Any) -> torch.Tensor:
    """A stand-in for a model: ``generate(prompts, seed=...) -> [B, 3, size, size]`` in [0, 1], a pure function
    of (prompt, seed), so evaluators and suites can be tested without a model."""
    out = []
    for i, p in enumerate(prompts):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + i * 7919 + sum(map(ord, str(p)))) % (2**31))
        out.append(torch.rand(3, size, size, generator=g))
    return torch.stack(out) if out else torch.zeros(0, 3, size, size)


class EvaluatorContract:
    """Contract for :class:`Evaluator` plugins: ``evaluate(generate, ...)`` returns a flat ``{str: float}``."""

    evaluator_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def make_evaluator(self, tmp_path) -> Evaluator:
        return registry("evaluators").create(self.evaluator_name, dict(self.options))

    def make_generate(self, tmp_path):
        """The generator the checks evaluate (default: :func:`fake_generate`)."""
        return fake_generate

    def test_registered(self):
        reg = registry("evaluators").get(self.evaluator_name)
        assert issubclass(reg.cls, Evaluator) and reg.cls.name == self.evaluator_name and reg.distribution

    def test_config_round_trip(self, tmp_path):
        ev = self.make_evaluator(tmp_path)
        data = json.loads(json.dumps(unstructure(ev.config)))
        assert structure(data, type(ev).Config) == ev.config

    def test_metrics_flat_and_finite(self, tmp_path):
        metrics = self.make_evaluator(tmp_path).evaluate(self.make_generate(tmp_path))
        assert isinstance(metrics, dict) and metrics, "evaluate must return a non-empty {metric: float} dict"
        for key, value in metrics.items():
            assert isinstance(key, str) and isinstance(value, float), (key, value)
            assert np.isfinite(value), (key, value)
        json.dumps(metrics)

    def test_deterministic(self, tmp_path):
        generate = self.make_generate(tmp_path)
        assert self.make_evaluator(tmp_path).evaluate(generate) == self.make_evaluator(tmp_path).evaluate(generate)


class SuiteContract:
    """Contract for :class:`Suite` plugins: ``run(out, pipeline=...)`` writes ``metrics.json`` and ``report.md``
    into ``out`` and returns the content of ``metrics.json``."""

    suite_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def make_suite(self, tmp_path) -> Suite:
        return registry("suites").create(self.suite_name, dict(self.options))

    def make_generate(self, tmp_path):
        """The model the checks evaluate (default: :func:`fake_generate`)."""
        return fake_generate

    def test_registered(self):
        reg = registry("suites").get(self.suite_name)
        assert issubclass(reg.cls, Suite) and reg.cls.name == self.suite_name and reg.distribution
        assert isinstance(reg.cls.accepts_images, bool) and isinstance(reg.cls.accepts_model, bool)

    def test_config_round_trip(self, tmp_path):
        suite = self.make_suite(tmp_path)
        data = json.loads(json.dumps(unstructure(suite.config)))
        assert structure(data, type(suite).Config) == suite.config

    def test_run_writes_metrics_and_report(self, tmp_path):
        import pytest

        suite = self.make_suite(tmp_path)
        if not type(suite).accepts_model:
            pytest.skip(f"suite {self.suite_name!r} does not generate with a model")
        out = tmp_path / "out"
        data = suite.run(out, pipeline=self.make_generate(tmp_path))
        assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(data))
        assert (out / "report.md").read_text().strip()
        again = self.make_suite(tmp_path).run(out, pipeline=self.make_generate(tmp_path))
        assert json.loads(json.dumps(again)).get("metrics") == json.loads(json.dumps(data)).get("metrics")
