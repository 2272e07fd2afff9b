"""``zscore`` binner: equal-width bins in standard-score space.

``fit`` stores the mean and standard deviation of the finite calibration scores; ``transform`` maps
``z = (x - mean) / std``, clipped to ``[-clip_sigma, clip_sigma]``, onto ``num_bins`` equal-width bins.
NaN -> -1 (``MISSING_BIN``), ``+inf`` -> top bin, ``-inf`` -> bin 0. A constant column (``std == 0``) or a
calibration set without finite scores puts every finite score in the middle bin ``num_bins // 2``.
"""

from __future__ import annotations

__all__ = ["ZScoreBinner"]

from typing import Any

import attrs
import numpy as np

import miro_core


class ZScoreBinner(miro_core.Binner):
    """Equal-width bins of the standard score, clipped to +-clip_sigma."""

    name = "zscore"

    @miro_core.config
    class Config:
        num_bins: int = attrs.field(default=64, validator=attrs.validators.and_(attrs.validators.ge(2), attrs.validators.le(32767)))
        #: Scores further than this many standard deviations from the mean go to the end bins.
        clip_sigma: float = attrs.field(default=3.0, validator=attrs.validators.gt(0.0))

    def fit(self, scores: np.ndarray) -> dict[str, Any]:
        x = np.asarray(scores, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        mean = float(x.mean()) if x.size else None
        std = float(x.std()) if x.size else None
        return {"binner": self.name, "num_bins": self.num_bins, "mean": mean, "std": std,
                "clip_sigma": float(self.config.clip_sigma), "fitted_on": int(x.size)}

    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        if state.get("binner") != self.name or int(state.get("num_bins", -1)) != self.num_bins:
            raise miro_core.ConfigError(
                f"zscore binner (num_bins={self.num_bins}) got a state of binner {state.get('binner')!r} with "
                f"num_bins={state.get('num_bins')!r}; transform with the binner and num_bins that fitted it."
            )
        x = np.asarray(scores, dtype=np.float64)
        b = self.num_bins
        out = np.full(x.shape, b // 2, dtype=np.int16)
        mean, std, clip = state["mean"], state["std"], float(state["clip_sigma"])
        if mean is not None and std and std > 0:
            z = np.clip((x - mean) / std, -clip, clip)
            k = np.floor((z + clip) / (2 * clip) * b)
            out = np.clip(np.nan_to_num(k, nan=0.0), 0, b - 1).astype(np.int16)
        else:
            out[x == np.inf] = b - 1
            out[x == -np.inf] = 0
        out[np.isnan(x)] = miro_core.MISSING_BIN
        return out
