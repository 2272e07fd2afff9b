"""``miro_example``: a complete third-party MIRO plugin.

The package is found through its ``miro`` entry point (``miro_example = "miro_example"`` in its
pyproject.toml); this module is the plugin: its ``@hookimpl`` functions below register one reward and one
binner, exactly as MIRO's built-ins do. It imports no model library and loads no weights.
"""

from __future__ import annotations

__all__ = ["ColorfulnessReward", "ZScoreBinner"]

from miro_core import hookimpl

from .colorfulness import ColorfulnessReward
from .zscore import ZScoreBinner


@hookimpl
def miro_register_rewards(register):
    register(ColorfulnessReward)


@hookimpl
def miro_register_binners(register):
    register(ZScoreBinner)
