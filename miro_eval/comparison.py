"""Model comparison tables: MIRO vs baseline vs single-reward models (paper Figure 4) and leave-one-out
(appendix C.1). Pure computations over ``{model: {metric: value}}`` dicts; plots live in ``plots``."""

from __future__ import annotations

__all__ = ["comparison_table", "leave_one_out_table"]

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _get(d: Mapping[str, Any], k: str) -> float:
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else math.nan


def comparison_table(
    metrics_by_model: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    *,
    reference: str = "miro",
    lower_is_better: Sequence[str] = (),
) -> dict[str, Any]:
    """Per metric, the best model and, per other model, on how many metrics ``reference`` is at least as good.

    Returns ``{"metrics", "models", "values": {model: {metric: v}}, "best": {metric: model},
    "reference_wins": {model: "k/n"}, "reference_wins_count": {model: k}}``.
    """
    lower = set(lower_is_better)
    models = list(metrics_by_model)
    values = {m: {k: _get(metrics_by_model[m], k) for k in metrics} for m in models}
    best: dict[str, str | None] = {}
    for k in metrics:
        cands = [(values[m][k], m) for m in models if math.isfinite(values[m][k])]
        if not cands:
            best[k] = None
            continue
        best[k] = (min if k in lower else max)(cands)[1]
    wins: dict[str, int] = {}
    totals: dict[str, int] = {}
    if reference in values:
        ref = values[reference]
        for m in models:
            if m == reference:
                continue
            n = k_ok = 0
            for k in metrics:
                a, b = ref[k], values[m][k]
                if math.isfinite(a) and math.isfinite(b):
                    n += 1
                    k_ok += int(a <= b if k in lower else a >= b)
            wins[m], totals[m] = k_ok, n
    return {
        "metrics": list(metrics),
        "models": models,
        "values": values,
        "best": best,
        "reference": reference,
        "reference_wins_count": wins,
        "reference_wins": {m: f"{wins[m]}/{totals[m]}" for m in wins},
    }


def leave_one_out_table(
    full: Mapping[str, float],
    without: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    *,
    own_metric: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Deltas ``without[r][metric] - full[metric]`` for every removed reward ``r``.

    ``own_metric`` maps a removed reward to the metric that measures it (default ``"<r>/mean"`` if present,
    else ``r``); ``own_delta[r]`` is the change on that metric (the paper expects it to drop).
    """
    own_metric = dict(own_metric or {})
    deltas: dict[str, dict[str, float]] = {}
    own: dict[str, float] = {}
    for removed, vals in without.items():
        deltas[removed] = {k: _get(vals, k) - _get(full, k) for k in metrics}
        key = own_metric.get(removed) or (f"{removed}/mean" if f"{removed}/mean" in metrics else removed)
        own[removed] = deltas[removed].get(key, math.nan)
    return {"metrics": list(metrics), "full": {k: _get(full, k) for k in metrics}, "deltas": deltas, "own_delta": own}
