"""``refined_quantile``: quantile bins whose top of the distribution is split finer (paper appendix C.2).

The paper's ablation uses 64 quantile bins "with the last 8 re-binned" to give the model finer control
at the high-reward end. Here the total stays ``num_bins``: the top ``refine_top_fraction`` of the
calibration mass gets bins ``refine_factor`` times narrower (in population) than the rest.

With ``B = num_bins``, ``f = refine_top_fraction`` and ``r = refine_factor``:

* ``n_fine = round(B * f * r / (1 - f + f * r))`` (at least 1, at most ``B - 1``) and
  ``n_coarse = B - n_fine``;
* coarse edges at the quantiles ``(1 - f) * k / n_coarse`` for ``k = 1..n_coarse`` (the last one is the
  split point ``1 - f``) and fine edges at ``1 - f + f * k / n_fine`` for ``k = 1..n_fine-1``;
* so each coarse bin holds ``(1 - f) / n_coarse`` of the mass and each fine bin ``f / n_fine``: equal
  population within the coarse part and within the refined part.

Defaults (``B = 64``, ``f = 0.125`` = the top 8 of 64 quantile bins, ``r = 2``): 50 coarse bins of 1.75 %
and 14 fine bins of 0.89 %. Ties, NaN, +-inf and constant columns follow :mod:`miro_rewards.binning._common`.
"""

from __future__ import annotations

__all__ = ["RefinedQuantileBinner", "refined_layout"]

from typing import Any

import attrs
import numpy as np

import miro_core
from miro_core import hookimpl

from ._common import check_state, edges_state, finite_values, transform_edges


def _open_fraction(instance, attribute, value):
    if not 0.0 < value < 1.0:
        raise ValueError(f"{attribute.name} must be strictly between 0 and 1, got {value}")


def refined_layout(num_bins: int, top_fraction: float, factor: float) -> tuple[int, int, np.ndarray]:
    """``(n_coarse, n_fine, quantile_levels)`` of the ``num_bins - 1`` inner edges."""
    f, r = float(top_fraction), float(factor)
    n_fine = int(round(num_bins * f * r / (1.0 - f + f * r)))
    n_fine = min(max(n_fine, 1), num_bins - 1)
    n_coarse = num_bins - n_fine
    coarse = (1.0 - f) * np.arange(1, n_coarse + 1) / n_coarse
    fine = (1.0 - f) + f * np.arange(1, n_fine) / n_fine
    return n_coarse, n_fine, np.concatenate([coarse, fine])


class RefinedQuantileBinner(miro_core.Binner):
    """Quantile bins with the top of the distribution split finer; still num_bins bins in total."""

    name = "refined_quantile"

    @miro_core.config
    class Config:
        num_bins: int = attrs.field(default=64, validator=attrs.validators.and_(attrs.validators.ge(2), attrs.validators.le(32767)))
        #: Share of the calibration mass (the highest scores) that gets the finer bins.
        refine_top_fraction: float = attrs.field(default=0.125, validator=_open_fraction)
        #: How many times narrower (in population) a refined bin is than a coarse one.
        refine_factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))

    def fit(self, scores: np.ndarray) -> dict[str, Any]:
        x = finite_values(scores)
        b = self.num_bins
        n_coarse, n_fine, levels = refined_layout(b, self.config.refine_top_fraction, self.config.refine_factor)
        if x.size == 0:
            edges = np.empty(0)
        else:
            edges = np.maximum.accumulate(np.quantile(x, levels))
        return edges_state(
            self.name, b, edges, x.size, quantile_levels=[float(v) for v in levels], n_coarse=n_coarse, n_fine=n_fine
        )

    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        edges = check_state(state, self.name, self.num_bins)
        return transform_edges(scores, edges, self.num_bins)


@hookimpl
def miro_register_binners(register):
    register(RefinedQuantileBinner)
