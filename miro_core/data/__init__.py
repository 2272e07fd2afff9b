"""Data: image decoding and the data-source spec parser used by the CLI.

``to_tensor(image)`` decodes anything a sample may carry; ``resolve_data(spec)`` turns a ``--data`` string
into a :class:`~miro_core.DataSource`. The built-in sources live in :mod:`miro_core.data.sources`.
"""

from __future__ import annotations

__all__ = ["to_tensor", "ImageDecodeError", "resolve_data", "parse_options"]

import os
from typing import Any

from .._errors import MiroError
from ._decode import ImageDecodeError, to_tensor

_FORMS = (
    "a registered data source name, optionally with options ('world' or 'world:n=2000,seed=1'); "
    "a directory of images with .txt captions (image_folder); "
    "webdataset shards ('data/shard-000.tar' or 'data/shard-{000..099}.tar', any fsspec URL); "
    "a JSONL manifest ('data/manifest.jsonl')"
)


def parse_options(text: str) -> dict[str, Any]:
    """``"n=2000,seed=1"`` -> ``{"n": 2000, "seed": 1}`` (values parsed as TOML scalars, else strings)."""
    from .._config import _parse_scalar

    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise MiroError(f"Data source option {item!r} is not of the form key=value (e.g. 'world:n=2000').")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_scalar(v.strip())
    return out


def resolve_data(spec: str):
    """Build a data source from a CLI ``--data`` spec (see :data:`_FORMS`)."""
    from .._errors import did_you_mean
    from .._plugins import registry

    reg = registry("data_sources")
    if not isinstance(spec, str) or not spec.strip():
        raise MiroError(f"Empty --data spec. Pass one of: {_FORMS}. Registered data sources: {', '.join(reg.names())}.")
    spec = spec.strip()
    is_url = "://" in spec
    if not is_url:
        name, _, opts = spec.partition(":")
        if name in reg:
            return reg.create(name, parse_options(opts))
    lower = spec.lower()
    if lower.endswith(".jsonl"):
        return reg.create("jsonl", {"path": spec})
    if lower.endswith(".tar") or ("{" in spec and ".tar" in lower):
        return reg.create("webdataset", {"url": spec})
    if not is_url and os.path.isdir(spec):
        return reg.create("image_folder", {"root": spec})
    hint = did_you_mean(spec.partition(":")[0], reg.names()) if not is_url else ""
    exists = "" if is_url or os.path.exists(spec) else " (no such file or directory)"
    raise MiroError(
        f"Cannot interpret --data {spec!r}{exists}.{hint} Pass one of: {_FORMS}. "
        f"Registered data sources: {', '.join(reg.names()) or '(none)'}."
    )
