"""The score head shared by the LAION aesthetic predictor and ImageReward.

Both reference implementations use the same MLP: Linear layers ``in-1024-128-64-16-1`` with dropout and *no*
activations; module names match their released state dicts (``layers.0.weight`` ... ``layers.7.bias``).
"""

from __future__ import annotations

__all__ = ["PreferenceMLP"]

import torch
from torch import nn


class PreferenceMLP(nn.Module):
    """``in-1024-128-64-16-1`` linear head with dropout and no activations (as released)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
