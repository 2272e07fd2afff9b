"""Configuration: frozen attrs classes and one cattrs converter.

The converter forbids unknown keys and reports every problem with its field path
(``config.train.lr: invalid value for type, expected float``). Every component nests its own
``Config`` class; runs are described by TOML files whose tables mirror those classes, and CLI
flags override single fields with dotted paths (``train.lr=3e-4``).
"""

from __future__ import annotations

__all__ = [
    "config",
    "converter",
    "structure",
    "unstructure",
    "load_toml",
    "dump_json",
    "apply_overrides",
    "EmptyConfig",
]

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ._errors import ConfigError

T = TypeVar("T")


def config(cls: type[T]) -> type[T]:
    """Decorate a configuration class: frozen, keyword-only attrs class."""
    return attrs.frozen(kw_only=True)(cls)


@config
class EmptyConfig:
    """Config of a component that takes no options."""


converter = cattrs.Converter(forbid_extra_keys=True)


def _strict_scalar(value: Any, cls: type) -> Any:
    """Structure hook for int/float/bool/str: no silent coercion (1.5 -> 1, "false" -> True, 5 -> "5")."""
    import numbers
    import os

    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[cls]
    ok = False
    if cls is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False
    elif cls is int:
        ok = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    elif cls is float:
        ok = isinstance(value, numbers.Real)
    elif cls is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        ok = isinstance(value, str)
    if not ok:
        raise TypeError(f"expected {kind}, got {type(value).__name__} {value!r}")
    return cls(value)


for _scalar in (int, float, bool, str):
    converter.register_structure_hook(_scalar, _strict_scalar)


def _messages(exc: BaseException, path: str) -> list[str]:
    """Flatten a cattrs error tree into ``path: message`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = ", ".join(f.name for f in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        keys = ", ".join(sorted(exc.extra_fields))
        return [f"{path}: unknown key(s) {keys}; known keys: {known or '(none)'}"]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out: list[str] = []
        notes_by_exc = exc.group_exceptions() if hasattr(exc, "group_exceptions") else None
        if notes_by_exc is not None:
            with_notes, without = notes_by_exc
            for sub, note in with_notes:
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                sub_path = f"{path}.{name}" if name is not None else f"{path}[{index!r}]"
                out.extend(_messages(sub, sub_path))
            for sub in without:
                out.extend(_messages(sub, path))
            return out
    if isinstance(exc, KeyError):
        key = str(exc.args[0]) if exc.args else "?"
        field_path = path if path.endswith(f".{key}") else f"{path}.{key}"
        return [f"{field_path}: required field missing"]
    return [f"{path}: {type(exc).__name__}: {exc}"]


def structure(data: Any, cls: type[T], path: str = "config") -> T:
    """Build ``cls`` from plain data; raise :class:`ConfigError` naming each bad field path."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        lines = _messages(exc, path)
        raise ConfigError(
            f"Invalid {cls.__qualname__} configuration: " + "; ".join(lines) + "."
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid {cls.__qualname__} configuration at {path}: {exc}.") from exc


def unstructure(obj: Any) -> Any:
    """Plain (JSON/TOML-friendly) data for a config object."""
    return converter.unstructure(obj)


def dump_json(obj: Any) -> str:
    return json.dumps(unstructure(obj), indent=2, sort_keys=True)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict, with a clear error on syntax problems."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Config file {p} does not exist; pass an existing TOML file to --config.")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {p} is not valid TOML: {exc}. Fix the syntax and retry.") from exc


def _parse_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-path overrides applied.

    ``overrides`` is either ``["train.lr=3e-4", "model.backbone=dit"]`` (values parsed as TOML scalars,
    falling back to strings) or a mapping of dotted path to value.
    """
    out = json.loads(json.dumps(data))
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"Override {item!r} is not of the form key.path=value (e.g. train.lr=3e-4).")
            key, value = item.split("=", 1)
            parsed.append((key.strip(), _parse_scalar(value.strip())))
        items = parsed
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {key!r}: {part!r} is not a table.")
        node[parts[-1]] = value
    return out
