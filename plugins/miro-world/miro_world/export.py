"""``miro world export``: the built-in world written as webdataset tar shards (no downloads, any size).

``export_world(out, num_samples, seed=0, image_size=32)`` writes ``num_samples`` samples of the world
``WorldSource(num_samples, seed, image_size)`` into the shards named by ``out``, a brace range such as
``DIR/{00000..00099}.tar`` (local path or any fsspec URL): shard ``k`` holds samples ``[k * m, (k + 1) * m)`` with
``m = ceil(num_samples / shards)``, each as ``<id>.png`` (lossless 8-bit RGB), ``<id>.txt`` (caption),
``<id>.short.txt`` (short caption) and ``<id>.json`` (ground truth: scene, degradations, caption corruption).
Reading the shards back with the ``webdataset`` data source gives the same ids, captions and pixels as the
``world`` source. Each shard is written to a temporary name and renamed when complete, so an interrupted export
resumes where it stopped (existing shards are kept).
"""

from __future__ import annotations

__all__ = ["export_world"]

import io
import json
import logging
import math
import tarfile
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from miro_core import ConfigError

log = logging.getLogger(__name__)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def export_world(out: str, num_samples: int, *, seed: int = 0, image_size: int = 32,
                 options: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the shards; returns ``{"shards": n, "written": k, "skipped": n - k, "samples": num_samples}``."""
    import fsspec

    from miro_core.data.sources import expand_urls

    from .source import WorldSource, make_sample

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1 (got {num_samples}).")
    urls = expand_urls(out)
    if len(urls) > num_samples:
        raise ConfigError(f"{len(urls)} shards for {num_samples} samples would leave shards empty; use a shorter "
                          "brace range or more samples.")
    cfg = WorldSource.Config(num_samples=num_samples, seed=seed, image_size=image_size, **dict(options or {}))
    per = math.ceil(num_samples / len(urls))
    written = 0
    for k, url in enumerate(urls):
        lo, hi = k * per, min(num_samples, (k + 1) * per)
        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(path):
            if progress:
                progress(hi - lo)
            continue
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
                for i in range(lo, hi):
                    s = make_sample(seed, i, cfg)
                    _member(tar, f"{s.id}.png", _png(s.image))
                    _member(tar, f"{s.id}.txt", s.caption.encode("utf-8"))
                    _member(tar, f"{s.id}.short.txt", (s.short_caption or "").encode("utf-8"))
                    _member(tar, f"{s.id}.json", json.dumps(s.meta, sort_keys=True).encode("utf-8"))
            fs.mv(tmp, path)
        except BaseException:
            if fs.exists(tmp):
                fs.rm(tmp)
            raise
        written += 1
        if progress:
            progress(hi - lo)
    log.info("world export: %d shards (%d written, %d kept), %d samples", len(urls), written, len(urls) - written,
             num_samples)
    return {"shards": len(urls), "written": written, "skipped": len(urls) - written, "samples": num_samples}
