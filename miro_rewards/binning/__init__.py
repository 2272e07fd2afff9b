"""Built-in binners: ``quantile`` (default), ``uniform`` and ``refined_quantile``.

All store ``num_bins - 1`` inner edges in a JSON state and share one transform
(:func:`miro_rewards.binning._common.transform_edges`): NaN -> -1, +inf -> top bin, -inf -> bin 0, ties
(repeated edges) -> the middle of the bins their tie group spans, constant column -> bin ``num_bins // 2``.
Import the classes from their modules; this package stays import-cheap.
"""

__all__: list[str] = []
