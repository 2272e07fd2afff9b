"""miro_core: interfaces, hooks, registries, config, store, conditioning, flow matching, training, CLI.

Importing ``miro_core`` is cheap; the names below load their modules on first access.
"""

from __future__ import annotations

from ._hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    # errors
    "MiroError": "._errors",
    "ConfigError": "._errors",
    "UnknownComponentError": "._errors",
    "DuplicateComponentError": "._errors",
    "PluginLoadError": "._errors",
    "StoreError": "._errors",
    "CheckpointError": "._errors",
    # config
    "config": "._config",
    "EmptyConfig": "._config",
    "structure": "._config",
    "unstructure": "._config",
    "load_toml": "._config",
    "apply_overrides": "._config",
    # plugins
    "registry": "._plugins",
    "get_plugin_host": "._plugins",
    "reset_plugins": "._plugins",
    "PluginHost": "._plugins",
    "Registry": "._plugins",
    # interfaces
    "Component": ".interfaces",
    "Reward": ".interfaces",
    "Binner": ".interfaces",
    "Backbone": ".interfaces",
    "Guidance": ".interfaces",
    "TextEncoder": ".interfaces",
    "Autoencoder": ".interfaces",
    "Evaluator": ".interfaces",
    "Suite": ".interfaces",
    "DataSource": ".interfaces",
    "Sample": ".interfaces",
    "Command": ".interfaces",
    "MISSING_BIN": ".interfaces",
}

__all__ = ["hookimpl", "hookspec", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'miro_core' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
