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

__all__ = ["ImageFolderSource", "WebDatasetSource", "JsonlSource", "IMAGE_EXTENSIONS", "expand_urls"]

import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator

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
class JsonlSource(DataSource):
    """A JSONL manifest: one object per line with id, image, caption (and optional short_caption).

    ``image`` is a path relative to the manifest, an absolute path, or an fsspec URL."""

    name = "jsonl"

    @config
    class Config:
        path: str

    def __init__(self, config):
        super().__init__(config)
        self._rows: list[dict] | None = None

    def _base(self) -> str:
        p = self.config.path
        return p.rsplit("/", 1)[0] if _is_url(p) else os.path.dirname(os.path.abspath(p))

    def rows(self) -> list[dict]:
        if self._rows is not None:
            return self._rows
        path = self.config.path
        try:
            if _is_url(path):
                import fsspec

                with fsspec.open(path, "rb") as f:
                    raw_lines = f.read().splitlines()
            else:
                with open(path, "rb") as f:
                    raw_lines = f.read().splitlines()
        except (OSError, ValueError) as exc:
            raise MiroError(f"Cannot read JSONL manifest {path}: {exc}. Pass an existing .jsonl file.") from exc
        rows, seen = [], set()
        for n, raw in enumerate(raw_lines, 1):
            line, problem = decode_caption(raw)  # a stray non-UTF-8 byte spoils one line, not the manifest
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise MiroError(f"{path}:{n}: not valid JSON ({exc}). Each line must be one JSON object.") from exc
            if not isinstance(row, dict) or not all(k in row for k in ("id", "image", "caption")):
                raise MiroError(f"{path}:{n}: each line needs the keys 'id', 'image' and 'caption' (got {line[:120]!r}).")
            if problem:
                row = {**row, "caption_error": f"line {n} of the manifest is {problem}"}
            if str(row["id"]) in seen:
                log.warning("%s:%d: duplicate id %r; the first is scored, this one is recorded as rejected",
                            path, n, row["id"])
            seen.add(str(row["id"]))
            rows.append(row)
        self._rows = rows
        return rows

    def __len__(self) -> int:
        return len(self.rows())

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
        for row in self.rows():
            yield self._sample(row)

    def iter_samples(self, rank: int = 0, world_size: int = 1) -> Iterator[Sample]:
        for row in self.rows()[rank::world_size]:
            yield self._sample(row)


@hookimpl
def miro_register_data_sources(register):
    register(ImageFolderSource)
    register(WebDatasetSource)
    register(JsonlSource)
