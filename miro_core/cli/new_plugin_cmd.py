"""``miro new-plugin NAME --kind KIND [--out DIR]``: render a working plugin package to start from.

The package (``miro-<name>/``: pyproject.toml with the ``[project.entry-points.miro]`` entry, README.md, the
module ``miro_<name>/`` with its ``@hookimpl`` and one component, ``tests/`` subclassing the contract tests of
:mod:`miro_core.testing`) passes its own tests as soon as it is installed (``pip install -e . && pytest``) and
``miro plugins`` lists it. Templates live in ``miro_core/templates/plugin/`` (package data).
"""

from __future__ import annotations

__all__ = ["NewPluginCommand", "KINDS", "render_plugin", "plugin_names"]

import importlib.util
import keyword
import re
from importlib import resources
from pathlib import Path

from .. import hookimpl
from .._atomic import atomic_directory
from .._errors import ConfigError
from ..interfaces import Command

#: kind -> (registry, hook, class-name suffix, contract class, words for the docs)
KINDS: dict[str, tuple[str, str, str, str, str]] = {
    "reward": ("rewards", "miro_register_rewards", "Reward", "RewardContract", "reward"),
    "binner": ("binners", "miro_register_binners", "Binner", "BinnerContract", "binner"),
    "backbone": ("backbones", "miro_register_backbones", "Backbone", "BackboneContract", "backbone"),
    "guidance": ("guidance", "miro_register_guidance", "Guidance", "GuidanceContract", "guidance strategy"),
    "evaluator": ("evaluators", "miro_register_evaluators", "Evaluator", "EvaluatorContract", "evaluator"),
    "suite": ("suites", "miro_register_suites", "Suite", "SuiteContract", "evaluation suite"),
    "data_source": ("data_sources", "miro_register_data_sources", "Source", "DataSourceContract", "data source"),
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _suggest(name: str) -> str:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    s = re.sub(r"^miro_", "", s)
    if s and not s[0].isalpha():
        s = f"my_{s}"
    return s or "my_component"


def plugin_names(name: str, kind: str) -> dict[str, str]:
    """The names a plugin called ``name`` of ``kind`` gets; raises :class:`ConfigError` naming the fix."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if not _NAME_RE.match(name or "") or name.endswith("_") or "__" in name:
        raise ConfigError(
            f"Plugin name {name!r} is not valid: use lower-case letters, digits and single underscores, starting "
            f"with a letter (it becomes the {KINDS[kind][0][:-1] if KINDS[kind][0].endswith('s') else KINDS[kind][0]} "
            f"name, the module miro_<name> and the distribution miro-<name>). Try {_suggest(name)!r}."
        )
    if name.startswith("miro_"):
        raise ConfigError(f"Plugin name {name!r} should not start with 'miro_' (the module is miro_<name> already); "
                          f"try {name[5:]!r}.")
    if keyword.iskeyword(name):
        raise ConfigError(f"Plugin name {name!r} is a Python keyword; try {name + '_plugin'!r}.")
    if len(name) > 50:
        raise ConfigError(f"Plugin name {name!r} is longer than 50 characters; choose a shorter one, e.g. {name[:30]!r}.")
    registry_kind, hook, suffix, contract, word = KINDS[kind]
    camel = "".join(part.capitalize() for part in name.split("_"))
    return {
        "name": name,
        "kind": kind,
        "kind_word": word,
        "registry": registry_kind,
        "hook": hook,
        "contract": contract,
        "module": f"miro_{name}",
        "dist": f"miro-{name.replace('_', '-')}",
        "class": camel if camel.endswith(suffix) else f"{camel}{suffix}",
    }


def _check_free(names: dict[str, str]) -> None:
    """Refuse a name an installed plugin already registers, or a module name that is already importable."""
    from .._errors import MiroError
    from .._plugins import get_plugin_host

    if importlib.util.find_spec(names["module"]) is not None:
        raise ConfigError(f"A module named {names['module']} is already importable here, so the new package "
                          "would clash with it; choose another NAME.")
    try:
        reg = get_plugin_host()[names["registry"]]
    except MiroError:  # a broken installed plugin must not stop scaffolding; the name clash shows at load time
        return
    if names["name"] in reg:
        other = reg.get(names["name"])
        raise ConfigError(f"The {names['kind_word']} name {names['name']!r} is already registered by "
                          f"{other.distribution} {other.version} ({other.cls.__module__}); two plugins with one name "
                          f"cannot load together. Choose another NAME (available names: `miro plugins --kind "
                          f"{names['registry']}`).")


def _template(kind_dir: str, file: str) -> str:
    return resources.files("miro_core").joinpath("templates", "plugin", kind_dir, file).read_text(encoding="utf-8")


def _render(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{[a-z_]+\}\}", text)
    if left:  # a template bug, not a user error
        raise RuntimeError(f"unrendered template placeholders {sorted(set(left))}")
    return text


def render_plugin(name: str, kind: str, out: str | Path | None = None) -> Path:
    """Render the package for plugin ``name`` of ``kind`` into ``out`` (default ``./miro-<name>``); returns it.

    Refuses an existing ``out``; renders into a hidden temporary sibling and renames it into place, so a failure
    leaves nothing behind.
    """
    names = plugin_names(name, kind)
    target = Path(out) if out is not None else Path.cwd() / names["dist"]
    if target.exists() or target.is_symlink():
        raise ConfigError(
            f"{target} already exists; new-plugin never overwrites. Choose another --out directory, or remove "
            f"{target} first if you want to start over."
        )
    _check_free(names)
    names = {**names, "usage": _render(_template(kind, "usage.md.tmpl").strip(), names)}
    files = {
        "pyproject.toml": _template("common", "pyproject.toml.tmpl"),
        "README.md": _template("common", "README.md.tmpl"),
        f"{names['module']}/__init__.py": _template("common", "__init__.py.tmpl"),
        f"{names['module']}/{name}.py": _template(kind, "component.py.tmpl"),
        f"tests/test_{names['module']}.py": _template(kind, "test.py.tmpl"),
    }
    try:
        with atomic_directory(target) as tmp:
            for rel, text in files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_render(text, names), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Could not write the plugin package to {target}: {exc}. Choose a writable --out "
                          "directory.") from exc
    return target


class NewPluginCommand(Command):
    name = "new-plugin"
    help = "create a plugin package (reward, binner, backbone, ...) that installs and passes its tests at once"

    def add_arguments(self, parser):
        parser.add_argument("plugin_name", metavar="NAME",
                            help="component name in lower snake case (module miro_NAME, distribution miro-NAME)")
        parser.add_argument("--kind", required=True, choices=list(KINDS), help="what the plugin provides")
        parser.add_argument("--out", metavar="DIR", help="package directory to create (default: ./miro-NAME); must not exist")

    def run(self, args):
        target = render_plugin(args.plugin_name, args.kind, args.out)
        names = plugin_names(args.plugin_name, args.kind)
        print(f"created {target} ({names['kind_word']} {names['name']!r}, distribution {names['dist']})")
        print("next:")
        print(f"  cd {target}")
        print("  pip install -e .         # registers the entry point")
        print(f"  miro plugins --kind {names['registry']}")
        print("  pytest                   # its contract tests pass as rendered")
        return 0


@hookimpl
def miro_register_commands(register):
    register(NewPluginCommand)
