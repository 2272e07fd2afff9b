"""``uniform``: equal-width bins between a robust minimum and maximum (paper appendix C.2 ablation).

``fit`` takes ``low`` / ``high`` as the ``lower_quantile`` / ``upper_quantile`` quantiles of the finite
calibration scores (robust to outliers) and places ``num_bins - 1`` equally spaced inner edges between them:
bin ``k`` holds ``low + k*w <= x < low + (k+1)*w`` with ``w = (high - low) / num_bins``. Scores outside
``[low, high]`` are clipped into the bottom / top bin. ``lower_quantile=0, upper_quantile=1`` uses the plain
min and max. A degenerate range (``low == high``) makes every edge equal: scores below go to bin 0, above to
the top bin, equal to the middle bin (shared tie rule of :mod:`miro_rewards.binning._common`).
"""

from __future__ import annotations

__all__ = ["UniformBinner"]

from typing import Any

import attrs
import numpy as np

import miro_core
from miro_core import hookimpl

from ._common import check_state, edges_state, finite_values, transform_edges


def _fraction(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value}")


class UniformBinner(miro_core.Binner):
    """Equal-width bins between robust (quantile) min and max; outside values are clipped."""

    name = "uniform"

    @miro_core.config
    class Config:
        num_bins: int = attrs.field(default=64, validator=attrs.validators.and_(attrs.validators.ge(2), attrs.validators.le(32767)))
        #: Quantile of the finite calibration scores used as the low end of bin 0.
        lower_quantile: float = attrs.field(default=0.001, validator=_fraction)
        #: Quantile used as the high end of the top bin.
        upper_quantile: float = attrs.field(default=0.999, validator=_fraction)

        def __attrs_post_init__(self):
            if self.lower_quantile >= self.upper_quantile:
                raise ValueError(
                    f"uniform binner: lower_quantile ({self.lower_quantile}) must be below upper_quantile "
                    f"({self.upper_quantile})"
                )

    def fit(self, scores: np.ndarray) -> dict[str, Any]:
        x = finite_values(scores)
        b = self.num_bins
        if x.size == 0:
            return edges_state(self.name, b, np.empty(0), 0, low=None, high=None)
        low, high = (float(v) for v in np.quantile(x, [self.config.lower_quantile, self.config.upper_quantile]))
        edges = low + (high - low) * (np.arange(1, b) / b)
        edges = np.clip(np.maximum.accumulate(edges), low, high)
        return edges_state(self.name, b, edges, x.size, low=low, high=high)

    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        edges = check_state(state, self.name, self.num_bins)
        return transform_edges(scores, edges, self.num_bins)


@hookimpl
def miro_register_binners(register):
    register(UniformBinner)
