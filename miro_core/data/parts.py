"""How a data source splits across ranks and DataLoader workers, and its cheap ids/captions pass.

A source is cut into *pieces*, ``(unit, lo, hi)``:

* a webdataset source: one piece per shard (``(k, 0, None)``); rank ``r`` of ``W`` takes the shards ``k % W == r``
  and its worker ``w`` of ``n`` the rank's shards ``j % n == w`` (what webdataset's ``split_by_node`` /
  ``split_by_worker`` do). A worker opens no other shard.
* an image folder, or any source with ``__len__`` and ``__getitem__`` (the world): rank ``r`` takes the
  contiguous positions ``[N r / W, N (r + 1) / W)`` (``(0, lo, hi)``) and each worker a contiguous sub-slice of
  it. Only those files / samples are read (the folder listing is read by every rank: it says where a slice
  starts).
* a JSONL manifest (also ``kind == "slices"``): the file is cut into contiguous byte ranges, the
  TextInputFormat rule: rank ``r`` takes ``[S r / W, S (r + 1) / W)`` of the ``S`` bytes and owns every line
  that *starts* in it (its reader seeks to the range, drops the tail of the line before, reads its last line to
  the end). Nobody reads the whole file, so the number of samples is not known up front: a rank's piece is
  ``(0, a, b)`` in byte offsets, and position ``k`` of that piece (its ``k``-th sample) is numbered ``a + k``
  (``k < b - a``: a line takes at least one byte). The ids pass (:meth:`SourceParts.texts`) records where each
  of its lines starts (8 bytes per sample); :meth:`SourceParts.worker_pieces` then cuts the rank's byte range
  again for the workers (worker ``w`` of ``n`` owns the lines that start in its ``n``-th of the bytes) and hands
  out the sub-pieces ``(0, a + k0, a + k1)``; :meth:`SourceParts.samples` seeks straight to line ``k0``. So each
  rank, and each worker of it, reads its own contiguous byte range and no other (docs/scoring.md). ``limit`` is
  applied by the ids pass (the first ``limit`` samples in rank order), not by :meth:`SourceParts.rank_pieces`.
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

import bisect
import itertools
import logging
import os
import tarfile
import zlib
from array import array
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
        #: a JSONL manifest: byte ranges by their start (see the module doc)
        self._spans: dict[int, _Span] | None = None
        if isinstance(source, WebDatasetSource):
            self.kind = "shards"
        elif isinstance(source, JsonlSource):
            self.kind = "slices"  # its length is not known without reading it
            self._spans = {}
        elif isinstance(source, ImageFolderSource):
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
        if self._spans is not None:  # a JSONL manifest: a byte range (``limit``: applied by the ids pass)
            size = self.source.size()
            a, b = size * rank // world_size, size * (rank + 1) // world_size
            if getattr(self, "_spans_world", world_size) != world_size:
                self._spans.clear()  # ranges of another split: they would overlap these
            self._spans_world = world_size
            if b <= a:
                return []
            if a not in self._spans or self._spans[a].b != b:
                self._spans[a] = _Span(a, b)
            return [(0, a, b)]
        n = self.length if limit is None else min(self.length, int(limit))
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        return [(0, lo, hi)] if hi > lo else []

    def worker_pieces(self, pieces: list[Piece], worker: int, num_workers: int) -> list[Piece]:
        """The share of DataLoader worker ``worker`` of ``num_workers`` of a rank's ``pieces``."""
        if self.kind != "slices":
            return pieces[worker::num_workers]
        out = []
        for unit, lo, hi in pieces:
            span = self._spans.get(lo) if self._spans is not None else None
            if span is not None and span.b == hi:  # a JSONL rank range: its lines, cut again by bytes
                starts, end = self._index(span)
                if len(starts):
                    first = int(starts[0])
                    cuts = [first + (end - first) * w // num_workers for w in (worker, worker + 1)]
                    k0, k1 = (int(np.searchsorted(starts, c, "left")) for c in cuts)
                    if worker + 1 == num_workers:
                        k1 = len(starts)
                    if k1 > k0:
                        out.append((unit, lo + k0, lo + k1))
                continue
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
        if self._spans is not None:
            yield from self._jsonl_samples(piece, keep)
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
            span = self._spans.get(lo) if self._spans is not None else None
            if span is None or span.b != hi:  # a sub-piece (positions of a range already read)
                yield from (s for _, s in self._jsonl_samples(piece, None))
                return
            starts = array("q")  # where each line of the range starts, recorded as they are read
            span.starts, span.end, span.complete = starts, span.a, False
            for off, stop, row in src.read_rows(span.a, span.b):
                starts.append(off)
                span.end = stop
                yield src._sample(row)
            span.complete = True
        else:
            get = self._getter()
            for pos in range(lo, hi):
                yield _drop_image(get(pos))

    def _getter(self):
        from .sources import ImageFolderSource

        src = self.source
        if isinstance(src, ImageFolderSource):
            files = src.files()
            return lambda pos: src._sample(files[pos])
        return src.__getitem__

    # -- a JSONL manifest ----------------------------------------------------------------------------
    def _index(self, span: _Span) -> tuple[np.ndarray, int]:
        """``(line starts, end of the last line)`` of a rank's byte range: what its ids pass recorded (all of it,
        or as far as it read), else read now (lines only, not parsed)."""
        from .sources import is_blank, iter_lines

        if span.starts is None:
            starts = array("q")
            end = span.a
            with self.source.open() as f:
                for off, stop, raw in iter_lines(f, span.a, span.b):
                    if not is_blank(raw):
                        starts.append(off)
                        end = stop
            span.starts, span.end, span.complete = starts, end, True
        return np.array(span.starts, dtype=np.int64), span.end  # a copy: the ids pass may still append

    def _span_of(self, pos: int) -> _Span | None:
        keys = sorted(self._spans)
        i = bisect.bisect_right(keys, pos) - 1
        if i < 0:
            return None
        span = self._spans[keys[i]]
        return span if pos < span.b else None

    def _jsonl_samples(self, piece: Piece, keep: np.ndarray | None) -> Iterator[tuple[int, Sample | None]]:
        """The samples of positions ``[lo, hi)`` of a rank's range (module doc): a seek to the first one wanted,
        a read to the end of the last one."""
        from .._errors import MiroError

        unit, lo, hi = piece
        src = self.source
        if hi is None or hi <= lo:
            return
        span = self._span_of(lo)
        if span is None:  # not a range this object handed out: read ``[lo, hi)`` as a byte range
            for j, (_, _, row) in enumerate(src.read_rows(lo, hi, warn_duplicates=False)):
                yield j, (None if keep is not None and j < len(keep) and not keep[j] else src._sample(row))
            return
        starts, end = self._index(span)
        k0, k1 = lo - span.a, min(hi - span.a, len(starts))
        if k1 <= k0:
            return
        first, last = k0, k1 - 1  # the positions read: from the first wanted one to the last
        if keep is not None:
            kept = np.flatnonzero(np.asarray(keep[:k1 - k0], bool))
            if not kept.size:
                yield from ((j, None) for j in range(k1 - k0))
                return
            first, last = k0 + int(kept[0]), k0 + int(kept[-1])
            yield from ((j, None) for j in range(first - k0))
        stop = int(starts[last + 1]) if last + 1 < len(starts) else end
        want = None if keep is None else (lambda i, base=first - k0: base + i < len(keep) and bool(keep[base + i]))
        k = first
        for off, _, row in src.read_rows(int(starts[first]), stop, at_line_start=True, warn_duplicates=False,
                                         keep=want):
            if k > last or off != starts[k]:
                raise MiroError(f"JSONL manifest {src.config.path}: the line at byte {off} is not where the ids "
                                "pass of this job found one; the manifest changed while it was being read. Make "
                                "it read-only during the job and rerun.")
            yield k - k0, (None if row is None else src._sample(row))
            k += 1
        if k <= last:
            raise MiroError(f"JSONL manifest {src.config.path}: it ends {last + 1 - k} lines before where the ids "
                            "pass of this job found its lines; the manifest changed while it was being read. Make "
                            "it read-only during the job and rerun.")
        yield from ((j, None) for j in range(k - k0, k1 - k0))  # after the last wanted one: not read


class _Span:
    """A rank's byte range ``[a, b)`` of a JSONL manifest and, once read, where its lines start."""

    __slots__ = ("a", "b", "starts", "end", "complete")

    def __init__(self, a: int, b: int):
        self.a, self.b = a, b
        self.starts: array | None = None
        self.end = a
        self.complete = False

    def __getstate__(self):
        return (self.a, self.b, self.starts, self.end, self.complete)

    def __setstate__(self, state):
        self.a, self.b, self.starts, self.end, self.complete = state


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


class _Unsupported(Exception):
    """A header the fast reader does not handle (pax, GNU long names, sparse): the shard is read with tarfile."""


def _ustar_members(f: Any, size: int) -> Iterator[tuple[str, bool, int, int, Any]]:
    """``(name, is_file, data offset, data size, read data)`` per member of a plain ustar / GNU tar, from the 512-byte headers
    alone (a seek over each member's data): the ids pass costs 0.20 ms per world sample this way, 0.47 ms
    with ``tarfile`` (docs/benchmarks.md)."""
    off = 0
    while True:
        f.seek(off)
        buf = f.read(512)
        if len(buf) < 512:
            if buf.strip(b"\0"):
                raise tarfile.ReadError("unexpected end of data (a header is cut short)")
            return
        if buf.count(0) == 512:
            return
        try:
            ok = int(buf[148:156].strip(b" \0") or b"-1", 8) == sum(buf[:148]) + 256 + sum(buf[156:])
        except ValueError:
            ok = False
        if not ok:
            raise tarfile.ReadError("invalid header" if off else "not a tar file (invalid first header)")
        typ = buf[156:157]
        if typ not in (b"0", b"\0", b"7", b"1", b"2", b"3", b"4", b"5", b"6"):
            raise _Unsupported(typ)
        if buf[124] & 0x80:
            raise _Unsupported("base-256 size")
        name = buf[:100].split(b"\0", 1)[0]
        if buf[257:262] == b"ustar":
            prefix = buf[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        try:
            n = int(buf[124:136].strip(b" \0") or b"0", 8)
        except ValueError:
            raise tarfile.ReadError(f"invalid header (size field {buf[124:136]!r})") from None
        yield (name.decode("utf-8", "surrogateescape"), typ in (b"0", b"\0", b"7"), off + 512, n,
               lambda at=off + 512, k=n: (f.seek(at), f.read(k))[1])
        off += 512 + (n + 511) // 512 * 512


def _tarfile_members(fileobj: Any) -> Iterator[tuple[str, bool, int, int, Any]]:
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        compressed = tar.fileobj is not fileobj
        for m in tar:
            # a compressed shard: offsets are in the decompressed stream, not checked against the file size
            yield (m.name, m.isfile(), (-1 if compressed else m.offset_data), m.size,
                   lambda m=m: (lambda f: f.read() if f is not None else b"")(tar.extractfile(m)))


def _shard_texts(src: Any, url: str) -> Iterator[Sample]:
    """The samples of a local shard, ids and captions only: member headers are read and image data is skipped
    (a seek). Samples and problems are those of ``src._iter_shard(url)``: a member whose data runs past the
    end of the file breaks the shard there, as reading it would."""
    try:
        fileobj = src._open(url)
    except (OSError, ValueError) as exc:
        from .._errors import MiroError

        raise MiroError(f"Cannot open webdataset shard {url}: {exc}. Check the --data URL and brace range "
                        "(a missing shard stops the job: restore it, or leave it out of the range).") from exc
    try:
        fileobj.seek(0, os.SEEK_END)
        size = fileobj.tell()
        fileobj.seek(0)
        head = fileobj.read(512)
        fileobj.seek(0)
        plain = len(head) == 512 and head[:2] not in (b"\x1f\x8b", b"BZ") and head[:6] != b"\xfd7zXZ\x00"
        if plain:
            try:
                samples = _read_members(src, url, fileobj, size, _ustar_members(fileobj, size))
            except _Unsupported:
                plain = False
        if not plain:
            fileobj.seek(0)
            samples = _read_members(src, url, fileobj, size, _tarfile_members(fileobj))
    finally:
        fileobj.close()
    yield from samples


def _read_members(src: Any, url: str, fileobj: Any, size: int, members) -> list[Sample]:
    from .sources import _KEY_RE, _WDS_IMAGE_KEYS

    out: list[Sample] = []
    key, parts = None, {}
    try:
        for name, is_file, data_off, n, read in members:
            if not is_file:
                continue
            cut = data_off >= 0 and data_off + n > size
            m = _KEY_RE.match(name)
            if m is None or os.path.basename(name).startswith((".", "_")):
                if cut:  # skipping it would break
                    raise tarfile.ReadError(f"unexpected end of data (member {name} is cut short)")
                continue
            k, ext = m.group(1), m.group(2).lower()
            if k != key:
                if key is not None:
                    sample = src._make(key, parts, url)
                    if sample is not None:
                        out.append(_drop_image(sample))
                key, parts = k, {}
            if cut:  # where reading it would break
                raise tarfile.ReadError(f"unexpected end of data (member {name} is cut short)")
            if ext in _WDS_IMAGE_KEYS:
                parts[ext] = b""  # present; its bytes are not needed here
            else:
                parts[ext] = read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        why = (f"unreadable shard: it broke after {len(out)} samples ({type(exc).__name__}: {exc}); the rest "
               "of it was skipped")
        log.error("webdataset shard %s: %s", url, why)
        if (url, why) not in src.problems:
            src.problems.append((url, why))
        return out
    if key is not None:
        sample = src._make(key, parts, url)
        if sample is not None:
            out.append(_drop_image(sample))
    return out
