"""Trade-off sweeps at inference (paper section 3.6).

* ``pairwise_sweep``: rewards A and B; positive targets all 1, negative targets all 1 except
  ``s-_A = t`` and ``s-_B = 1 - t`` for ``t`` in ``ts``: with v = v(s+) + w (v(s+) - v(s-)) the guidance pushes
  away from ``s-``, so it moves from favouring A (t = 0: s-_A = 0, s-_B = 1) to favouring B (t = 1) while the
  other rewards stay anchored at 1.
* ``isolation_sweep``: for each reward j, ``s+ = 1`` and ``s- = 1`` except ``s-_j = 0`` (guidance points
  purely toward reward j, Figure 9), plus the "all" column with ``s- = 0``.
"""

from __future__ import annotations

__all__ = ["pair_targets", "isolate_targets", "pairwise_sweep", "isolation_sweep"]

from collections.abc import Mapping, Sequence
from typing import Any

from ._common import generate_batched, mean_std, score_images


def pair_targets(names: Sequence[str], a: str, b: str, t: float) -> tuple[dict[str, float], dict[str, float]]:
    """(positive, negative) targets of the pairwise interpolation between rewards ``a`` and ``b`` at ``t``."""
    for n in (a, b):
        if n not in names:
            raise ValueError(f"{n!r} is not one of the model's rewards {list(names)}")
    pos = {n: 1.0 for n in names}
    neg = {n: 1.0 for n in names}
    neg[a] = float(t)
    neg[b] = 1.0 - float(t)
    return pos, neg


def isolate_targets(names: Sequence[str], name: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """(positive, negative) targets isolating reward ``name`` (``None``: all rewards, ``s- = 0``)."""
    pos = {n: 1.0 for n in names}
    if name is None:
        return pos, {n: 0.0 for n in names}
    if name not in names:
        raise ValueError(f"{name!r} is not one of the model's rewards {list(names)}")
    neg = {n: 1.0 for n in names}
    neg[name] = 0.0
    return pos, neg


def _measure(generate, prompts, rewards, pos, neg, batch_size, seed, sampling_kwargs) -> dict[str, float]:
    images = generate_batched(
        generate, prompts, batch_size=batch_size, seed=seed,
        reward_targets=pos, negative_reward_targets=neg, **sampling_kwargs,
    )
    return {name: mean_std(v)[0] for name, v in score_images(rewards, images, prompts).items()}


def pairwise_sweep(
    generate: Any,
    reward_names: Sequence[str],
    a: str,
    b: str,
    prompts: Sequence[str],
    rewards: Mapping[str, Any],
    *,
    ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    batch_size: int = 16,
    seed: int = 0,
    **sampling_kwargs: Any,
) -> dict[str, Any]:
    """Measure every reward along the A/B interpolation; ``{"a", "b", "t", "means": {reward: [..]}}``."""
    means: dict[str, list[float]] = {n: [] for n in rewards}
    for t in ts:
        pos, neg = pair_targets(reward_names, a, b, t)
        for n, v in _measure(generate, list(prompts), rewards, pos, neg, batch_size, seed, sampling_kwargs).items():
            means[n].append(v)
    return {"a": a, "b": b, "t": [float(t) for t in ts], "means": means}


def isolation_sweep(
    generate: Any,
    reward_names: Sequence[str],
    prompts: Sequence[str],
    rewards: Mapping[str, Any],
    *,
    batch_size: int = 16,
    seed: int = 0,
    **sampling_kwargs: Any,
) -> dict[str, dict[str, float]]:
    """``{column: {reward: mean}}`` for each isolated reward column and ``"all"``."""
    out: dict[str, dict[str, float]] = {}
    for col in [*reward_names, None]:
        pos, neg = isolate_targets(reward_names, col)
        out[col or "all"] = _measure(generate, list(prompts), rewards, pos, neg, batch_size, seed, sampling_kwargs)
    return out
