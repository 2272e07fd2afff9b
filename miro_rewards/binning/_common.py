"""Shared machinery of the built-in binners: edge fitting helpers and the edge-based transform.

Every built-in binner stores ``num_bins - 1`` non-decreasing inner edges in its state and maps a score to
its bin with :func:`transform_edges`. The rules (DESIGN.md sections 1 and 4) are the same for all of them:

* NaN -> ``MISSING_BIN`` (-1); ``+inf`` -> top bin ``num_bins - 1``; ``-inf`` -> bottom bin 0.
* A score ``x`` that equals no edge goes to bin ``#{edges <= x}`` (``np.searchsorted(..., side="right")``).
* **Ties (mid-rank rule).** Where several edges coincide (a tie group: discrete scores, a constant column,
  a clipped range), a score equal to that value goes to the *middle* of the bins the tie group spans:
  ``(lo + hi + 1) // 2`` with ``lo = #{edges < x}``, ``hi = #{edges <= x}``. Identical scores always get
  the same bin (the map stays a monotone function of the score), their level ``k/(B-1)`` is close to their
  mid-rank percentile, and the bins strictly inside a tie group stay empty: they cannot be filled without
  splitting identical scores. With distinct edges this reduces to the plain ``side="right"`` rule.
* **Extremes stay extremes.** A tie group that includes the top edge (e.g. a reward that saturates at its
  maximum for most clean images) goes to the top bin ``num_bins - 1``, and one that includes the bottom edge
  goes to bin 0, so the default guidance targets s+ = 1 and s- = 0 are levels that training data actually has.
* The ``quantile`` binner avoids most tie groups at the extremes when fitting (a saturated minimum / maximum
  gets its extreme bin alone and the rest is split by its own quantiles, see :mod:`.quantile`); the rules
  here still apply to whatever edges a binner produces.
* A constant column therefore lands in the middle bin ``num_bins // 2``; a calibration set with no finite
  value gives an empty edge list and every finite score lands in that middle bin.
"""

from __future__ import annotations

__all__ = ["MISSING", "finite_values", "check_state", "transform_edges", "edges_state"]

from typing import Any

import numpy as np

from miro_core import ConfigError, MISSING_BIN

MISSING = MISSING_BIN

#: Elements per block in :func:`transform_edges` (bounds the float64 temporaries to a few MB).
_BLOCK = 1 << 20


def finite_values(scores: np.ndarray) -> np.ndarray:
    """The finite entries of ``scores`` as a 1-D float64 array (NaN and +-inf dropped)."""
    x = np.asarray(scores).ravel()
    if x.dtype.kind not in "fiub":
        raise ConfigError(f"Binner scores must be a numeric array, got dtype {x.dtype}; pass raw float scores.")
    x = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    return x.astype(np.float64, copy=False)


def edges_state(name: str, num_bins: int, edges: np.ndarray, count: int, **extra: Any) -> dict[str, Any]:
    """A JSON-serialisable binner state (plain Python floats and ints)."""
    state: dict[str, Any] = {
        "binner": name,
        "num_bins": int(num_bins),
        "edges": [float(e) for e in np.asarray(edges, dtype=np.float64).tolist()],
        "fitted_on": int(count),
    }
    state.update(extra)
    return state


def check_state(state: dict[str, Any], name: str, num_bins: int) -> np.ndarray:
    """Validate a (possibly JSON-reloaded) state and return its edges as float64."""
    if not isinstance(state, dict) or "edges" not in state or "num_bins" not in state:
        raise ConfigError(
            f"Binner {name!r} got a state without 'edges'/'num_bins' ({type(state).__name__}); pass the dict "
            "returned by fit() (or stored in the bins array attrs)."
        )
    if state.get("binner", name) != name:
        raise ConfigError(
            f"Binner {name!r} got a state fitted by binner {state.get('binner')!r}; use that binner to transform."
        )
    if int(state["num_bins"]) != num_bins:
        raise ConfigError(
            f"Binner {name!r} has num_bins={num_bins} but the state was fitted with num_bins={state['num_bins']}; "
            "create the binner with the same num_bins or refit."
        )
    edges = np.asarray(state["edges"], dtype=np.float64)
    if edges.ndim != 1 or (edges.size and edges.size != num_bins - 1):
        raise ConfigError(
            f"Binner {name!r} state has {edges.size} edges; expected {num_bins - 1} (num_bins - 1) or none."
        )
    if edges.size and (not np.isfinite(edges).all() or (np.diff(edges) < 0).any()):
        raise ConfigError(f"Binner {name!r} state edges must be finite and non-decreasing; refit the binner.")
    return edges


def transform_edges(scores: np.ndarray, edges: np.ndarray, num_bins: int) -> np.ndarray:
    """Bins (int16, same shape as ``scores``) for ``num_bins - 1`` sorted inner ``edges`` (see module doc)."""
    x = np.asarray(scores)
    out = np.empty(x.shape, dtype=np.int16)
    flat_in = x.reshape(-1)
    flat_out = out.reshape(-1)
    middle = num_bins // 2
    # Tie groups: values repeated in ``edges``, each with its mid-rank bin (lo + hi + 1) // 2.
    values, counts = np.unique(edges, return_counts=True) if edges.size else (edges, np.empty(0, dtype=int))
    tie_values = values[counts > 1]
    lo = np.searchsorted(edges, tie_values, "left")
    hi = np.searchsorted(edges, tie_values, "right")
    tie_bins = (lo + hi + 1) // 2
    # Extremes stay extremes: a tie group that reaches the top (bottom) edge is the best (worst) data, so it
    # takes the top (bottom) bin; otherwise s+ = 1 (s- = 0) would be a level no training sample has.
    top = (hi == edges.size) & (lo > 0)
    bottom = (lo == 0) & (hi < edges.size)
    tie_bins[top] = num_bins - 1
    tie_bins[bottom] = 0
    for start in range(0, flat_in.size, _BLOCK):
        xb = flat_in[start : start + _BLOCK]
        if edges.size == 0:
            b = np.full(xb.shape, middle, dtype=np.int64)
            b[xb == np.inf] = num_bins - 1
            b[xb == -np.inf] = 0
        else:
            xf = xb.astype(np.float64, copy=False)
            b = np.searchsorted(edges, xf, side="right")
            for value, tie_bin in zip(tie_values.tolist(), tie_bins.tolist()):
                b[xf == value] = tie_bin
        if xb.dtype.kind == "f":
            b[np.isnan(xb)] = MISSING
        flat_out[start : start + _BLOCK] = b
    return out
