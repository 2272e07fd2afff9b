"""The pluggy hook specifications of the ``miro`` project.

Each hook takes a ``register`` callback; implementations call ``register(cls)`` once per component class
they provide. More arguments may be added at the end later, so implementations should only name the
arguments they use (pluggy passes only those).
"""

from __future__ import annotations

import pluggy

__all__ = ["hookspec", "hookimpl", "HOOK_KINDS"]

hookspec = pluggy.HookspecMarker("miro")
hookimpl = pluggy.HookimplMarker("miro")


@hookspec
def miro_register_rewards(register):
    """Register :class:`miro_core.Reward` subclasses: ``register(MyReward)``."""


@hookspec
def miro_register_binners(register):
    """Register :class:`miro_core.Binner` subclasses: ``register(MyBinner)``."""


@hookspec
def miro_register_backbones(register):
    """Register :class:`miro_core.Backbone` subclasses: ``register(MyBackbone)``."""


@hookspec
def miro_register_guidance(register):
    """Register :class:`miro_core.Guidance` subclasses: ``register(MyGuidance)``."""


@hookspec
def miro_register_evaluators(register):
    """Register :class:`miro_core.Evaluator` subclasses: ``register(MyEvaluator)``."""


@hookspec
def miro_register_suites(register):
    """Register :class:`miro_core.Suite` subclasses: named evaluations run by ``miro eval --suite NAME``
    (prompt set, generation settings, scorers -> ``metrics.json`` + ``report.md``): ``register(MySuite)``."""


@hookspec
def miro_register_data_sources(register):
    """Register :class:`miro_core.DataSource` subclasses: ``register(MySource)``."""


@hookspec
def miro_register_text_encoders(register):
    """Register :class:`miro_core.TextEncoder` subclasses: ``register(MyEncoder)``."""


@hookspec
def miro_register_autoencoders(register):
    """Register :class:`miro_core.Autoencoder` subclasses: ``register(MyAutoencoder)``."""


@hookspec
def miro_register_commands(register):
    """Register :class:`miro_core.Command` subclasses: extra ``miro`` sub-commands."""


#: registry kind -> hook name. The order is the order ``miro plugins`` prints.
HOOK_KINDS = {
    "rewards": "miro_register_rewards",
    "binners": "miro_register_binners",
    "backbones": "miro_register_backbones",
    "guidance": "miro_register_guidance",
    "evaluators": "miro_register_evaluators",
    "suites": "miro_register_suites",
    "data_sources": "miro_register_data_sources",
    "text_encoders": "miro_register_text_encoders",
    "autoencoders": "miro_register_autoencoders",
    "commands": "miro_register_commands",
}
