"""``quantile``: equal-population bins (the MIRO default, paper appendix B).

``fit`` takes the ``num_bins - 1`` inner edges at the quantiles ``k / num_bins`` (``k = 1..num_bins-1``,
``np.quantile`` with linear interpolation) of the *finite* calibration scores; NaN and +-inf are ignored
when fitting. ``transform`` applies them with ``np.searchsorted``; ties, constant columns, tiny calibration
sets, NaN and +-inf follow the shared rules of :mod:`miro_rewards.binning._common` (mid-rank rule for tie
groups, constant column -> middle bin ``num_bins // 2``, NaN -> -1, +inf -> top, -inf -> bottom).

With linear interpolation the calibration minimum always lands in bin 0 and the maximum in the top bin, so
even a handful of distinct values (``n < num_bins``) spreads over the whole range 0..num_bins-1.

**Saturated extremes.** When so many calibration scores share the maximum (a reward that saturates for most
clean images) or the minimum that plain quantiles would put two or more edges on that value, the bins between
those edges would stay empty (a 64 % tie at the top of 16 bins empties 9 of them). Instead the tie group
takes the extreme bin alone and the remaining scores are split into the remaining bins by their own quantiles,
so every bin is used and each non-extreme bin holds an equal share of the rest: the closest to equal
population that identical scores allow.
"""

from __future__ import annotations

__all__ = ["QuantileBinner"]

from typing import Any

import attrs
import numpy as np

import miro_core
from miro_core import hookimpl

from ._common import check_state, edges_state, finite_values, transform_edges


class QuantileBinner(miro_core.Binner):
    """Equal-population bins from the quantiles of the calibration scores (MIRO default)."""

    name = "quantile"

    @miro_core.config
    class Config:
        #: Number of bins B; the model sees the level k/(B-1).
        num_bins: int = attrs.field(default=64, validator=attrs.validators.and_(attrs.validators.ge(2), attrs.validators.le(32767)))

    def fit(self, scores: np.ndarray) -> dict[str, Any]:
        x = finite_values(scores)
        b = self.num_bins
        if x.size == 0:
            edges = np.empty(0)
        else:
            edges = _quantile_edges(x, b)
            edges = np.maximum.accumulate(edges)  # guard against interpolation round-off
        return edges_state(self.name, b, edges, x.size)

    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        edges = check_state(state, self.name, self.num_bins)
        return transform_edges(scores, edges, self.num_bins)


def _quantile_edges(x: np.ndarray, b: int) -> np.ndarray:
    """``b - 1`` inner edges: plain quantiles, or with a saturated minimum / maximum (a tie group on which plain
    quantiles put two or more edges) that value alone in bin 0 / bin ``b - 1`` and the rest split by its own
    quantiles."""
    lo, hi = float(x.min()), float(x.max())
    plain = np.quantile(x, np.arange(1, b) / b)
    if lo == hi:
        return plain  # constant column: the shared middle-bin rule
    # saturated = plain quantiles would put several edges on that value (and leave the bins between them empty)
    bottom = int(np.sum(plain == lo)) >= 2
    top = int(np.sum(plain == hi)) >= 2
    if not (bottom or top):
        return plain
    rest = x[(x > lo if bottom else True) & (x < hi if top else True)]
    m = b - int(bottom) - int(top)  # bins left for the rest
    if rest.size == 0 or m < 1:
        return plain  # nothing but the extremes: plain quantiles already give them bins 0 and b - 1
    # bin(x) = #{edges <= x}: the minimum of the rest is the first edge (the saturated minimum alone below it),
    # the maximum the last one (the saturated maximum alone at or above it)
    parts = [np.array([rest.min()])] if bottom else []
    parts.append(np.quantile(rest, np.arange(1, m) / m) if m > 1 else np.empty(0))
    if top:
        parts.append(np.array([hi]))
    return np.concatenate(parts)


@hookimpl
def miro_register_binners(register):
    register(QuantileBinner)
