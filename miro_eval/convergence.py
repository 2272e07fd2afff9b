"""Convergence suite: reward-vs-step curves from a training history and the speedup per reward.

Speedup (paper section 3.1, Figure 5) for one metric: the baseline's *final* value ``v*`` is the target;
``steps_baseline`` = the first step at which the baseline curve reaches ``v*`` and ``steps_miro`` = the
first step at which the MIRO curve reaches it, both with linear interpolation between evaluation points;
``speedup = steps_baseline / steps_miro``. When MIRO never reaches ``v*`` the speedup is ``None`` (and
``reached`` is False); when MIRO already reaches it at the first evaluation point that is step 0, the
speedup is reported against that first point (``at_first_eval`` is True).
"""

from __future__ import annotations

__all__ = ["reward_curves", "steps_to_reach", "convergence_speedup", "convergence_suite"]

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def reward_curves(history: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (steps, values)}`` from history rows ``{"step": int, metric: float, ...}``.

    Rows without a metric are skipped for that metric; steps are sorted; a repeated step keeps its last
    value. ``keys`` restricts the metrics (default: every numeric key except ``step``).
    """
    wanted = None if keys is None else list(keys)
    data: dict[str, dict[int, float]] = {}
    for row in history:
        if "step" not in row:
            continue
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or (wanted is not None and key not in wanted):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                data.setdefault(key, {})[step] = float(value)
    out = {}
    for key in wanted if wanted is not None else sorted(data):
        if key in data:
            steps = np.array(sorted(data[key]), dtype=np.float64)
            out[key] = (steps, np.array([data[key][int(s)] for s in steps], dtype=np.float64))
    return out


def steps_to_reach(steps: Sequence[float], values: Sequence[float], target: float, *, higher_is_better: bool = True) -> float | None:
    """First step at which the curve reaches ``target``, linearly interpolated; ``None`` if never."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.size == 0:
        return None
    if not higher_is_better:
        v, target = -v, -target
    if v[0] >= target:
        return float(s[0])
    for i in range(1, s.size):
        if v[i] >= target:
            lo, hi = v[i - 1], v[i]
            frac = (target - lo) / (hi - lo) if hi > lo else 1.0
            return float(s[i - 1] + frac * (s[i] - s[i - 1]))
    return None


def convergence_speedup(
    baseline: tuple[Sequence[float], Sequence[float]],
    miro: tuple[Sequence[float], Sequence[float]],
    *,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Speedup of ``miro`` over ``baseline`` for one metric; both are ``(steps, values)`` curves."""
    b_steps, b_vals = (np.asarray(a, dtype=np.float64) for a in baseline)
    m_steps, m_vals = (np.asarray(a, dtype=np.float64) for a in miro)
    if b_steps.size == 0 or m_steps.size == 0:
        return {"target": None, "steps_baseline": None, "steps_miro": None, "speedup": None, "reached": False, "at_first_eval": False}
    target = float(b_vals[-1])
    sb = steps_to_reach(b_steps, b_vals, target, higher_is_better=higher_is_better)
    sm = steps_to_reach(m_steps, m_vals, target, higher_is_better=higher_is_better)
    out: dict[str, Any] = {
        "target": target,
        "miro_final": float(m_vals[-1]),
        "steps_baseline": sb,
        "steps_miro": sm,
        "reached": sm is not None,
        "at_first_eval": sm is not None and sm == float(m_steps[0]),
        "speedup": None,
    }
    if sm is not None and sb is not None:
        denom = sm if sm > 0 else None
        if denom is None:  # reached before any training step: compare with the first positive eval step
            positive = m_steps[m_steps > 0]
            denom = float(positive[0]) if positive.size else None
        out["speedup"] = float(sb / denom) if denom else None
    return out


def convergence_suite(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str],
    *,
    baseline: str = "baseline",
    miro: str = "miro",
    lower_is_better: Iterable[str] = (),
) -> dict[str, Any]:
    """Curves of every model and the speedup of ``miro`` over ``baseline`` for each metric.

    Returns ``{"curves": {model: {metric: {"steps": [...], "values": [...]}}}, "speedup": {metric: {...}}}``.
    """
    lower = set(lower_is_better)
    curves = {name: reward_curves(h, metrics) for name, h in histories.items()}
    speed: dict[str, Any] = {}
    for m in metrics:
        if m in curves.get(baseline, {}) and m in curves.get(miro, {}):
            speed[m] = convergence_speedup(curves[baseline][m], curves[miro][m], higher_is_better=m not in lower)
    return {
        "curves": {
            name: {m: {"steps": c[0].tolist(), "values": c[1].tolist()} for m, c in cs.items()} for name, cs in curves.items()
        },
        "speedup": speed,
    }
