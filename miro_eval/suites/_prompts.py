"""Prompt files from a local path or any fsspec URL: text (one prompt a line), JSONL (``prompt`` + metadata) and
PartiPrompts-style TSV (a header with a ``Prompt`` column; parsed with ``csv.QUOTE_NONE``, fields stripped)."""

from __future__ import annotations

__all__ = ["open_text", "read_prompt_file", "read_tsv_prompts"]

import csv
import io
import json
from typing import Any

from miro_core import ConfigError


def open_text(url: str) -> str:
    """The text of a local file or an fsspec URL (``https://...`` needs ``aiohttp``; ``s3://`` needs ``s3fs``)."""
    import fsspec

    try:
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"Prompt file {url} does not exist; give a local path or an fsspec URL.") from None
    except ImportError as exc:
        raise ConfigError(f"Reading {url} needs an fsspec backend that is not installed ({exc}); install it "
                          "(`pip install aiohttp` for http(s), `s3fs` for s3) or download the file and give its path.") from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read prompt file {url}: {exc}. Check the URL and the network, or give a local "
                          "copy of the file.") from exc


def read_tsv_prompts(text: str, source: str = "<tsv>") -> list[dict[str, Any]]:
    """Rows of a TSV with a header; the ``Prompt`` column becomes ``prompt``, other columns lower-cased keys.

    ``csv.QUOTE_NONE``: a prompt that starts with a quote (``"Fly an airplane"`` ...) is text, not a quoted field
    that would swallow the tabs and lines after it. Every field is stripped of surrounding whitespace."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ConfigError(f"{source} is empty; expected a TSV with a header row (Prompt, Category, ...).") from None
    lower = [h.lower() for h in header]
    if "prompt" not in lower:
        raise ConfigError(f"{source} has no 'Prompt' column in its header {header}.")
    out = []
    for lineno, row in enumerate(reader, 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ConfigError(f"{source}:{lineno} has {len(row)} fields for a header of {len(header)}: a tab inside a "
                              "prompt? Fix that line.")
        rec = {key: (row[i].strip() if i < len(row) else "") for i, key in enumerate(lower)}
        if not rec["prompt"]:
            raise ConfigError(f"{source}:{lineno} has an empty prompt.")
        out.append(rec)
    return out


def read_prompt_file(url: str) -> list[dict[str, Any]]:
    """Prompt records of ``url`` by its extension: ``.jsonl`` (objects with ``prompt``), ``.tsv``, else text."""
    text = open_text(url)
    name = url.lower().rsplit("?", 1)[0]
    if name.endswith(".jsonl"):
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{url}:{lineno} is not JSON ({exc}).") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise ConfigError(f"{url}:{lineno} must be an object with a string 'prompt'.")
            out.append(rec)
        return out
    if name.endswith(".tsv"):
        return read_tsv_prompts(text, url)
    return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
