"""Training: ``TrainConfig`` and ``train(config, out_dir, *, eval_fn=None, progress=True) -> TrainResult``."""

from __future__ import annotations

from .config import DataConfig, OptimConfig, SampleConfig, TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "SampleConfig", "TrainResult", "train"]
