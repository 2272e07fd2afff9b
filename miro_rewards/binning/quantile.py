"""``quantile``: equal-population bins (the MIRO default, paper appendix B).

``fit`` takes the ``num_bins - 1`` inner edges at the quantiles ``k / num_bins`` (``k = 1..num_bins-1``,
``np.quantile`` with linear interpolation) of the *finite* calibration scores; NaN and +-inf are ignored
when fitting. ``transform`` applies them with ``np.searchsorted``; ties, constant columns, tiny calibration
sets, NaN and +-inf follow the shared rules of :mod:`miro_rewards.binning._common` (mid-rank rule for tie
groups, constant column -> middle bin ``num_bins // 2``, NaN -> -1, +inf -> top, -inf -> bottom).

With linear interpolation the calibration minimum always lands in bin 0 and the maximum in the top bin, so
even a handful of distinct values (``n < num_bins``) spreads over the whole range 0..num_bins-1.
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
            edges = np.quantile(x, np.arange(1, b) / b)
            edges = np.maximum.accumulate(edges)  # guard against interpolation round-off
        return edges_state(self.name, b, edges, x.size)

    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        edges = check_state(state, self.name, self.num_bins)
        return transform_edges(scores, edges, self.num_bins)


@hookimpl
def miro_register_binners(register):
    register(QuantileBinner)
