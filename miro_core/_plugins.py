"""Plugin manager and component registries.

Plugins are modules with ``@hookimpl`` functions, loaded from the ``miro`` entry-point group (built-ins
included: they register exactly like third-party packages). A plugin module may list sub-modules in a
``miro_plugins`` sequence (as pytest's ``pytest_plugins``); those are registered too, attributed to the
same distribution.

``MIRO_LOAD_PLUGINS`` limits which *third-party* entry points load: a comma-separated list of entry-point
names (empty string: none). The built-ins (the entry points of the ``miro`` distribution itself: ``miro_core``,
``miro_rewards``, ...) always load, as simonw/llm loads its default plugins whatever ``LLM_LOAD_PLUGINS`` says:
``MIRO_LOAD_PLUGINS=""`` leaves a working ``miro`` with only its own components.
"""

from __future__ import annotations

__all__ = [
    "Registration",
    "Registry",
    "PluginHost",
    "get_plugin_host",
    "registry",
    "reset_plugins",
]

import importlib
import importlib.metadata as md
import logging
import os
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import attrs
import pluggy

from . import _hookspecs
from ._config import structure
from ._errors import DuplicateComponentError, PluginLoadError, UnknownComponentError, did_you_mean
from ._hookspecs import HOOK_KINDS

log = logging.getLogger(__name__)

LOCAL_DISTRIBUTION = "<local>"
#: the distribution whose entry points are the built-ins (always loaded, whatever MIRO_LOAD_PLUGINS says)
BUILTIN_DISTRIBUTION = "miro"


@attrs.frozen
class Registration:
    """One registered component: its class and who registered it."""

    kind: str
    name: str
    cls: type
    distribution: str
    version: str
    plugin: str

    def as_dict(self) -> dict[str, Any]:
        first_paragraph = (self.cls.__doc__ or "").strip().split("\n\n")[0]
        summary = " ".join(line.strip() for line in first_paragraph.splitlines()) or getattr(self.cls, "help", "")
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "plugin": self.plugin,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "summary": summary,
        }


class Registry:
    """Components of one kind by name: ``names()``, ``get(name)``, ``create(name, options)``."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._items: dict[str, Registration] = {}

    # -- registration -------------------------------------------------------------------------------
    def add(self, cls: type, *, distribution: str = LOCAL_DISTRIBUTION, version: str = "", plugin: str = "") -> None:
        source = f"{distribution} {version}".strip()
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginLoadError(
                f"Plugin {plugin!r} ({source}) registered {cls!r} as a {self.kind[:-1]} but it has no string "
                "class attribute `name`; give the class a unique `name`."
            )
        if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginLoadError(
                f"Plugin {plugin!r} ({source}) registered {cls!r} as {self.kind!r} component {name!r}, but it "
                f"does not subclass {self.base.__module__}.{self.base.__qualname__}."
            )
        if not attrs.has(getattr(cls, "Config", None) or object):
            raise PluginLoadError(
                f"{self.kind} component {name!r} from {source} has no attrs `Config` class; nest a "
                "`@miro_core.config class Config: ...` on it (use miro_core.EmptyConfig if it takes no options)."
            )
        if name in self._items:
            other = self._items[name]
            raise DuplicateComponentError(
                f"Two plugins register the {self.kind[:-1] if self.kind.endswith('s') else self.kind} name "
                f"{name!r}: {other.distribution} {other.version} (plugin {other.plugin}, "
                f"{other.cls.__module__}.{other.cls.__qualname__}) and {source} (plugin {plugin}, "
                f"{cls.__module__}.{cls.__qualname__}). Uninstall one of them or restrict loading with "
                "MIRO_LOAD_PLUGINS."
            )
        self._items[name] = Registration(self.kind, name, cls, distribution, version, plugin)

    # -- lookup -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._items[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> Registration:
        try:
            return self._items[name]
        except KeyError:
            available = ", ".join(self.names()) or "(none registered)"
            raise UnknownComponentError(
                f"Unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}."
                f"{did_you_mean(name, self._items)} Available {self.kind}: {available}. "
                "Install a plugin that provides it, or check `miro plugins`."
            ) from None

    def config_class(self, name: str) -> type:
        return self.get(name).cls.Config

    def create(self, name: str, options: Any = None, **kwargs: Any) -> Any:
        """Instantiate ``name`` with ``options`` (a dict or Config instance) validated by its Config."""
        cls = self.get(name).cls
        cfg = structure(options or {}, cls.Config, path=f"{self.kind}.{name}")
        return cls(cfg, **kwargs)


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return LOCAL_DISTRIBUTION, ""
    return dist.metadata["Name"], dist.version


class PluginHost:
    """The pluggy manager plus one :class:`Registry` per component kind."""

    def __init__(self, *, load_entrypoints: bool = True, extra_plugins: list[tuple[Any, str]] | None = None,
                 builtins: bool = True):
        """``load_entrypoints``: load the ``miro`` entry points (``MIRO_LOAD_PLUGINS`` filters the third-party
        ones); ``builtins=False`` skips the built-in entry points too (tests that need an isolated host)."""
        from . import interfaces

        self.pm = pluggy.PluginManager("miro")
        self.pm.add_hookspecs(_hookspecs)
        self._sources: dict[int, tuple[str, str, str]] = {}  # id(plugin) -> (dist, version, plugin name)
        bases = {
            "rewards": interfaces.Reward,
            "binners": interfaces.Binner,
            "backbones": interfaces.Backbone,
            "guidance": interfaces.Guidance,
            "evaluators": interfaces.Evaluator,
            "suites": interfaces.Suite,
            "data_sources": interfaces.DataSource,
            "text_encoders": interfaces.TextEncoder,
            "autoencoders": interfaces.Autoencoder,
            "commands": interfaces.Command,
        }
        self.registries = {kind: Registry(kind, bases[kind]) for kind in HOOK_KINDS}
        if load_entrypoints:
            self._load_entrypoints(builtins=builtins)
        for plugin, name in extra_plugins or []:
            self.add_plugin(plugin, name=name)
        self._check_pending()
        self._collect()

    def _check_pending(self) -> None:
        """Fail loudly, naming plugin and distribution, on ``miro_*`` hook functions no hookspec knows."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            dist, version, pname = self._sources.get(id(exc.plugin), (LOCAL_DISTRIBUTION, "", str(exc.plugin)))
            known = [n for n in dir(_hookspecs) if n.startswith("miro_")]
            unknown = [n for n in dir(exc.plugin) if n not in known and hasattr(getattr(exc.plugin, n, None), "miro_impl")]
            hint = "".join(did_you_mean(n, known) for n in unknown)
            raise PluginLoadError(
                f"Plugin {pname!r} (distribution {dist} {version}) implements unknown hook(s) "
                f"{', '.join(unknown) or '?'}: {exc}.{hint} Known hooks: {', '.join(known)}."
            ) from exc

    # -- loading ------------------------------------------------------------------------------------
    def _load_entrypoints(self, builtins: bool = True) -> None:
        allowed_env = os.environ.get("MIRO_LOAD_PLUGINS")
        allowed = None if allowed_env is None else {s.strip() for s in allowed_env.split(",") if s.strip()}
        eps = sorted(md.entry_points(group="miro"), key=lambda e: e.name)
        seen: set[str] = set()
        third_party: list[str] = []
        for ep in eps:
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            dist, version = _distribution_of(ep)
            builtin = dist == BUILTIN_DISTRIBUTION
            if not builtin:
                third_party.append(ep.name)
            if builtin and not builtins:
                continue
            if not builtin and allowed is not None and ep.name not in allowed:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported with the original traceback
                tb = "".join(traceback.format_exception(exc))
                raise PluginLoadError(
                    f"Plugin entry point {ep.name!r} ({ep.value}) from distribution {dist} {version} failed to "
                    f"import: {type(exc).__name__}: {exc}. Fix or uninstall that package, or skip it with "
                    f"MIRO_LOAD_PLUGINS (a comma-separated list of the third-party entry points to load).\n"
                    f"Original traceback:\n{tb}"
                ) from exc
            self.add_plugin(module, name=ep.name, distribution=dist, version=version)
        unknown = sorted((allowed or set()) - seen)
        if unknown:
            log.warning(
                "MIRO_LOAD_PLUGINS names %s, which no installed distribution provides (installed third-party "
                "plugins: %s; the built-ins always load)", ", ".join(unknown), ", ".join(third_party) or "none",
            )

    def add_plugin(self, plugin: Any, *, name: str | None = None, distribution: str = LOCAL_DISTRIBUTION, version: str = "") -> None:
        """Register a plugin object (module or instance) and the sub-modules it lists in ``miro_plugins``."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self.pm.register(plugin, name=name)
        self._sources[id(plugin)] = (distribution, version, name)
        for sub in getattr(plugin, "miro_plugins", ()) or ():
            try:
                module = importlib.import_module(sub) if isinstance(sub, str) else sub
            except Exception as exc:  # noqa: BLE001
                tb = "".join(traceback.format_exception(exc))
                raise PluginLoadError(
                    f"Plugin module {sub!r} listed by {name!r} (distribution {distribution} {version}) failed to "
                    f"import: {type(exc).__name__}: {exc}.\nOriginal traceback:\n{tb}"
                ) from exc
            self.add_plugin(module, name=getattr(module, "__name__", str(sub)), distribution=distribution, version=version)

    def _collect(self) -> None:
        for kind, hook_name in HOOK_KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                dist, version, pname = self._sources.get(id(impl.plugin), (LOCAL_DISTRIBUTION, "", impl.plugin_name))

                def register(cls, _d=dist, _v=version, _p=pname, _k=kind):
                    self.registries[_k].add(cls, distribution=_d, version=_v, plugin=_p)

                kwargs = {"register": register}
                try:
                    impl.function(*[kwargs[a] for a in impl.argnames])
                except (DuplicateComponentError, PluginLoadError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    tb = "".join(traceback.format_exception(exc))
                    raise PluginLoadError(
                        f"Hook {hook_name} of plugin {pname!r} (distribution {dist} {version}) raised "
                        f"{type(exc).__name__}: {exc}.\nOriginal traceback:\n{tb}"
                    ) from exc

    # -- access -------------------------------------------------------------------------------------
    def __getitem__(self, kind: str) -> Registry:
        try:
            return self.registries[kind]
        except KeyError:
            raise UnknownComponentError(
                f"Unknown component kind {kind!r}.{did_you_mean(kind, self.registries)} "
                f"Kinds: {', '.join(self.registries)}."
            ) from None

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {kind: [r.as_dict() for r in reg] for kind, reg in self.registries.items()}


_host: PluginHost | None = None
_lock = threading.Lock()


def get_plugin_host() -> PluginHost:
    """The process-wide plugin host (entry points loaded once, on first use)."""
    global _host
    with _lock:
        if _host is None:
            _host = PluginHost()
        return _host


def reset_plugins(host: PluginHost | None = None) -> None:
    """Drop (or replace) the process-wide host, e.g. after installing a plugin or in tests."""
    global _host
    with _lock:
        _host = host


def registry(kind: str) -> Registry:
    """The registry of one component kind: ``registry("rewards").create("aesthetic", {...})``."""
    return get_plugin_host()[kind]
