"""Plugin manager and component registries.

Plugins are modules with ``@hookimpl`` functions, loaded from the ``miro`` entry-point group (built-ins
included: they register exactly like third-party packages). A plugin module may list sub-modules in a
``miro_plugins`` sequence (as pytest's ``pytest_plugins``); those are registered too, attributed to the
same distribution.

``MIRO_LOAD_PLUGINS`` limits which *third-party* entry points load: a comma-separated list of entry-point
names (empty string: none). The built-ins (the entry points of the ``miro`` distribution itself: ``miro_core``,
``miro_rewards``, ...) always load, as simonw/llm loads its default plugins whatever ``LLM_LOAD_PLUGINS`` says:
``MIRO_LOAD_PLUGINS=""`` leaves a working ``miro`` with only its own components.

Failure isolation: a *third-party* plugin that fails to import, registers an invalid component, implements an
unknown hook or raises in a hook is recorded in :attr:`PluginHost.broken` (with its distribution, the stage and
the fix), logged once as a warning, and left out entirely; everything else loads, ``miro plugins`` lists it as
broken, and looking up a name it might have provided says so. Two plugins registering the same name make that
one name unusable (looking it up raises :class:`DuplicateComponentError` naming both); their other components
work. A failure in the built-ins (distribution ``miro``) or in plugins added in code is still raised: that is a
bug to fix, not a package to skip.
"""

from __future__ import annotations

__all__ = [
    "BrokenPlugin",
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


@attrs.frozen
class BrokenPlugin:
    """A third-party plugin left out of the host, and why (``miro plugins`` lists these)."""

    entry_point: str
    distribution: str
    version: str
    #: "import", "unknown hook", "hook", "invalid component" or "duplicate name"
    stage: str
    error: str
    traceback: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"entry_point": self.entry_point, "distribution": self.distribution, "version": self.version,
                "stage": self.stage, "error": self.error}


class Registry:
    """Components of one kind by name: ``names()``, ``get(name)``, ``create(name, options)``."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._items: dict[str, Registration] = {}
        #: names registered by more than one plugin: unusable until one is uninstalled or skipped
        self._conflicts: dict[str, list[Registration]] = {}
        #: extra text for unknown names (the host's broken and skipped plugins)
        self.missing_hint: Any = None

    @property
    def _noun(self) -> str:
        return self.kind[:-1] if self.kind.endswith("s") else self.kind

    # -- registration -------------------------------------------------------------------------------
    def validate(self, cls: type, *, distribution: str = LOCAL_DISTRIBUTION, version: str = "", plugin: str = "") -> None:
        """Raise :class:`PluginLoadError` if ``cls`` cannot be registered as a component of this kind."""
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

    def add(self, cls: type, *, distribution: str = LOCAL_DISTRIBUTION, version: str = "", plugin: str = "",
            conflicts: str = "raise") -> Registration:
        """Register ``cls``. A name registered twice raises :class:`DuplicateComponentError`, or with
        ``conflicts="defer"`` (the host, for third-party plugins) makes the name unusable: ``get`` raises."""
        self.validate(cls, distribution=distribution, version=version, plugin=plugin)
        name = cls.name
        reg = Registration(self.kind, name, cls, distribution, version, plugin)
        if name in self._conflicts:
            self._conflicts[name].append(reg)
            return reg
        if name in self._items:
            if conflicts != "defer":
                raise DuplicateComponentError(self._duplicate_message([self._items[name], reg]))
            self._conflicts[name] = [self._items.pop(name), reg]
            return reg
        self._items[name] = reg
        return reg

    def _duplicate_message(self, regs: list[Registration]) -> str:
        who = " and ".join(f"{r.distribution} {r.version} (plugin {r.plugin}, {r.cls.__module__}.{r.cls.__qualname__})"
                           .replace("  ", " ") for r in regs)
        return (f"Two plugins register the {self._noun} name {regs[0].name!r}: {who}. Uninstall one of them or "
                "restrict loading with MIRO_LOAD_PLUGINS (a comma-separated list of the third-party entry points "
                "to load).")

    def conflicts(self) -> dict[str, list[Registration]]:
        """Names registered by more than one plugin (unusable), with every registration."""
        return {k: list(v) for k, v in self._conflicts.items()}

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
            if name in self._conflicts:
                raise DuplicateComponentError(self._duplicate_message(self._conflicts[name])) from None
            available = ", ".join(self.names()) or "(none registered)"
            hint = self.missing_hint() if callable(self.missing_hint) else ""
            raise UnknownComponentError(
                f"Unknown {self._noun} {name!r}.{did_you_mean(name, self._items)} Available {self.kind}: "
                f"{available}. Install a plugin that provides it, or check `miro plugins`.{hint}"
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
    """The pluggy manager plus one :class:`Registry` per component kind.

    ``broken``: the third-party plugins left out (:class:`BrokenPlugin`: entry point, distribution, stage, error);
    ``skipped``: ``(entry point, distribution, version)`` of those ``MIRO_LOAD_PLUGINS`` did not load.
    """

    def __init__(self, *, load_entrypoints: bool = True, extra_plugins: list[tuple[Any, str]] | None = None,
                 builtins: bool = True):
        """``load_entrypoints``: load the ``miro`` entry points (``MIRO_LOAD_PLUGINS`` filters the third-party
        ones); ``builtins=False`` skips the built-in entry points too (tests that need an isolated host)."""
        from . import interfaces

        self.pm = pluggy.PluginManager("miro")
        self.pm.add_hookspecs(_hookspecs)
        self._sources: dict[int, tuple[str, str, str]] = {}  # id(plugin) -> (dist, version, plugin name)
        self._roots: dict[int, str] = {}  # id(plugin) -> its third-party entry point (isolated on failure)
        self._root_dist: dict[str, tuple[str, str]] = {}  # third-party entry point -> (dist, version)
        self.broken: list[BrokenPlugin] = []
        self.skipped: list[tuple[str, str, str]] = []
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
        for reg in self.registries.values():
            reg.missing_hint = self._missing_hint
        if load_entrypoints:
            self._load_entrypoints(builtins=builtins)
        for plugin, name in extra_plugins or []:
            self.add_plugin(plugin, name=name)
        self._check_pending()
        self._collect()
        for b in self.broken:
            log.warning("%s (`miro plugins` lists it; every command that does not need it still works)", b.error)

    # -- failure isolation --------------------------------------------------------------------------
    def _mark_broken(self, ep: str, stage: str, error: str, tb: str = "") -> None:
        dist, version = self._root_dist.get(ep, (LOCAL_DISTRIBUTION, ""))
        self.broken.append(BrokenPlugin(ep, dist, version, stage, error, tb))

    def _drop(self, plugins: list[Any]) -> None:
        for p in plugins:
            if self.pm.is_registered(p):
                self.pm.unregister(p)
            self._sources.pop(id(p), None)
            self._roots.pop(id(p), None)

    def _missing_hint(self) -> str:
        hint = ""
        failed = [b for b in self.broken if b.stage != "duplicate name"]
        if failed:
            hint += " These plugins failed to load and may provide it: " + "; ".join(
                f"{b.entry_point} ({b.distribution} {b.version}, {b.stage}: "
                f"{b.error.splitlines()[0][:300]})" for b in failed) + "."
        if self.skipped:
            hint += " Not loaded because of MIRO_LOAD_PLUGINS: " + ", ".join(
                f"{ep} ({d} {v})" for ep, d, v in self.skipped) + "."
        return hint

    @staticmethod
    def _unknown_hooks(plugin: Any) -> list[str]:
        known = {n for n in dir(_hookspecs) if n.startswith("miro_")}
        return [n for n in dir(plugin) if n not in known and hasattr(getattr(plugin, n, None), "miro_impl")]

    def _unknown_hook_error(self, plugin: Any, unknown: list[str], detail: str = "") -> PluginLoadError:
        dist, version, pname = self._sources.get(id(plugin), (LOCAL_DISTRIBUTION, "", str(plugin)))
        known = [n for n in dir(_hookspecs) if n.startswith("miro_")]
        hint = "".join(did_you_mean(n, known) for n in unknown)
        return PluginLoadError(
            f"Plugin {pname!r} (distribution {dist} {version}) implements unknown hook(s) "
            f"{', '.join(unknown) or '?'}{': ' + detail if detail else ''}.{hint} Known hooks: {', '.join(known)}."
        )

    def _check_pending(self) -> None:
        """Fail loudly, naming plugin and distribution, on ``miro_*`` hook functions no hookspec knows."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise self._unknown_hook_error(exc.plugin, self._unknown_hooks(exc.plugin), str(exc)) from exc

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
                self.skipped.append((ep.name, dist, version))
                continue
            if not builtin:
                self._root_dist[ep.name] = (dist, version)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported with the original traceback
                tb = "".join(traceback.format_exception(exc))
                msg = (f"Plugin entry point {ep.name!r} ({ep.value}) from distribution {dist} {version} failed to "
                       f"import: {type(exc).__name__}: {exc}. Fix or uninstall that package, or skip it with "
                       f"MIRO_LOAD_PLUGINS (a comma-separated list of the third-party entry points to load).")
                if builtin:
                    raise PluginLoadError(f"{msg}\nOriginal traceback:\n{tb}") from exc
                self._mark_broken(ep.name, "import", msg, tb)
                continue
            added: list[Any] = []
            try:
                self.add_plugin(module, name=ep.name, distribution=dist, version=version, _added=added)
                if not builtin:
                    for p in added:
                        unknown = self._unknown_hooks(p)
                        if unknown:
                            raise self._unknown_hook_error(p, unknown)
            except PluginLoadError as exc:
                if builtin:
                    raise
                self._drop(added)
                stage = "import" if "failed to import" in str(exc) else "unknown hook"
                self._mark_broken(ep.name, stage, str(exc).split("\nOriginal traceback:\n")[0],
                                  "".join(traceback.format_exception(exc.__cause__)) if exc.__cause__ else "")
                continue
            if not builtin:
                for p in added:
                    self._roots[id(p)] = ep.name
        unknown = sorted((allowed or set()) - seen)
        if unknown:
            log.warning(
                "MIRO_LOAD_PLUGINS names %s, which no installed distribution provides (installed third-party "
                "plugins: %s; the built-ins always load)", ", ".join(unknown), ", ".join(third_party) or "none",
            )

    def add_plugin(self, plugin: Any, *, name: str | None = None, distribution: str = LOCAL_DISTRIBUTION,
                   version: str = "", _added: list[Any] | None = None) -> None:
        """Register a plugin object (module or instance) and the sub-modules it lists in ``miro_plugins``."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self.pm.register(plugin, name=name)
        self._sources[id(plugin)] = (distribution, version, name)
        if _added is not None:
            _added.append(plugin)
        for sub in getattr(plugin, "miro_plugins", ()) or ():
            try:
                module = importlib.import_module(sub) if isinstance(sub, str) else sub
            except Exception as exc:  # noqa: BLE001
                tb = "".join(traceback.format_exception(exc))
                raise PluginLoadError(
                    f"Plugin module {sub!r} listed by {name!r} (distribution {distribution} {version}) failed to "
                    f"import: {type(exc).__name__}: {exc}. Fix or uninstall that package, or skip it with "
                    f"MIRO_LOAD_PLUGINS.\nOriginal traceback:\n{tb}"
                ) from exc
            self.add_plugin(module, name=getattr(module, "__name__", str(sub)), distribution=distribution,
                            version=version, _added=_added)

    def _collect(self) -> None:
        staged: list[tuple[str, type, str, str, str, str | None]] = []
        failed: dict[str, tuple[str, str, str]] = {}  # third-party entry point -> (stage, error, traceback)
        for kind, hook_name in HOOK_KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                dist, version, pname = self._sources.get(id(impl.plugin), (LOCAL_DISTRIBUTION, "", impl.plugin_name))
                root = self._roots.get(id(impl.plugin))
                if root in failed:
                    continue
                classes: list[type] = []
                kwargs = {"register": classes.append}
                try:
                    impl.function(*[kwargs[a] for a in impl.argnames])
                except Exception as exc:  # noqa: BLE001
                    tb = "".join(traceback.format_exception(exc))
                    msg = (f"Hook {hook_name} of plugin {pname!r} (distribution {dist} {version}) raised "
                           f"{type(exc).__name__}: {exc}.")
                    if root is None:
                        raise PluginLoadError(f"{msg}\nOriginal traceback:\n{tb}") from exc
                    failed[root] = ("hook", f"{msg} Fix or uninstall that package, or skip it with MIRO_LOAD_PLUGINS.", tb)
                    continue
                for cls in classes:
                    if root is not None:
                        try:
                            self.registries[kind].validate(cls, distribution=dist, version=version, plugin=pname)
                        except PluginLoadError as exc:
                            failed[root] = ("invalid component", f"{exc} Until then the whole plugin is left out.", "")
                            break
                    staged.append((kind, cls, dist, version, pname, root))
        for root, (stage, msg, tb) in failed.items():
            self._mark_broken(root, stage, msg, tb)
        third_party: dict[tuple[str, str], str] = {}  # (kind, name) -> entry point, for conflict reports
        for kind, cls, dist, version, pname, root in staged:
            if root in failed:
                continue
            self.registries[kind].add(cls, distribution=dist, version=version, plugin=pname, conflicts="defer")
            if root is not None:
                third_party.setdefault((kind, cls.name), root)
        for kind, reg in self.registries.items():
            for name, regs in reg.conflicts().items():
                if (kind, name) not in third_party:  # only miro's own or in-process plugins: a bug, fail loudly
                    raise DuplicateComponentError(reg._duplicate_message(regs))
                roots = {self._roots.get(id(p)) for p in self.pm.get_plugins()} - {None}
                for r in sorted(roots):
                    dist, _ = self._root_dist[r]
                    if any(x.distribution == dist for x in regs):
                        self._mark_broken(r, "duplicate name", f"{reg._duplicate_message(regs)} Until then the "
                                          f"{reg._noun} {name!r} cannot be used (its other components work).")

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
