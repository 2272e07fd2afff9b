"""Built-in data sources: ``image_folder``, ``webdataset`` and ``jsonl``.

Each yields :class:`~miro_core.Sample` objects in a deterministic order. Images travel undecoded (a path or the
encoded bytes); :func:`miro_core.data.to_tensor` decodes them in the scoring workers.

Hostile data does not stop a job: a caption that is not UTF-8 is decoded with replacement characters and marked
``meta["caption_error"]`` (text rewards record a failure for it), a repeated id is yielded again and the
scoring pipeline keeps the first one (recording the others as rejected), a webdataset shard that is truncated
or not a tar file is reported in ``source.problems`` (``[(shard, reason)]``, also recorded as rejected) and the
next shard is read.
"""

from __future__ import annotations

__all__ = ["ImageFolderSource", "WebDatasetSource", "JsonlSource", "IMAGE_EXTENSIONS", "expand_urls", "iter_lines"]

import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

from .. import hookimpl
from .._config import config
from .._errors import MiroError
from ..interfaces import DataSource, Sample

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _is_url(path: str) -> bool:
    return "://" in path


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """Caption bytes -> ``(text, problem)``: UTF-8 (a BOM dropped); otherwise replacement characters and why."""
    try:
        return data.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as exc:
        return (data.decode("utf-8", "replace").strip(),
                f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); decoded with replacement characters")


def _read_text_file(path: str) -> tuple[str | None, str | None]:
    try:
        with open(path, "rb") as f:
            return decode_caption(f.read())
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return "", f"cannot read caption file: {exc}"


# ---------------------------------------------------------------------------------------------------
class ImageFolderSource(DataSource):
    """Images in a folder tree with ``<stem>.txt`` captions (optional ``<stem>.short.txt``); id = relative path.

    Recursive, sorted by relative path; the id is the relative path without extension."""

    name = "image_folder"

    @config
    class Config:
        root: str
        #: comma-separated image file extensions (case-insensitive)
        extensions: str = ",".join(IMAGE_EXTENSIONS)

    def __init__(self, config):
        super().__init__(config)
        self.root = os.path.abspath(os.path.expanduser(config.root))
        if not os.path.isdir(self.root):
            raise MiroError(f"image_folder root {config.root!r} is not a directory; pass an existing folder of images.")
        self._exts = {"." + e.strip().lower().lstrip(".") for e in config.extensions.split(",") if e.strip()}
        self._files: list[str] | None = None
        self._texts: set[str] = set()

    def files(self) -> list[str]:
        if self._files is None:
            found, texts = [], set()
            exts = tuple(self._exts)
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, self.root)
                prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
                for fn in filenames:
                    low = fn.lower()
                    if low.endswith(exts) and os.path.splitext(fn)[1].lower() in self._exts:
                        found.append(prefix + fn)
                    if low.endswith(".txt"):
                        texts.add(prefix + fn)
            self._files = sorted(found)
            self._texts = texts
            ids = [os.path.splitext(p)[0] for p in self._files]
            if len(set(ids)) != len(ids):
                dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
                log.warning(
                    "image_folder %s: several images share the id(s) %s (same name, different extension); the "
                    "first of each is scored, the others are recorded as rejected. Rename them so every id is "
                    "unique.", self.root, dup,
                )
        return self._files

    def __len__(self) -> int:
        return len(self.files())

    def _sample(self, rel: str) -> Sample:
        stem = os.path.splitext(rel)[0]
        texts = self._texts  # caption files seen by the listing: no failing open() per missing short caption
        caption, problem = (_read_text_file(os.path.join(self.root, stem + ".txt")) if stem + ".txt" in texts
                            else (None, None))
        short = (_read_text_file(os.path.join(self.root, stem + ".short.txt"))[0] if stem + ".short.txt" in texts
                 else None)
        meta: dict = {} if caption is not None else {"missing_caption": True}
        if problem:
            meta["caption_error"] = problem
        return Sample(
            id=stem,
            caption=caption if caption is not None else "",
            image=os.path.join(self.root, rel),
            short_caption=short,
            meta=meta,
        )

    def __iter__(self) -> Iterator[Sample]:
        for rel in self.files():
            yield self._sample(rel)

    def iter_samples(self, rank: int = 0, world_size: int = 1) -> Iterator[Sample]:
        for rel in self.files()[rank::world_size]:
            yield self._sample(rel)


# ---------------------------------------------------------------------------------------------------
def expand_urls(url: str) -> list[str]:
    """Expand brace ranges/lists (``shards/{000..099}.tar``, ``{a,b}.tar``); ``::`` separates several patterns."""
    import braceexpand

    out: list[str] = []
    for part in url.split("::"):
        part = part.strip()
        if part:
            out.extend(braceexpand.braceexpand(part))
    return out


_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


class WebDatasetSource(DataSource):
    """WebDataset tar shards on any fsspec URL, brace ranges allowed; id = ``__key__``.

    Members are grouped by ``__key__``; image from ``jpg``/``jpeg``/``png``/``webp``, caption from ``txt`` (or ``json["caption"]``), short caption
    from ``short.txt`` (or ``json["short_caption"]``). id = ``__key__``."""

    name = "webdataset"

    @config
    class Config:
        url: str

    def __init__(self, config):
        super().__init__(config)
        self.urls = expand_urls(config.url)
        if not self.urls:
            raise MiroError(f"webdataset url {config.url!r} expands to no shard; pass e.g. 'shards/{{000..009}}.tar'.")
        #: ``[(shard, reason)]`` of shards that could not be read to the end (filled while iterating)
        self.problems: list[tuple[str, str]] = []

    def _open(self, url: str):
        if _is_url(url):
            import fsspec

            return fsspec.open(url, "rb").open()
        return open(url, "rb")

    def _iter_shard(self, url: str) -> Iterator[Sample]:
        try:
            fileobj = self._open(url)
        except (OSError, ValueError) as exc:
            raise MiroError(f"Cannot open webdataset shard {url}: {exc}. Check the --data URL and brace range.") from exc
        n_samples = 0
        key, parts = None, {}
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    m = _KEY_RE.match(member.name)
                    if m is None or os.path.basename(member.name).startswith((".", "_")):
                        continue
                    k, ext = m.group(1), m.group(2).lower()
                    if k != key:
                        if key is not None:
                            sample = self._make(key, parts, url)
                            if sample is not None:
                                n_samples += 1
                                yield sample
                        key, parts = k, {}
                    f = tar.extractfile(member)
                    parts[ext] = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            # a truncated or corrupt shard: keep what was read, report it, go on with the next shard
            # (the sample being read when the shard broke is dropped: its members may be incomplete)
            why = (f"unreadable shard: it broke after {n_samples} samples ({type(exc).__name__}: {exc}); the rest "
                   "of it was skipped")
            log.error("webdataset shard %s: %s", url, why)
            if (url, why) not in self.problems:
                self.problems.append((url, why))
            return
        finally:
            fileobj.close()
        if key is not None:
            sample = self._make(key, parts, url)
            if sample is not None:
                yield sample

    @staticmethod
    def _make(key: str, parts: dict[str, bytes], url: str) -> Sample | None:
        image = next((parts[k] for k in _WDS_IMAGE_KEYS if k in parts), None)
        meta: dict = {"shard": url}
        if "json" in parts:
            try:
                meta.update(json.loads(parts["json"].decode("utf-8")))
            except (ValueError, UnicodeDecodeError):
                log.warning("sample %s in %s: json member is not valid JSON; ignored", key, url)
        problem = None
        if "txt" in parts:
            caption, problem = decode_caption(parts["txt"])
        else:
            caption = meta.get("caption")
        short = decode_caption(parts["short.txt"])[0] if "short.txt" in parts else meta.get("short_caption")
        if image is None and caption is None:
            return None  # not a sample (e.g. a stray file)
        if problem:
            meta["caption_error"] = problem
        if image is None:
            meta["missing_image"] = True  # the scoring pipeline records "Sample has no image"
        return Sample(id=key, caption="" if caption is None else str(caption), image=image,
                      short_caption=None if short is None else str(short), meta=meta)

    def __iter__(self) -> Iterator[Sample]:
        for url in self.urls:
            yield from self._iter_shard(url)


# ---------------------------------------------------------------------------------------------------
#: bytes read at a time by the JSONL range reader (a range's last line may run past its end: read on)
_JSONL_CHUNK = 1 << 16


def _open_bin(path: str):
    """``path`` (a local path or any fsspec URL) opened for binary reading, seekable (a test counts its reads)."""
    import fsspec

    return fsspec.open(path, "rb").open()


def _file_size(path: str) -> int:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return int(fs.size(p))


def _count_lines(f, end: int) -> int:
    """The number of lines (universal newlines, as ``bytes.splitlines``) in the first ``end`` bytes of ``f``,
    where ``end`` is a line start. Reads those bytes: only an error or a warning needs a line number."""
    f.seek(0)
    n, pos, prev_cr = 0, 0, False
    while pos < end:
        chunk = f.read(min(_JSONL_CHUNK * 16, end - pos))
        if not chunk:
            break
        n += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
        if prev_cr and chunk[:1] == b"\n":
            n -= 1  # a CRLF cut by the chunk edge was counted twice
        prev_cr = chunk[-1:] == b"\r"
        pos += len(chunk)
    return n


def iter_lines(f, start: int, end: int | None, *, at_line_start: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, end offset, line without its terminator)`` for every line of ``f`` that STARTS in
    ``[start, end)`` (``end`` None: to the end of the file), the TextInputFormat rule: unless ``start`` is 0 (or
    ``at_line_start``), the reader starts one byte early and drops everything up to the first line start
    ``>= start`` (that line belongs to the range before); the last line is read to its end even past ``end``.
    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (``bytes.splitlines``); a last line without a terminator counts.
    Reads ``[start - 1, end of the last line)`` and past that, at most max(256, the last line's length) bytes (the
    reads after ``end`` start at 256 bytes and double)."""
    pos = start
    skip = False
    if start > 0 and not at_line_start:
        pos, skip = start - 1, True
    f.seek(pos)
    buf = b""  # unread bytes, starting at ``pos``
    eof = False
    tail = 256
    while True:
        if end is not None and pos >= end and not skip:
            return
        # read what the range needs, then (finishing its last line) small chunks; a long line is gathered
        # chunk by chunk before it is split (no quadratic re-splitting)
        parts, have = [buf], len(buf)
        while True:
            rest = _JSONL_CHUNK if end is None else end - pos - have
            if rest > 0:
                want = min(_JSONL_CHUNK, rest)
            else:  # finishing the last line: small reads, doubling (a long line costs few reads)
                want, tail = tail, min(2 * tail, _JSONL_CHUNK)
            chunk = f.read(want)
            if not chunk:
                eof = True
                break
            parts.append(chunk)
            have += len(chunk)
            if b"\n" in chunk or b"\r" in chunk[:-1]:
                break
        buf = b"".join(parts)
        if not buf:
            return
        lines = buf.splitlines(keepends=True)
        # the last piece may be incomplete (no terminator yet, or a \r whose \n is in the next chunk)
        last = lines[-1]
        keep_last = not eof and (last.endswith(b"\r") or not last.endswith(b"\n"))
        for piece in (lines[:-1] if keep_last else lines):
            if skip:
                skip = False  # the tail of a line that started before ``start``
            elif end is not None and pos >= end:
                return
            else:
                yield pos, pos + len(piece), piece.rstrip(b"\r\n")
            pos += len(piece)
        buf = last if keep_last else b""
        if eof and not buf:
            return


def is_blank(raw: bytes) -> bool:
    """Whether a manifest line holds nothing (it is skipped, and is no sample)."""
    return not decode_caption(raw)[0].strip()


class _LineNumbers:
    """Line numbers of a range read (1-based, empty lines counted, as an editor shows them); the lines before the
    range are counted only when a number is asked for (an error, a warning), by reading them once."""

    def __init__(self, path: str):
        self.path = path
        self.base_at: int | None = None  # offset of the first line read
        self.base: int | None = None  # lines before it
        self.seen = 0  # lines read since (empty ones included)

    def number(self) -> int:
        """The number of the line read last."""
        if self.base is None:
            if self.base_at == 0:
                self.base = 0
            else:
                with _open_bin(self.path) as f:
                    self.base = _count_lines(f, self.base_at or 0)
        return self.base + self.seen


class JsonlSource(DataSource):
    """A JSONL manifest: one object per line with id, image, caption (and optional short_caption).

    ``image`` is a path relative to the manifest, an absolute path, or an fsspec URL. The manifest is read line by
    line through fsspec; :meth:`read_range` reads only the lines that start in a byte range (how scoring splits a
    manifest across ranks and workers without any of them reading the whole file)."""

    name = "jsonl"

    @config
    class Config:
        path: str

    def __init__(self, config):
        super().__init__(config)
        self._rows: list[dict] | None = None
        self._size: int | None = None
        self._len: int | None = None

    def _base(self) -> str:
        p = self.config.path
        return p.rsplit("/", 1)[0] if _is_url(p) else os.path.dirname(os.path.abspath(p))

    def _fail_open(self, exc: Exception) -> MiroError:
        return MiroError(f"Cannot read JSONL manifest {self.config.path}: {exc}. Pass an existing .jsonl file.")

    def size(self) -> int:
        """The manifest's size in bytes (a metadata call, nothing is read)."""
        if self._size is None:
            try:
                self._size = _file_size(self.config.path)
            except (OSError, ValueError) as exc:
                raise self._fail_open(exc) from exc
        return self._size

    def open(self):
        try:
            return _open_bin(self.config.path)
        except (OSError, ValueError) as exc:
            raise self._fail_open(exc) from exc

    def _parse(self, raw: bytes, numbers: _LineNumbers) -> dict | None:
        """One line -> its row (None for an empty line); a bad line raises with its line number."""
        path = self.config.path
        line, problem = decode_caption(raw)  # a stray non-UTF-8 byte spoils one line, not the manifest
        if not line.strip():
            return None
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise MiroError(f"{path}:{numbers.number()}: not valid JSON ({exc}). Each line must be one JSON "
                            "object.") from exc
        if not isinstance(row, dict) or not all(k in row for k in ("id", "image", "caption")):
            raise MiroError(f"{path}:{numbers.number()}: each line needs the keys 'id', 'image' and 'caption' "
                            f"(got {line[:120]!r}).")
        if problem:
            row = {**row, "caption_error": f"line {numbers.number()} of the manifest is {problem}"}
        return row

    def read_rows(self, start: int = 0, end: int | None = None, *, at_line_start: bool = False,
                  warn_duplicates: bool = True, keep: Any = None, f: Any = None) -> Iterator[tuple[int, int, dict | None]]:
        """``(offset, end offset, row)`` for every non-empty line that starts in ``[start, end)`` (module
        :func:`iter_lines`), in file order. With ``keep`` (a callable of the line's index among the non-empty
        lines read) a line not kept is not parsed (its row is None). A repeated id is warned about (among
        the lines this call reads)."""
        own = f is None
        f = self.open() if own else f
        numbers = _LineNumbers(self.config.path)
        seen: set[str] = set()
        j = 0
        try:
            for off, stop, raw in iter_lines(f, start, end, at_line_start=at_line_start):
                if numbers.base_at is None:
                    numbers.base_at = off
                numbers.seen += 1
                if keep is not None and not keep(j):
                    if not is_blank(raw):  # not parsed
                        yield off, stop, None
                        j += 1
                    continue
                row = self._parse(raw, numbers)
                if row is None:
                    continue
                if warn_duplicates:
                    sid = str(row["id"])
                    if sid in seen:
                        log.warning("%s:%d: duplicate id %r; the first is scored, this one is recorded as rejected",
                                    self.config.path, numbers.number(), row["id"])
                    seen.add(sid)
                yield off, stop, row
                j += 1
        except OSError as exc:
            raise self._fail_open(exc) from exc
        finally:
            if own:
                f.close()

    def read_range(self, start: int = 0, end: int | None = None) -> Iterator[Sample]:
        """The samples of the lines that start in the byte range ``[start, end)`` (no other line is read)."""
        for _, _, row in self.read_rows(start, end):
            yield self._sample(row)

    def rows(self) -> list[dict]:
        """Every row of the manifest (read whole once and kept; a streaming reader does not need this)."""
        if self._rows is None:
            self._rows = [row for _, _, row in self.read_rows()]
            self._len = len(self._rows)
        return self._rows

    def __len__(self) -> int:
        """The number of samples (a full read of the manifest, done once)."""
        if self._len is None:
            self._len = sum(1 for _ in self.read_rows(warn_duplicates=False))
        return self._len

    def _resolve(self, image: str) -> str:
        if _is_url(image) or os.path.isabs(image):
            return image
        base = self._base()
        return f"{base}/{image}" if _is_url(base) else os.path.join(base, image)

    def _sample(self, row: dict) -> Sample:
        extra = {k: v for k, v in row.items() if k not in ("id", "image", "caption", "short_caption")}
        short = row.get("short_caption")
        caption = row["caption"]
        if not isinstance(caption, str):
            extra["caption_error"] = f"caption is a JSON {type(caption).__name__}, not a string"
            caption = "" if caption is None else json.dumps(caption)
        image = row["image"]
        if not isinstance(image, str) or not image:
            image = None  # the scoring pipeline records "Sample has no image"
            extra["missing_image"] = True
        return Sample(id=str(row["id"]), caption=caption, image=None if image is None else self._resolve(image),
                      short_caption=None if short is None else str(short), meta=extra)

    def __iter__(self) -> Iterator[Sample]:
        if self._rows is not None:
            yield from (self._sample(row) for row in self._rows)
        else:  # streamed: memory does not grow with the manifest
            yield from self.read_range(0, None)

    def iter_samples(self, rank: int = 0, world_size: int = 1) -> Iterator[Sample]:
        # strided positions need the whole manifest: read once and kept (a contiguous share: read_range)
        for row in self.rows()[rank::world_size]:
            yield self._sample(row)


@hookimpl
def miro_register_data_sources(register):
    register(ImageFolderSource)
    register(WebDatasetSource)
    register(JsonlSource)
