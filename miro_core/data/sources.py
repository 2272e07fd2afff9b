"""Built-in data sources: ``image_folder``, ``webdataset`` and ``jsonl``.

Each yields :class:`~miro_core.Sample` objects in a deterministic order with unique ids. Images travel
undecoded (a path or the encoded bytes); :func:`miro_core.data.to_tensor` decodes them in the scoring
workers.
"""

from __future__ import annotations

__all__ = ["ImageFolderSource", "WebDatasetSource", "JsonlSource", "IMAGE_EXTENSIONS", "expand_urls"]

import json
import logging
import os
import re
import tarfile
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


def _read_text_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


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
                raise MiroError(
                    f"image_folder {self.root}: several images share the id(s) {dup} (same name, different "
                    "extension). Rename them so every id is unique."
                )
        return self._files

    def __len__(self) -> int:
        return len(self.files())

    def _sample(self, rel: str) -> Sample:
        stem = os.path.splitext(rel)[0]
        texts = self._texts  # caption files seen by the listing: no failing open() per missing short caption
        caption = _read_text_file(os.path.join(self.root, stem + ".txt")) if stem + ".txt" in texts else None
        short = _read_text_file(os.path.join(self.root, stem + ".short.txt")) if stem + ".short.txt" in texts else None
        return Sample(
            id=stem,
            caption=caption if caption is not None else "",
            image=os.path.join(self.root, rel),
            short_caption=short,
            meta={} if caption is not None else {"missing_caption": True},
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
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
                key, parts = None, {}
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
                                yield sample
                        key, parts = k, {}
                    f = tar.extractfile(member)
                    parts[ext] = f.read() if f is not None else b""
                if key is not None:
                    sample = self._make(key, parts, url)
                    if sample is not None:
                        yield sample
        except tarfile.TarError as exc:
            raise MiroError(f"webdataset shard {url} is not a readable tar file: {exc}.") from exc
        finally:
            fileobj.close()

    @staticmethod
    def _make(key: str, parts: dict[str, bytes], url: str) -> Sample | None:
        image = next((parts[k] for k in _WDS_IMAGE_KEYS if k in parts), None)
        meta: dict = {"shard": url}
        if "json" in parts:
            try:
                meta.update(json.loads(parts["json"].decode("utf-8")))
            except (ValueError, UnicodeDecodeError):
                log.warning("sample %s in %s: json member is not valid JSON; ignored", key, url)
        caption = parts["txt"].decode("utf-8", "replace").strip() if "txt" in parts else meta.get("caption")
        short = parts["short.txt"].decode("utf-8", "replace").strip() if "short.txt" in parts else meta.get("short_caption")
        if image is None and caption is None:
            return None  # not a sample (e.g. a stray file)
        return Sample(id=key, caption=str(caption or ""), image=image, short_caption=short, meta=meta)

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

                with fsspec.open(path, "rt", encoding="utf-8") as f:
                    lines = f.read().splitlines()
            else:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
        except (OSError, ValueError) as exc:
            raise MiroError(f"Cannot read JSONL manifest {path}: {exc}. Pass an existing .jsonl file.") from exc
        rows, seen = [], set()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise MiroError(f"{path}:{n}: not valid JSON ({exc}). Each line must be one JSON object.") from exc
            if not isinstance(row, dict) or not all(k in row for k in ("id", "image", "caption")):
                raise MiroError(f"{path}:{n}: each line needs the keys 'id', 'image' and 'caption' (got {line[:120]!r}).")
            if str(row["id"]) in seen:
                raise MiroError(f"{path}:{n}: duplicate id {row['id']!r}; ids must be unique.")
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
        return Sample(id=str(row["id"]), caption=str(row["caption"]), image=self._resolve(str(row["image"])),
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
