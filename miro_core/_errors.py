"""User-facing error types.

Every :class:`MiroError` message says what is wrong and what would be right. The CLI prints it as one
paragraph and exits with status 2 (tracebacks only with ``--debug``).
"""

from __future__ import annotations

__all__ = [
    "MiroError",
    "ConfigError",
    "UnknownComponentError",
    "DuplicateComponentError",
    "PluginLoadError",
    "StoreError",
    "CheckpointError",
    "did_you_mean",
]

import difflib
from collections.abc import Iterable


class MiroError(Exception):
    """An error caused by input the user can fix; the message names the problem and the fix."""


class ConfigError(MiroError, ValueError):
    """A configuration (TOML file, CLI flag or component options) is invalid."""


class UnknownComponentError(MiroError, KeyError):
    """A component name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(MiroError):
    """Two plugins registered the same name for the same kind of component."""


class PluginLoadError(MiroError):
    """A plugin entry point failed to import or registered something invalid."""


class StoreError(MiroError):
    """A reward table store cannot be opened, written or is inconsistent with the request."""


class CheckpointError(MiroError):
    """A checkpoint directory is missing, corrupt or incompatible."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
