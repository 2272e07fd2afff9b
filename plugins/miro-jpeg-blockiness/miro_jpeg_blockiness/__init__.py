"""``miro_jpeg_blockiness``: a MIRO plugin providing the reward ``jpeg_blockiness``.

MIRO finds this module through the ``miro`` entry point in pyproject.toml
(``miro_jpeg_blockiness = "miro_jpeg_blockiness"``); its ``@hookimpl`` function below registers the component.
"""

from __future__ import annotations

__all__ = ["JpegBlockinessReward"]

from miro_core import hookimpl

from .jpeg_blockiness import JpegBlockinessReward


@hookimpl
def miro_register_rewards(register):
    register(JpegBlockinessReward)
