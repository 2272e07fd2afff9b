"""Controllability sweep: vary one reward's positive target and measure that reward on the samples.

Paper Figure 12/13: the positive target of reward ``j`` takes ``levels`` (>= 5 values in [0, 1]) while the
other positive targets stay at 1.0 and the negative targets stay fixed (default all 0.0). The measured
reward should rise with the target: the suite reports Spearman's rank correlation
(``scipy.stats.spearmanr``) between target and measured score over every generated image, and over the
per-level means.
"""

from __future__ import annotations

__all__ = ["spearman", "controllability_sweep", "DEFAULT_LEVELS"]

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._common import generate_batched, mean_std, score_images

DEFAULT_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(rho, p_value)`` of Spearman's rank correlation over the finite pairs; NaN when undefined."""
    from scipy.stats import spearmanr

    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    res = spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def controllability_sweep(
    generate: Any,
    reward_names: Sequence[str],
    target: str,
    prompts: Sequence[str],
    rewards: Mapping[str, Any],
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    negative: float = 0.0,
    batch_size: int = 16,
    seed: int = 0,
    **sampling_kwargs: Any,
) -> dict[str, Any]:
    """Sweep the positive target of ``target`` over ``levels``; score with every reward in ``rewards``.

    ``reward_names`` are the rewards the model is conditioned on (the other positive targets are 1.0, all
    negative targets ``negative``). The same seeds are used at every level, so only the target changes.
    Returns ``{"reward", "levels", "means": {reward: [per level]}, "stds", "spearman", "p_value",
    "spearman_means"}``; ``spearman`` is computed for the measured ``target`` reward.
    """
    if len(levels) < 5:
        raise ValueError("a controllability sweep needs at least 5 levels")
    if target not in reward_names:
        raise ValueError(f"{target!r} is not one of the model's rewards {list(reward_names)}")
    if target not in rewards:
        raise ValueError(f"no reward model {target!r} to measure the sweep with")
    prompts = list(prompts)
    means: dict[str, list[float]] = {name: [] for name in rewards}
    stds: dict[str, list[float]] = {name: [] for name in rewards}
    xs: list[float] = []
    ys: list[float] = []
    for level in levels:
        pos = {name: 1.0 for name in reward_names}
        pos[target] = float(level)
        neg = {name: float(negative) for name in reward_names}
        images = generate_batched(
            generate, prompts, batch_size=batch_size, seed=seed,
            reward_targets=pos, negative_reward_targets=neg, **sampling_kwargs,
        )
        scores = score_images(rewards, images, prompts)
        for name, vals in scores.items():
            m, s = mean_std(vals)
            means[name].append(m)
            stds[name].append(s)
        xs.extend([float(level)] * len(prompts))
        ys.extend(scores[target].tolist())
    rho, p = spearman(xs, ys)
    rho_m, _ = spearman(list(levels), means[target])
    return {
        "reward": target,
        "levels": [float(v) for v in levels],
        "means": means,
        "stds": stds,
        "spearman": rho,
        "p_value": p,
        "spearman_means": rho_m,
        "num_images_per_level": len(prompts),
    }
