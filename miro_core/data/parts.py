"""How a data source splits across ranks and DataLoader workers, and its cheap ids/captions pass.

A source is cut into *pieces*, ``(unit, lo, hi)``:

* a webdataset source: one piece per shard (``(k, 0, None)``); rank ``r`` of ``W`` takes the shards ``k % W == r``
  and its worker ``w`` of ``n`` the rank's shards ``j % n == w`` (what webdataset's ``split_by_node`` /
  ``split_by_worker`` do). A worker opens no other shard.
* an image folder, a JSONL manifest, or any source with ``__len__`` and ``__getitem__`` (the world): rank ``r``
  takes the contiguous positions ``[N r / W, N (r + 1) / W)`` (``(0, lo, hi)``) and each worker a contiguous
  sub-slice of it. Only those files / lines / samples are read (the folder listing and the manifest's text are
  read by every rank: they are what says where a slice starts).
* any other source: one piece (the whole source), read by rank 0's first worker.

Concatenating the pieces in unit order (shards ``0..n-1``; slices in rank order) gives the source's own order,
so the rows of a store are the same whatever the number of ranks.

:meth:`SourceParts.texts` yields the samples of a piece with ids and captions only (``image`` is None): no image
is decoded, and a local webdataset shard is read member header by member header, seeking over the image bytes
(only the ``txt`` / ``short.txt`` / ``json`` members are read). It sees the same samples as
:meth:`SourceParts.samples`, including where a truncated shard breaks.
"""

from __future__ import annotations

__all__ = ["SourceParts", "source_parts", "Piece"]

import itertools
import logging
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..interfaces import Sample

log = logging.getLogger(__name__)

#: ``(unit, lo, hi)``: a whole shard ``(k, 0, None)`` or the positions ``[lo, hi)`` of a contiguous source
Piece = tuple[int, int, "int | None"]


class SourceParts:
    """The pieces of ``source`` (module doc). ``kind``: ``"shards"``, ``"slices"`` or ``"whole"``."""

    def __init__(self, source: Any):
        from .sources import ImageFolderSource, JsonlSource, WebDatasetSource

        self.source = source
        self.length: int | None = None
        if isinstance(source, WebDatasetSource):
            self.kind = "shards"
        elif isinstance(source, (ImageFolderSource, JsonlSource)):
            self.kind = "slices"
            self.length = len(source)
        elif hasattr(source, "__getitem__") and _has_len(source):
            self.kind = "slices"
            self.length = len(source)
        else:
            self.kind = "whole"

    # -- assignment ----------------------------------------------------------------------------------
    @property
    def units(self) -> int:
        return len(self.source.urls) if self.kind == "shards" else 1

    def rank_pieces(self, rank: int, world_size: int, limit: int | None = None) -> list[Piece]:
        """The pieces rank ``rank`` of ``world_size`` reads (for slices: the first ``limit`` positions only)."""
        if self.kind == "shards":
            return [(k, 0, None) for k in range(rank, self.units, world_size)]
        if self.kind == "whole":
            return [(0, 0, limit)] if rank == 0 else []
        n = self.length if limit is None else min(self.length, int(limit))
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        return [(0, lo, hi)] if hi > lo else []

    def worker_pieces(self, pieces: list[Piece], worker: int, num_workers: int) -> list[Piece]:
        """The share of DataLoader worker ``worker`` of ``num_workers`` of a rank's ``pieces``."""
        if self.kind != "slices":
            return pieces[worker::num_workers]
        out = []
        for unit, lo, hi in pieces:
            n = hi - lo
            a, b = lo + n * worker // num_workers, lo + n * (worker + 1) // num_workers
            if b > a:
                out.append((unit, a, b))
        return out

    # -- reading -------------------------------------------------------------------------------------
    def samples(self, piece: Piece, keep: np.ndarray | None = None) -> Iterator[tuple[int, Sample | None]]:
        """``(position within the piece, sample)``; with ``keep`` (bool per position, slices only) the positions
        not kept are not read (``None`` is yielded for them)."""
        unit, lo, hi = piece
        src = self.source
        if self.kind == "shards":
            yield from enumerate(src._iter_shard(src.urls[unit]))
            return
        if self.kind == "whole":
            it = iter(src)
            yield from enumerate(it if hi is None else itertools.islice(it, hi))
            return
        get = self._getter()
        for j, pos in enumerate(range(lo, hi)):
            if keep is not None and not keep[j]:
                yield j, None
            else:
                yield j, get(pos)

    def texts(self, piece: Piece) -> Iterator[Sample]:
        """The samples of ``piece`` with ids and captions only (``image`` None; module doc)."""
        from .sources import ImageFolderSource, JsonlSource

        unit, lo, hi = piece
        src = self.source
        if self.kind == "shards":
            url = src.urls[unit]
            yield from (_shard_texts(src, url) if not _is_url(url) else
                        (_drop_image(s) for s in src._iter_shard(url)))
        elif self.kind == "whole":
            it = iter(src)
            yield from (_drop_image(s) for s in (it if hi is None else itertools.islice(it, hi)))
        elif isinstance(src, ImageFolderSource):
            files = src.files()
            for pos in range(lo, hi):
                yield src._sample(files[pos])  # a path, not pixels: nothing is decoded
        elif isinstance(src, JsonlSource):
            rows = src.rows()
            for pos in range(lo, hi):
                yield src._sample(rows[pos])
        else:
            get = self._getter()
            for pos in range(lo, hi):
                yield _drop_image(get(pos))

    def _getter(self):
        from .sources import ImageFolderSource, JsonlSource

        src = self.source
        if isinstance(src, ImageFolderSource):
            files = src.files()
            return lambda pos: src._sample(files[pos])
        if isinstance(src, JsonlSource):
            rows = src.rows()
            return lambda pos: src._sample(rows[pos])
        return src.__getitem__


def source_parts(source: Any) -> SourceParts:
    return SourceParts(source)


def _has_len(source: Any) -> bool:
    try:
        len(source)
        return True
    except TypeError:
        return False


def _is_url(path: str) -> bool:
    return "://" in path


def _drop_image(s: Sample) -> Sample:
    return Sample(id=s.id, caption=s.caption, image=None, short_caption=s.short_caption, meta=s.meta)


def _shard_texts(src: Any, url: str) -> Iterator[Sample]:
    """The samples of a local shard, ids and captions only: member headers are read and image data is skipped
    (a seek). Samples and problems are those of ``src._iter_shard(url)``: a member whose data runs past the
    end of the file breaks the shard there, as reading it would."""
    from .sources import _KEY_RE, _WDS_IMAGE_KEYS

    try:
        fileobj = src._open(url)
    except (OSError, ValueError) as exc:
        from .._errors import MiroError

        raise MiroError(f"Cannot open webdataset shard {url}: {exc}. Check the --data URL and brace range "
                        "(a missing shard stops the job: restore it, or leave it out of the range).") from exc
    fileobj.seek(0, os.SEEK_END)
    size = fileobj.tell()
    fileobj.seek(0)
    n_samples = 0
    key, parts = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            compressed = tar.fileobj is not fileobj  # a .tar.gz: offsets are in the decompressed stream
            for member in tar:
                if not member.isfile():
                    continue
                m = _KEY_RE.match(member.name)
                if m is None or os.path.basename(member.name).startswith((".", "_")):
                    if not compressed and member.offset_data + member.size > size:  # skipping it would break
                        raise tarfile.ReadError(f"unexpected end of data (member {member.name} is cut short)")
                    continue
                k, ext = m.group(1), m.group(2).lower()
                if k != key:
                    if key is not None:
                        sample = src._make(key, parts, url)
                        if sample is not None:
                            n_samples += 1
                            yield _drop_image(sample)
                    key, parts = k, {}
                if not compressed and member.offset_data + member.size > size:  # where reading it would break
                    raise tarfile.ReadError(f"unexpected end of data (member {member.name} is cut short)")
                if ext in _WDS_IMAGE_KEYS:
                    parts[ext] = b""  # present; its bytes are not needed here
                else:
                    f = tar.extractfile(member)
                    parts[ext] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        why = (f"unreadable shard: it broke after {n_samples} samples ({type(exc).__name__}: {exc}); the rest "
               "of it was skipped")
        log.error("webdataset shard %s: %s", url, why)
        if (url, why) not in src.problems:
            src.problems.append((url, why))
        return
    finally:
        fileobj.close()
    if key is not None:
        sample = src._make(key, parts, url)
        if sample is not None:
            yield _drop_image(sample)
