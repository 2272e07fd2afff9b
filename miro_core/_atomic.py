"""Atomic directory writes: build the content in a hidden temporary sibling, then rename it into place.

``with atomic_directory(final) as tmp: ...write files into tmp...``: on success ``final`` is replaced as a whole
(an existing ``final`` is renamed away first and removed); on any exception the temporary directory is removed and
``final`` is left as it was. A crash leaves either the old directory or the new one, plus at most a hidden
``.tmp-*`` / ``.old-*`` sibling, never a partial ``final``.
"""

from __future__ import annotations

__all__ = ["atomic_directory"]

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
