"""Kept for imports: the process-group helpers live in :mod:`miro_core.distributed` (one set for scoring,
encoding and training)."""

from ..distributed import DistInfo, all_reduce_mean, barrier, broadcast_object, cleanup, init_distributed  # noqa: F401

__all__ = ["DistInfo", "init_distributed", "barrier", "all_reduce_mean", "broadcast_object", "cleanup"]
