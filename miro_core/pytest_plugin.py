"""MIRO's pytest plugin (entry point ``pytest11: miro``): fixtures to register components in a test.

Installed with ``miro``, so any test session in that environment has these fixtures; a test module can also
import them (``from miro_core.pytest_plugin import miro_components``). The contract test classes are in
:mod:`miro_core.testing`.

``miro_components(*classes, plugins=(), installed=True)`` builds a plugin host with the given component classes
(their kind is found from the base class: ``Reward`` -> rewards, ...) and plugin modules / objects with
``@hookimpl`` functions, makes it the process-wide host (what ``miro_core.registry(...)`` and the CLI use)
for the rest of the test, and puts the previous host back afterwards. ``installed=False`` leaves out the
installed entry points (built-ins included) for a fully isolated registry. Nothing is installed; no state
outlives the test::

    def test_my_reward_scores(miro_components):
        miro_components(MyReward)
        assert registry("rewards").create("my_reward").score(images, prompts).shape == (2,)

``miro_fresh_plugins`` drops the process-wide host before and after the test, so entry points are loaded again
(e.g. after putting a plugin's ``.dist-info`` on ``sys.path``).

This module is imported at the start of every pytest session in the environment: it imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["miro_components", "miro_fresh_plugins", "components_plugin"]

from typing import Any

import pytest

#: base class name -> (registry kind, hook name)
_KIND_OF_BASE = {
    "Reward": ("rewards", "miro_register_rewards"),
    "Binner": ("binners", "miro_register_binners"),
    "Backbone": ("backbones", "miro_register_backbones"),
    "Guidance": ("guidance", "miro_register_guidance"),
    "Evaluator": ("evaluators", "miro_register_evaluators"),
    "Suite": ("suites", "miro_register_suites"),
    "DataSource": ("data_sources", "miro_register_data_sources"),
    "TextEncoder": ("text_encoders", "miro_register_text_encoders"),
    "Autoencoder": ("autoencoders", "miro_register_autoencoders"),
    "Command": ("commands", "miro_register_commands"),
}


def components_plugin(*classes: type) -> Any:
    """A plugin object whose hooks register ``classes`` (each under the hook of its base class)."""
    from . import hookimpl, interfaces
    from ._errors import ConfigError

    by_hook: dict[str, list[type]] = {}
    for cls in classes:
        for base_name, (_, hook) in _KIND_OF_BASE.items():
            if isinstance(cls, type) and issubclass(cls, getattr(interfaces, base_name)):
                by_hook.setdefault(hook, []).append(cls)
                break
        else:
            raise ConfigError(
                f"miro_components: {cls!r} is not a MIRO component class; pass subclasses of "
                f"{', '.join('miro_core.' + b for b in _KIND_OF_BASE)} (or a plugin module with plugins=[...])."
            )

    class _Components:
        pass

    plugin = _Components()
    for hook, registered in by_hook.items():
        def impl(register, _classes=tuple(registered)):
            for c in _classes:
                register(c)

        impl.__name__ = hook
        setattr(plugin, hook, hookimpl(impl))
    return plugin


@pytest.fixture
def miro_components():
    """Factory: ``miro_components(*classes, plugins=(), installed=True) -> PluginHost`` (see the module doc)."""
    from . import _plugins

    previous = _plugins._host
    count = [0]

    def make(*classes: type, plugins: Any = (), installed: bool = True):
        count[0] += 1
        extra = [(p, getattr(p, "__name__", None) or f"miro_components_plugin_{count[0]}_{i}")
                 for i, p in enumerate(plugins)]
        if classes:
            extra.append((components_plugin(*classes), f"miro_components_{count[0]}"))
        host = _plugins.PluginHost(load_entrypoints=installed, extra_plugins=extra)
        _plugins.reset_plugins(host)
        return host

    try:
        yield make
    finally:
        _plugins.reset_plugins(previous)


@pytest.fixture
def miro_fresh_plugins():
    """Drop the process-wide plugin host before and after the test (entry points load again on first use)."""
    from . import _plugins

    previous = _plugins._host
    _plugins.reset_plugins(None)
    try:
        yield
    finally:
        _plugins.reset_plugins(previous)
