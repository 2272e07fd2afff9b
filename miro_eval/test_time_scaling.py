"""``test_time_scaling``: best-of-N sampling (N = 2^k, k = 0..K) selected by one reward.

Random-search protocol of Ma et al. (2025), as in the paper's Figure 8: for every prompt generate N
candidates, keep the one the *selection reward* scores highest, and report the rewards (and, optionally,
a compositional evaluator such as ``world_geneval``) of the kept images. The ``2^K`` candidates are
generated once per prompt batch; best-of-``2^k`` uses the first ``2^k`` of them, so the curve over k is
nested and costs one generation pass.
"""

from __future__ import annotations

__all__ = ["TestTimeScaling", "BestOfN", "select_best"]

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from miro_core import ConfigError, Evaluator, config, hookimpl

from ._common import batch_seed, generate_batched, load_rewards, mean_std, score_images

log = logging.getLogger(__name__)


def select_best(scores: np.ndarray, n: int) -> np.ndarray:
    """Index of the best of the first ``n`` candidates for every prompt.

    ``scores``: ``[N_max, P]`` selection-reward scores (NaN = failed, never picked unless all failed, in
    which case candidate 0 is kept). Ties keep the earliest candidate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, P], got shape {scores.shape}")
    if not 1 <= n <= scores.shape[0]:
        raise ValueError(f"n={n} outside 1..{scores.shape[0]}")
    s = scores[:n].copy()
    s[~np.isfinite(s)] = -np.inf
    return np.argmax(s, axis=0)


class BestOfN:
    """Wrap a generator into a best-of-``n`` generator (``n`` settable, at most ``n_max``).

    Calling it with a prompt batch generates ``n_max`` candidates per prompt once (cached per prompt batch
    and sampling kwargs), scores them with ``selector`` and returns the best of the first ``n``.
    """

    def __init__(self, generate: Callable[..., torch.Tensor], selector: Any, n_max: int, *, batch_size: int = 16):
        if n_max < 1:
            raise ValueError("n_max must be >= 1")
        self.generate = generate
        self.selector = selector
        self.n_max = int(n_max)
        self.n = 1
        self.batch_size = batch_size
        self._cache: dict[Any, tuple[torch.Tensor, np.ndarray]] = {}

    def candidates(self, prompts: Sequence[str], seed: int = 0, **kwargs: Any) -> tuple[torch.Tensor, np.ndarray]:
        """``(images [N_max, P, 3, H, W], selection scores [N_max, P])`` for a prompt batch (cached)."""
        prompts = list(prompts)
        key = (tuple(prompts), int(seed), repr(sorted(kwargs.items())))
        if key not in self._cache:
            flat = [p for _ in range(self.n_max) for p in prompts]  # candidate-major
            images = generate_batched(self.generate, flat, batch_size=self.batch_size, seed=batch_seed(seed, 7919), **kwargs)
            with torch.no_grad():
                scores = torch.as_tensor(self.selector.score(images, flat)).double().cpu().numpy()
            self._cache[key] = (images.reshape(self.n_max, len(prompts), *images.shape[1:]), scores.reshape(self.n_max, len(prompts)))
        return self._cache[key]

    def __call__(self, prompts: Sequence[str], seed: int = 0, **kwargs: Any) -> torch.Tensor:
        images, scores = self.candidates(prompts, seed, **kwargs)
        idx = select_best(scores, self.n)
        return images[torch.as_tensor(idx), torch.arange(len(idx))]


class TestTimeScaling(Evaluator):
    """Best-of-2^k sampling for k = 0..max_log2, selected by one reward; reports every reward per N.

    Returns flat keys ``best_of_<N>/<reward>`` (mean of the kept images) and, when ``compositional`` names
    an evaluator (e.g. ``world_geneval``), ``best_of_<N>/<metric>`` for each of its metrics.
    """

    __test__ = False  # not a pytest class despite the name
    name = "test_time_scaling"

    @config
    class Config:
        selection_reward: str = ""
        #: rewards reported for the kept images (the selection reward is always included)
        rewards: tuple[str, ...] = ()
        reward_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
        max_log2: int = 5
        prompts: tuple[str, ...] = ()
        batch_size: int = 16
        seed: int = 0
        device: str = "cpu"
        #: optional evaluator (registry name) run on the kept images, e.g. ``world_geneval``
        compositional: str | None = None
        compositional_options: dict[str, Any] = attrs.field(factory=dict)

    def __init__(self, config: Any = None):
        super().__init__(config)
        if not self.config.selection_reward:
            raise ConfigError("test_time_scaling needs `selection_reward` (the reward that picks the best sample).")
        if not 0 <= self.config.max_log2 <= 10:
            raise ConfigError(f"test_time_scaling max_log2={self.config.max_log2} must be in 0..10.")
        self._rewards: dict[str, Any] | None = None

    @property
    def rewards(self) -> dict[str, Any]:
        if self._rewards is None:
            names = [self.config.selection_reward] + [r for r in self.config.rewards if r != self.config.selection_reward]
            self._rewards = load_rewards(names, self.config.reward_options, self.config.device)
        return self._rewards

    @property
    def ns(self) -> list[int]:
        return [2**k for k in range(self.config.max_log2 + 1)]

    def evaluate(self, generate: Any, prompts: Sequence[str] | None = None, **sampling_kwargs: Any) -> dict[str, float]:
        prompts = list(prompts) if prompts is not None else list(self.config.prompts)
        if not prompts and not self.config.compositional:
            raise ConfigError("test_time_scaling has no prompts: set `prompts` or pass prompts=.")
        seed = sampling_kwargs.pop("seed", self.config.seed)
        rewards = self.rewards
        bon = BestOfN(generate, rewards[self.config.selection_reward], self.ns[-1], batch_size=self.config.batch_size)
        comp = None
        if self.config.compositional:
            from miro_core import registry

            comp = registry("evaluators").create(self.config.compositional, dict(self.config.compositional_options))
        out: dict[str, float] = {}
        for n in self.ns:
            bon.n = n
            if prompts:
                kept = generate_batched(bon, prompts, batch_size=self.config.batch_size, seed=seed, **sampling_kwargs)
                for name, values in score_images(rewards, kept, prompts).items():
                    out[f"best_of_{n}/{name}"] = mean_std(values)[0]
            if comp is not None:
                for key, value in comp.evaluate(bon, seed=seed, **sampling_kwargs).items():
                    out[f"best_of_{n}/{key}"] = float(value)
        return out


@hookimpl
def miro_register_evaluators(register):
    register(TestTimeScaling)
