"""``miro_cfg_rescale``: a MIRO plugin providing the guidance strategy ``cfg_rescale``.

MIRO finds this module through the ``miro`` entry point in pyproject.toml
(``miro_cfg_rescale = "miro_cfg_rescale"``); its ``@hookimpl`` function below registers the component.
"""

from __future__ import annotations

__all__ = ["CfgRescaleGuidance"]

from miro_core import hookimpl

from .cfg_rescale import CfgRescaleGuidance


@hookimpl
def miro_register_guidance(register):
    register(CfgRescaleGuidance)
