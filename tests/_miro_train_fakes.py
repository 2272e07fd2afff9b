"""Tiny components for the training / sampling tests (fast on 2 CPU cores, no downloads).

The real conditioning, pixel autoencoder, guidance strategies and CLI commands are used; only the text
encoder, the backbone, the data source and the reward store are small stand-ins with the agreed APIs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from miro_core import Backbone, DataSource, Sample, TextEncoder, config, hookimpl
from miro_core._plugins import PluginHost, reset_plugins


class HashTextEncoder(TextEncoder):
    """Words -> fixed random vectors (seeded by the word's hash), plus a BOS token; dim 16."""

    name = "hash_text"

    @config
    class Config:
        dim: int = 16

    def __init__(self, config=None):
        super().__init__(config)
        self.dim = self.config.dim

    def _vec(self, word: str) -> torch.Tensor:
        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, captions):
        words = [["<bos>"] + c.lower().split() for c in captions]
        length = max(len(w) for w in words)
        tokens = torch.zeros(len(captions), length, self.dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                tokens[i, j] = self._vec(w)
                mask[i, j] = True
        return tokens, mask


class TinyBackbone(Backbone):
    """Conv net with FiLM from the masked-mean context and the time."""

    name = "tiny_test"

    @config
    class Config:
        in_channels: int = 3
        image_size: int = 8
        context_dim: int = 32
        hidden: int = 32

    def __init__(self, config=None):
        super().__init__(config)
        c, h = self.config.in_channels, self.config.hidden
        self.inp = nn.Conv2d(c, h, 3, padding=1)
        self.film = nn.Linear(self.config.context_dim + 16, 2 * h)
        self.mid = nn.Conv2d(h, h, 3, padding=1)
        self.out = nn.Conv2d(h, c, 3, padding=1)
        self.register_buffer("freqs", torch.arange(1, 9).float())

    def forward(self, x_t, t, context, context_mask):
        m = context_mask.to(context.dtype)[..., None]
        ctx = (context * m).sum(1) / m.sum(1).clamp_min(1.0)
        tf = torch.cat([torch.sin(t[:, None] * self.freqs), torch.cos(t[:, None] * self.freqs)], -1).to(ctx.dtype)
        scale, shift = self.film(torch.cat([ctx, tf], -1)).chunk(2, -1)
        h = torch.nn.functional.silu(self.inp(x_t))
        h = h * (1 + scale[..., None, None]) + shift[..., None, None]
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


COLORS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.1, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1)}


class ShapesSource(DataSource):
    """Coloured squares on a grey background; caption names colour and side; blurrier = 'lower quality'."""

    name = "test_shapes"

    @config
    class Config:
        n: int = 32
        size: int = 8

    def __iter__(self):
        names = list(COLORS)
        s = self.config.size
        for i in range(self.config.n):
            color = names[i % len(names)]
            left = (i // len(names)) % 2 == 0
            img = torch.full((3, s, s), 0.5)
            half = s // 2
            cols = slice(0, half) if left else slice(half, s)
            img[:, s // 4 : s // 4 + half, cols] = torch.tensor(COLORS[color])[:, None, None]
            yield Sample(id=f"s{i:04d}", caption=f"a {color} square on the {'left' if left else 'right'}", image=img)

    def __len__(self):
        return self.config.n


class FakeStore:
    """The reward-store API the training data join uses (ids, rewards, binnings, levels, bin_state)."""

    def __init__(self, ids, scores: dict[str, np.ndarray], num_bins: int = 8, binner: str = "quantile"):
        self._ids = np.asarray(ids)
        self._scores = scores
        self.num_bins = num_bins
        self.binner = binner
        self._bins = {}
        for r, s in scores.items():
            edges = np.nanquantile(s, np.linspace(0, 1, num_bins + 1)[1:-1])
            b = np.searchsorted(edges, s, side="right").astype(np.int16)
            b[np.isnan(s)] = -1
            self._bins[r] = (b, {"edges": edges.tolist()})

    def ids(self):
        return self._ids

    def rewards(self):
        return list(self._scores)

    def binnings(self):
        return {self.binner: sorted(self._bins)}

    def bin_state(self, binner, reward):
        return self._bins[reward][1]

    def levels(self, rewards, binner, rows=None):
        cols = []
        for r in rewards:
            b = self._bins[r][0] if rows is None else self._bins[r][0][np.asarray(rows)]
            lv = b.astype(np.float32) / (self.num_bins - 1)
            lv[b < 0] = np.nan
            cols.append(lv)
        return np.stack(cols, 1) if cols else np.zeros((len(self._ids) if rows is None else len(rows), 0), np.float32)


def make_store(n: int = 32, missing_every: int = 0) -> FakeStore:
    rng = np.random.default_rng(0)
    a = rng.normal(size=n).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    if missing_every:
        a[::missing_every] = np.nan
    return FakeStore([f"s{i:04d}" for i in range(n)], {"aesthetic": a, "pick": b})


@hookimpl
def miro_register_text_encoders(register):
    register(HashTextEncoder)


@hookimpl
def miro_register_backbones(register):
    register(TinyBackbone)


@hookimpl
def miro_register_data_sources(register):
    register(ShapesSource)


def make_host(with_rin: bool = False, with_binner: bool = False, extra: tuple[str, ...] = ()) -> PluginHost:
    import importlib
    import sys

    mods = [
        "miro_models.guidance.multi_reward_cfg",
        "miro_models.guidance.multi_reward_cfg_text_drop",
        "miro_models.guidance.none",
        "miro_models.autoencoders.pixel",
        "miro_core.cli.train_cmd",
        "miro_core.cli.sample_cmd",
        "miro_core.cli.plugins_cmd",
    ]
    if with_rin:
        mods.append("miro_models.backbones.rin")
    if with_binner:
        mods.append("miro_rewards.binning.quantile")
    mods.extend(extra)
    plugins = [(importlib.import_module(m), m) for m in mods]
    plugins.append((sys.modules[__name__], "test_fakes"))
    return PluginHost(load_entrypoints=False, extra_plugins=plugins)


@pytest.fixture
def miro_host():
    host = make_host(with_rin=True, with_binner=True)
    reset_plugins(host)
    yield host
    reset_plugins(None)


def tiny_config(tmp_path, **over) -> dict:
    """A TrainConfig dict for the tiny components; ``over`` sets dotted keys."""
    from miro_core import apply_overrides

    cfg = {
        "model": {
            "backbone": {"name": "tiny_test", "options": {"hidden": 16}},
            "text_encoder": {"name": "hash_text"},
            "autoencoder": {"name": "pixel"},
            "conditioning": {"dim": 32, "fourier_dim": 8},
        },
        "data": {"spec": "test_shapes", "image_size": 8, "rewards": ["aesthetic", "pick"],
                 "cache_dir": str(tmp_path / "cache")},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "device": "cpu", "seed": 0,
    }
    return apply_overrides(cfg, over)


@pytest.fixture(scope="module")
def miro_host_module():
    host = make_host(with_rin=True, with_binner=True)
    reset_plugins(host)
    yield host
    reset_plugins(None)
