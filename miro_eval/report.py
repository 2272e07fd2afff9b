"""``report.md`` and ``metrics.json`` writers.

The report is plain Markdown: headings, paragraphs, tables with the numbers, and the plot PNGs embedded
with relative links (so the out folder can be moved or viewed on GitHub). ``metrics.json`` holds every
number of the report (non-finite floats become ``null``).
"""

from __future__ import annotations

__all__ = ["Report", "format_value", "to_jsonable", "write_json", "read_json"]

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy scalars/arrays and tuples converted, NaN/inf -> None, keys to str."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def format_value(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "n/a"
        return f"{f:.{digits}g}" if abs(f) >= 1e-3 or f == 0 else f"{f:.2e}"
    return str(v)


class Report:
    """Accumulates Markdown blocks; ``write(path)`` saves them. Images are linked relative to the report."""

    def __init__(self, title: str, root: str | Path):
        self.root = Path(root)
        self.blocks: list[str] = [f"# {title}\n"]

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"{'#' * level} {text}\n")

    def text(self, text: str) -> None:
        self.blocks.append(text.strip() + "\n")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> None:
        lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in rows:
            lines.append("| " + " | ".join(format_value(c, digits) for c in row) + " |")
        self.blocks.append("\n".join(lines) + "\n")

    def image(self, path: str | Path, alt: str = "") -> None:
        p = Path(path)
        rel = os.path.relpath(p, self.root) if p.is_absolute() else str(p)
        self.blocks.append(f"![{alt or p.stem}]({rel.replace(os.sep, '/')})\n")

    def render(self) -> str:
        return "\n".join(self.blocks)

    def write(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.root / "report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render())
        return path
