"""Shared helpers of the evaluators and suites: batched generation, reward loading and scoring, stats.

``generate`` everywhere is a callable ``generate(prompts, **sampling_kwargs) -> images [B,3,H,W] in [0,1]``
(a :class:`miro_core.sampling.MiroPipeline` is one). Seeds are passed as ``seed=<int>`` so that a run is
reproducible batch by batch.
"""

from __future__ import annotations

__all__ = [
    "generate_batched",
    "load_rewards",
    "score_images",
    "mean_std",
    "batch_seed",
]

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

Generate = Callable[..., torch.Tensor]


def batch_seed(seed: int, *parts: int) -> int:
    """A deterministic per-batch seed derived from ``seed`` and integer parts (stable across runs)."""
    h = int(seed) & 0xFFFFFFFF
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x9E3779B9) & 0x7FFFFFFF
    return h


def generate_batched(
    generate: Generate,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    seed: int = 0,
    progress: Any = None,
    **sampling_kwargs: Any,
) -> torch.Tensor:
    """Generate one image per prompt in batches of ``batch_size``; returns ``[len(prompts),3,H,W]`` on CPU.

    Batch ``i`` is generated with ``seed=batch_seed(seed, i)``. ``progress`` is an optional callable
    ``progress(n_done)`` (e.g. a tqdm ``update``).
    """
    from miro_core.sampling import as_generate

    generate = as_generate(generate)
    prompts = list(prompts)
    out: list[torch.Tensor] = []
    for i, start in enumerate(range(0, len(prompts), max(1, batch_size))):
        chunk = prompts[start : start + batch_size]
        images = generate(chunk, seed=batch_seed(seed, i), **sampling_kwargs)
        images = torch.as_tensor(images).detach().float().cpu()
        if images.shape[0] != len(chunk):
            raise ValueError(f"generate returned {images.shape[0]} images for {len(chunk)} prompts")
        out.append(images.clamp(0, 1))
        if progress is not None:
            progress(len(chunk))
    if not out:
        return torch.empty(0, 3, 1, 1)
    return torch.cat(out)


def load_rewards(
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Create rewards by name from the registry (with per-reward options) and ``setup(device)`` them."""
    from miro_core import registry

    options = options or {}
    rewards: dict[str, Any] = {}
    for name in names:
        reward = registry("rewards").create(name, dict(options.get(name, {})))
        reward.setup(device)
        rewards[name] = reward
    return rewards


@torch.no_grad()
def score_images(
    rewards: Mapping[str, Any],
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Score ``images`` with every reward; returns ``{name: float64 array [B]}`` (NaN where a score failed)."""
    prompts = list(prompts)
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    out: dict[str, np.ndarray] = {}
    for name, reward in rewards.items():
        parts = []
        for start in range(0, len(prompts), max(1, batch_size)):
            s = reward.score(images[start : start + batch_size], prompts[start : start + batch_size])
            parts.append(torch.as_tensor(s).detach().double().cpu().reshape(-1).numpy())
        out[name] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation over the finite values; NaN when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())
