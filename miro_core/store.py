"""The reward table store: raw reward scores, failures and bins of a dataset in one Zarr v3 group.

Layout (DESIGN.md section 5, documented in ``docs/store.md``)::

    <root>/zarr.json                 attrs: miro_store_format, format_version, num_rows (committed), chunk_rows,
                                            config (of the job that created it), history (jobs that wrote it)
    ids              [N] str          unique sample ids
    captions         [N] str          (optional)
    short_captions   [N] str          (optional, "" = none)
    scores/<reward>  [N] float32      NaN = not scored or failed; attrs: provenance (see ensure_reward)
    failures/<reward>[N] str          "" = no failure, else the reason
    done/<reward>    [N] uint8        0 pending, 1 scored, 2 failed, 3 scored with a truncated caption,
                                      4 scored with the short caption. Written after scores/failures of a
                                      chunk: a row counts as done only once both are on disk.
    bins/<binner>/<reward> [N] int16  -1 = missing; attrs: fitted state, binner, options, calibration, and
                                      what was binned: ``num_rows`` and ``scores_fingerprint`` (a hash of the
                                      scores). Reading levels of bins whose store has other rows or scores
                                      now is an error that says ``miro bin`` fixes it.

Every array is chunked along rows with the same ``chunk_rows``; writers write whole chunks, so disjoint
writers (ranks of one job) never touch the same object. Local paths use zarr's ``LocalStore`` (atomic
write-then-rename, zarr >= 3.1.3), other URLs go through fsspec (object stores put whole objects atomically).
Local stores also carry inter-process locks in ``.miro-locks/`` (see :mod:`miro_core._store_locks`):
metadata changes are serialised, and two jobs scoring the same rows of a reward are refused.
"""

from __future__ import annotations

__all__ = ["RewardStore", "STATUS", "FORMAT_VERSION", "IdIndex", "hash_ids", "open_store"]

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import StoreError
from ._store_locks import NoLocks, StoreLocks, locks_for

log = logging.getLogger(__name__)

FORMAT_NAME = "miro-reward-store"
FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 4096

#: codes of the ``done/<reward>`` arrays
STATUS = {"pending": 0, "scored": 1, "failed": 2, "truncated": 3, "short_caption": 4}

# keys of reward metadata that must match for scores to be comparable
_COMPAT_KEYS = ("version", "config", "model_id", "revision")


def _silence_zarr_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*Consolidated metadata.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*StringDType.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*vlen-utf8.*", category=UserWarning)
    # the lock directory (.miro-locks) and partial files of a killed writer are not zarr nodes
    warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")


#: dtype kind each array family must have (a store is refused if one differs: nothing is decoded as objects)
_EXPECTED_KINDS = {"ids": "T", "captions": "T", "short_captions": "T", "scores": "f", "failures": "T", "done": "u",
                   "bins": "i"}


def scores_fingerprint(values: np.ndarray) -> str:
    """A hash of a score column (NaN payloads canonicalised): what ``bins/`` attrs record as what they binned."""
    v = np.array(values, dtype=np.float32, copy=True).reshape(-1)
    v[np.isnan(v)] = np.float32("nan")
    return "blake2b-128:" + hashlib.blake2b(v.tobytes(), digest_size=16).hexdigest()


def local_path(url: str) -> str | None:
    """The absolute local path of a store URL, or None for an fsspec URL."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        return None
    return os.path.abspath(os.path.expanduser(url))


def _to_store(url: str, mode: str):
    """A zarr store object for ``url``: LocalStore for local paths, FsspecStore otherwise."""
    import zarr.storage

    read_only = mode == "r"
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url:
        path = os.path.abspath(os.path.expanduser(url))
        if not read_only:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"Cannot create the store directory {path}: {exc.strerror}. Pass a writable --store location."
                ) from exc
            if not os.access(path, os.W_OK):
                raise StoreError(f"Store location {path} is not writable; pass a writable --store location.")
        return zarr.storage.LocalStore(path, read_only=read_only)
    try:
        return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
    except (ValueError, ImportError, OSError) as exc:
        raise StoreError(f"Cannot open store URL {url!r}: {exc}. Use a local path or an fsspec URL (memory://, s3://...).") from exc


def _str_array(values: Sequence[Any] | None, n: int) -> np.ndarray:
    if values is None:
        return np.array([""] * n, dtype=np.dtypes.StringDType())
    out = np.array(["" if v is None else str(v) for v in values], dtype=np.dtypes.StringDType())
    if out.shape != (n,):
        raise StoreError(f"Expected {n} values, got {out.shape[0]}; ids, captions and short captions must align.")
    return out


def _as_str(values) -> np.ndarray:
    """A numpy ``StringDType`` array from a zarr string read (a fixed-width ``str`` array would drop trailing NULs)."""
    return np.array([str(v) for v in np.asarray(values).tolist()], dtype=np.dtypes.StringDType())


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def hash_ids(ids: Sequence[Any]) -> np.ndarray:
    """64-bit BLAKE2b hashes of sample ids (``uint64``), the keys of :class:`IdIndex`."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode("utf-8", "surrogatepass"), digest_size=8)
                                       .digest(), "little") for i in ids), dtype=np.uint64, count=len(ids))


class IdIndex:
    """Sample id -> store row through sorted 64-bit id hashes: 16 bytes per row, not a dict of strings.

    Two store ids with one hash (or a repeated id) raise. An id that is not in the store is reported as missing
    unless its hash equals a store id's hash (probability about ``rows / 2**64`` per lookup)."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray | None = None):
        h = np.asarray(hashes, dtype=np.uint64)
        rows = np.arange(len(h), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        self.hashes, self.rows = h[order], rows[order]
        if len(h) > 1 and bool((self.hashes[1:] == self.hashes[:-1]).any()):
            raise StoreError("Two store ids share a 64-bit hash (or an id is duplicated); ids must be unique.")

    @classmethod
    def of_ids(cls, ids: Sequence[Any]) -> IdIndex:
        return cls(hash_ids(ids))

    def __len__(self) -> int:
        return len(self.hashes)

    def rows_of_hashes(self, h: np.ndarray) -> np.ndarray:
        """Row per hash, -1 when no store id has it."""
        h = np.asarray(h, dtype=np.uint64)
        if not len(self.hashes):
            return np.full(len(h), -1, np.int64)
        pos = np.searchsorted(self.hashes, h).clip(0, len(self.hashes) - 1)
        return np.where(self.hashes[pos] == h, self.rows[pos], -1)

    def rows_of(self, ids: Sequence[Any]) -> np.ndarray:
        """Row per id, -1 when the id is not in the store."""
        return self.rows_of_hashes(hash_ids(ids))


class RewardStore:
    """A reward table (see the module docstring for the layout). Build with :meth:`create` / :meth:`open`."""

    def __init__(self, url: str, group, mode: str):
        self.url = url
        self._group = group
        self.mode = mode
        self._ids_cache: np.ndarray | None = None
        self._index: dict[str, int] | None = None
        self._row_index: IdIndex | None = None
        self.locks: StoreLocks | NoLocks = locks_for(local_path(url)) if mode == "a" else NoLocks()

    def _refresh(self) -> None:
        """Re-read the metadata from the store (another process may have appended rows or columns)."""
        import zarr

        if self.mode != "a":
            return
        self._group = zarr.open_group(store=self._group.store, mode="r+", use_consolidated=False)
        self._ids_cache = None
        self._index = None
        self._row_index = None

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def create(
        cls,
        url: str,
        ids: Sequence[str],
        captions: Sequence[str] | None = None,
        short_captions: Sequence[str | None] | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> RewardStore:
        """Create a store with one row per id. Raises :class:`StoreError` if one exists (unless ``overwrite``)."""
        import zarr

        _silence_zarr_warnings()
        if chunk_rows < 1:
            raise StoreError(f"chunk_rows must be >= 1, got {chunk_rows}.")
        ids = [str(i) for i in ids]
        cls._check_unique(ids)
        store = _to_store(url, "w")
        with locks_for(local_path(url)).store():
            return cls._create_locked(url, store, ids, captions, short_captions, chunk_rows=chunk_rows,
                                      overwrite=overwrite, config=config)

    @classmethod
    def _create_locked(cls, url, store, ids, captions, short_captions, *, chunk_rows, overwrite, config):
        import zarr

        if not overwrite and cls._exists(store):
            raise StoreError(
                f"A reward store already exists at {url}. Open it with RewardStore.open(url, 'a') to add rows or "
                "rewards, or pass overwrite=True to replace it."
            )
        try:
            # "a" creates the group without clearing the directory (its .miro-locks must survive)
            group = zarr.open_group(store=store, mode="w" if overwrite else "a", zarr_format=3)
        except (OSError, PermissionError) as exc:
            raise StoreError(f"Cannot write a store at {url}: {exc}. Pass a writable --store location.") from exc
        n = len(ids)
        group.attrs.update(
            {
                "miro_store_format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "chunk_rows": int(chunk_rows),
                "num_rows": 0,
                "config": _jsonable(dict(config or {})),
                "history": [],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        self = cls(url, group, "a")
        self._make_str("ids", n)
        if captions is not None:
            self._make_str("captions", n)
        if short_captions is not None:
            self._make_str("short_captions", n)
        self._write_rows(0, ids, captions, short_captions)
        group.attrs["num_rows"] = n  # commit point: rows below num_rows are valid
        self._consolidate()
        return self

    @classmethod
    def open_or_create(
        cls,
        url: str,
        ids: Sequence[str],
        captions: Sequence[str] | None = None,
        short_captions: Sequence[str | None] | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        config: Mapping[str, Any] | None = None,
    ) -> tuple[RewardStore, int]:
        """Open the store at ``url`` for writing and append the ``ids`` it lacks, or create it with them.

        One step under the store lock, so concurrent jobs (disjoint shards of one store) never race on the
        creation or on an append. Returns ``(store, number of rows appended)``."""
        _silence_zarr_warnings()
        ids = [str(i) for i in ids]
        cls._check_unique(ids)
        store = _to_store(url, "w")
        with locks_for(local_path(url)).store():
            if not cls._exists(store):
                return cls._create_locked(url, store, ids, captions, short_captions, chunk_rows=chunk_rows,
                                          overwrite=False, config=config), len(ids)
            self = cls.open(url, "a")
            index = self.id_index()
            new = [i for i, x in enumerate(ids) if x not in index]
            if new:
                self.append_rows([ids[i] for i in new], None if captions is None else [captions[i] for i in new],
                                 None if short_captions is None else [short_captions[i] for i in new])
            return self, len(new)

    @classmethod
    def open_or_create_rows(
        cls,
        url: str,
        hashes: np.ndarray,
        read_new,
        *,
        with_captions: bool,
        with_short: bool,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        config: Mapping[str, Any] | None = None,
    ) -> tuple[RewardStore, np.ndarray]:
        """The streaming :meth:`open_or_create`, for data sets of any size.

        ``hashes``: :func:`hash_ids` of the candidate ids (unique among themselves). ``read_new(mask)`` yields,
        in candidate order, ``(ids, captions, short captions)`` blocks of the candidates where ``mask`` is True
        (the ids the store lacks); they are written block by block and committed at once. One step under the
        store lock. Returns the store and the row of every candidate."""
        _silence_zarr_warnings()
        if chunk_rows < 1:
            raise StoreError(f"chunk_rows must be >= 1, got {chunk_rows}.")
        hashes = np.asarray(hashes, dtype=np.uint64)
        store = _to_store(url, "w")
        with locks_for(local_path(url)).store():
            if not cls._exists(store):
                self = cls._create_locked(url, store, [], [] if with_captions else None, [] if with_short else None,
                                          chunk_rows=chunk_rows, overwrite=False, config=config)
            else:
                self = cls.open(url, "a")
            rows = self.row_index().rows_of_hashes(hashes)
            new = rows < 0
            n_new = int(new.sum())
            start = self.num_rows
            rows[new] = start + np.arange(n_new, dtype=np.int64)
            if n_new:
                self._append_blocks_locked(n_new, read_new(new), with_short=with_short, checked=True,
                                           expect=hashes[new])
            return self, rows

    @classmethod
    def open(cls, url: str, mode: str = "r") -> RewardStore:
        """Open an existing store for reading (``"r"``) or appending/scoring (``"a"``)."""
        import zarr

        _silence_zarr_warnings()
        if mode not in ("r", "a"):
            raise StoreError(f"Store mode must be 'r' or 'a', got {mode!r}.")
        if mode == "r" and "://" not in url.replace("file://", "") and not os.path.exists(url.replace("file://", "")):
            raise StoreError(f"No reward store at {url}: the path does not exist. Create one with `miro score`.")
        store = _to_store(url, mode)
        if not cls._exists(store):
            raise StoreError(f"No reward store at {url} (no zarr group there). Create one with `miro score --store {url}`.")
        try:
            group = zarr.open_group(store=store, mode="r" if mode == "r" else "r+", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{url} is not a readable zarr group ({exc}); is it a MIRO reward store?") from exc
        if group.attrs.get("miro_store_format") != FORMAT_NAME:
            raise StoreError(f"{url} is a zarr group but not a MIRO reward store (no miro_store_format attribute).")
        version = int(group.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"Store {url} has format version {version}; this miro reads up to {FORMAT_VERSION}. Upgrade miro."
            )
        if mode == "a":
            # the consolidated copy may lag the real metadata if a writer was killed; re-read the truth
            group = zarr.open_group(store=store, mode="r+", use_consolidated=False, zarr_format=3)
        self = cls(url, group, mode)
        self._validate_layout()
        return self

    def _validate_layout(self) -> None:
        """Refuse a store whose arrays are not the documented layout (missing ``ids``, object/pickle codecs,
        wrong dtypes, rows past the arrays): nothing of such a store is decoded."""
        problems = []
        for key in ("num_rows", "chunk_rows"):
            if not isinstance(self._group.attrs.get(key), int) or int(self._group.attrs[key]) < (1 if key == "chunk_rows" else 0):
                problems.append(f"attribute {key!r} is {self._group.attrs.get(key)!r}, not a non-negative integer")
        if not self._has("ids"):
            problems.append("it has no 'ids' array")
        if not problems:
            n = self.num_rows
            for arr in self._all_row_arrays():
                family = arr.path.split("/")[0]
                meta = arr.metadata
                codecs = [getattr(c, "codec_name", None) or type(c).__name__ for c in getattr(meta, "codecs", ())]
                if getattr(meta, "zarr_format", 3) != 3:
                    problems.append(f"array {arr.path!r} is zarr format {meta.zarr_format}, not 3")
                if any("pickle" in str(c).lower() for c in codecs):
                    problems.append(f"array {arr.path!r} uses a pickle codec ({codecs}); it is never decoded")
                want = _EXPECTED_KINDS.get(family)
                kind = np.dtype(arr.dtype).kind if family in _EXPECTED_KINDS else None
                if want is not None and not (kind == want or (want == "T" and kind in ("U", "T"))):
                    problems.append(f"array {arr.path!r} has dtype {arr.dtype}, expected kind {want!r}")
                if family in _EXPECTED_KINDS and (arr.ndim != 1 or arr.shape[0] < n):
                    problems.append(f"array {arr.path!r} has shape {arr.shape}, fewer than the {n} committed rows")
        if problems:
            raise StoreError(
                f"Store {self.url} is not a valid MIRO reward store: {'; '.join(problems[:5])}. It may be corrupt, "
                "from another tool or crafted; nothing was read from it. Rebuild it with `miro score`."
            )

    @staticmethod
    def _exists(store) -> bool:
        import asyncio

        from zarr.core.sync import sync

        async def _check():
            return await store.exists("zarr.json")

        try:
            return bool(sync(_check()))
        except (OSError, asyncio.TimeoutError):
            return False

    @staticmethod
    def _check_unique(ids: Sequence[str], existing: Mapping[str, int] | None = None) -> None:
        seen: set[str] = set()
        for i in ids:
            if i in seen or (existing is not None and i in existing):
                raise StoreError(f"Duplicate sample id {i!r}; ids must be unique in a reward store.")
            if i == "":
                raise StoreError("Empty sample id; every sample needs a non-empty id.")
            seen.add(i)

    # ------------------------------------------------------------------------------------ internals
    @property
    def chunk_rows(self) -> int:
        return int(self._group.attrs["chunk_rows"])

    @property
    def num_rows(self) -> int:
        return int(self._group.attrs["num_rows"])

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"Store {self.url} was opened read-only; open it with mode='a' to write.")

    def _capacity(self) -> int:
        return int(self._group["ids"].shape[0])

    def _make_str(self, path: str, n: int):
        return self._group.create_array(path, shape=(n,), chunks=(self.chunk_rows,), dtype=str, fill_value="", overwrite=True)

    def _make(self, path: str, dtype, fill, attrs: Mapping[str, Any] | None = None):
        arr = self._group.create_array(
            path, shape=(self._capacity(),), chunks=(self.chunk_rows,), dtype=dtype, fill_value=fill, overwrite=True
        )
        if attrs:
            arr.attrs.update(_jsonable(dict(attrs)))
        return arr

    def _has(self, path: str) -> bool:
        try:
            self._group[path]
            return True
        except KeyError:
            return False

    def _arr(self, path: str):
        try:
            return self._group[path]
        except KeyError:
            raise StoreError(f"Store {self.url} has no array {path!r}.") from None

    def _all_row_arrays(self):
        out = []

        def walk(g):
            for _, a in g.arrays():
                out.append(a)
            for _, sub in g.groups():
                walk(sub)

        walk(self._group)
        return out

    def _consolidate(self) -> None:
        import zarr

        zarr.consolidate_metadata(self._group.store)

    def _write_rows(self, start: int, ids, captions, short_captions) -> None:
        n = len(ids)
        self._group["ids"][start : start + n] = _str_array(ids, n)
        if self._has("captions"):
            self._group["captions"][start : start + n] = _str_array(captions, n)
        if self._has("short_captions"):
            self._group["short_captions"][start : start + n] = _str_array(short_captions, n)
        self._ids_cache = None
        self._index = None
        self._row_index = None

    # ------------------------------------------------------------------------------------------ rows
    def ids(self) -> np.ndarray:
        if self._ids_cache is None:
            self._ids_cache = _as_str(self._group["ids"][: self.num_rows])
        return self._ids_cache

    def captions(self) -> np.ndarray | None:
        return _as_str(self._group["captions"][: self.num_rows]) if self._has("captions") else None

    def short_captions(self) -> np.ndarray | None:
        if not self._has("short_captions"):
            return None
        return _as_str(self._group["short_captions"][: self.num_rows])

    def id_index(self) -> dict[str, int]:
        """``{id: row}`` for every row (a dict of every id: for small stores; large ones use :meth:`row_index`)."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids().tolist())}
        return self._index

    def id_hashes(self, block_rows: int | None = None) -> np.ndarray:
        """:func:`hash_ids` of every row's id, read chunk by chunk (no list of every id is held)."""
        n = self.num_rows
        step = max(int(block_rows or self.chunk_rows * 16), 1)
        out = np.empty(n, dtype=np.uint64)
        arr = self._group["ids"]
        for s in range(0, n, step):
            e = min(n, s + step)
            out[s:e] = hash_ids(np.asarray(arr[s:e]).tolist())
        return out

    def row_index(self) -> IdIndex:
        """The :class:`IdIndex` of the committed rows (cached until rows are appended)."""
        if self._row_index is None or len(self._row_index) != self.num_rows:
            self._row_index = IdIndex(self.id_hashes())
        return self._row_index

    def index_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; :class:`StoreError` naming the first unknown id."""
        ids = [str(i) for i in ids]
        rows = self.row_index().rows_of(ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise StoreError(f"Sample id {ids[int(missing[0])]!r} is not in store {self.url} ({self.num_rows} rows).")
        return rows.astype(np.int64)

    def append_rows(self, ids: Sequence[str], captions: Sequence[str] | None = None, short_captions=None) -> None:
        """Append rows (all arrays grow; new rows are pending for every reward). Ids must stay unique."""
        self._writable()
        ids = [str(i) for i in ids]
        if not ids:
            return
        with self.locks.store():
            self._refresh()
            self._append_rows_locked(ids, captions, short_captions)

    def _append_rows_locked(self, ids, captions, short_captions) -> None:
        self._check_unique(ids, self.id_index())
        self._append_blocks_locked(len(ids), [(ids, captions, short_captions)],
                                   with_short=short_captions is not None, checked=True)

    def append_blocks(self, n: int, blocks, *, with_short: bool = False) -> int:
        """Append ``n`` rows given as an iterable of ``(ids, captions or None, short captions or None)`` blocks,
        written block by block (memory of one block, not of the ``n`` rows), committed at once at the end.

        The new ids must be unique and not in the store (checked through their hashes before the commit; an
        interrupted or refused append leaves the committed rows as they were). Returns the first new row."""
        self._writable()
        with self.locks.store():
            self._refresh()
            return self._append_blocks_locked(int(n), blocks, with_short=with_short, checked=False)

    def _append_blocks_locked(self, n_new: int, blocks, *, with_short: bool, checked: bool,
                              expect: np.ndarray | None = None) -> int:
        start = self.num_rows
        new_n = start + n_new
        if new_n > self._capacity() or any(a.shape[0] != self._capacity() for a in self._all_row_arrays()):
            cap = max(new_n, self._capacity())
            for arr in self._all_row_arrays():
                arr.resize((cap,))
                if arr.shape[0] > start:
                    # rows past the commit point may hold data of an interrupted append: reset them
                    arr[start:cap] = arr.fill_value
            self._consolidate()
        if with_short and not self._has("short_captions"):
            self._make_str("short_captions", self._capacity())
        hashes = [] if not checked and expect is None else None
        old_index = self.row_index() if (hashes is not None and start) else None
        at = start
        for ids, captions, short_captions in blocks:
            ids = [str(i) for i in ids]
            k = len(ids)
            if at + k > new_n:
                raise StoreError(f"append_blocks: the blocks hold more than the {n_new} rows announced.")
            if captions is None and self._has("captions"):
                captions = [""] * k
            if expect is not None:
                if not np.array_equal(hash_ids(ids), expect[at - start : at - start + k]):
                    raise StoreError(f"append: the ids written at rows {at}..{at + k - 1} are not the ids planned "
                                     "for them (the data changed while the store was prepared?); nothing was "
                                     "committed, rerun.")
            elif hashes is not None:
                if any(i == "" for i in ids):
                    raise StoreError("Empty sample id; every sample needs a non-empty id.")
                hashes.append(hash_ids(ids))
            self._write_rows(at, ids, captions, short_captions)
            at += k
        if at != new_n:
            raise StoreError(f"append_blocks: the blocks hold {at - start} rows, {n_new} were announced.")
        if hashes is not None and n_new:
            h = np.concatenate(hashes)
            IdIndex(h)  # unique among themselves
            clash = np.flatnonzero(old_index.rows_of_hashes(h) >= 0) if old_index is not None else np.array([], np.int64)
            if clash.size:
                dup = str(self._group["ids"][start + int(clash[0])])
                raise StoreError(f"Duplicate sample id {dup!r}; ids must be unique in a reward store.")
        for arr in self._all_row_arrays():
            name = arr.path.split("/")[0]
            if name in ("done", "scores", "failures", "bins"):
                arr[start:new_n] = arr.fill_value
        self._group.attrs["num_rows"] = new_n  # commit point
        self._consolidate()
        self._ids_cache = self._index = self._row_index = None
        return start

    # --------------------------------------------------------------------------------------- rewards
    def rewards(self) -> list[str]:
        if not self._has("scores"):
            return []
        return sorted(name for name, _ in self._group["scores"].arrays())

    def reward_metadata(self, name: str) -> dict[str, Any]:
        return dict(self._arr(f"scores/{name}").attrs)

    def ensure_reward(self, name: str, metadata: Mapping[str, Any]) -> None:
        """Create the columns of reward ``name`` or check that ``metadata`` matches the stored provenance."""
        metadata = _jsonable(dict(metadata))
        if name in self.rewards():
            have = self.reward_metadata(name)
            diffs = [
                f"{k}: store has {have.get(k)!r}, this run has {metadata.get(k)!r}"
                for k in _COMPAT_KEYS
                if (k in have or k in metadata) and have.get(k) != metadata.get(k)
            ]
            if diffs:
                raise StoreError(
                    f"Reward {name!r} in store {self.url} was scored with a different reward version or "
                    f"configuration ({'; '.join(diffs)}). Scores of different versions are not comparable: score "
                    "into a new store, or drop the old column first (RewardStore.drop_reward)."
                )
            return
        self._writable()
        with self.locks.store():
            self._refresh()
            if name in self.rewards():  # another process created it meanwhile: check it again
                return self.ensure_reward(name, metadata)
            attrs = {**metadata, "reward": name, "count_scored": 0, "count_failed": 0, "count_truncated": 0,
                     "count_short_caption": 0}
            self._make(f"scores/{name}", "float32", float("nan"), attrs)
            self._make(f"failures/{name}", str, "")
            self._make(f"done/{name}", "uint8", 0)
            self._consolidate()

    def drop_reward(self, name: str) -> None:
        """Delete every array of reward ``name`` (scores, failures, done and its bins)."""
        self._writable()
        with self.locks.store():
            self._drop_reward_locked(name)

    def _drop_reward_locked(self, name: str) -> None:
        self._refresh()
        for path in (f"scores/{name}", f"failures/{name}", f"done/{name}"):
            if self._has(path):
                del self._group[path]
        for binner in self.binnings():
            if self._has(f"bins/{binner}/{name}"):
                del self._group[f"bins/{binner}/{name}"]
        self._consolidate()

    def scores(self, name: str) -> np.ndarray:
        return np.asarray(self._arr(f"scores/{name}")[: self.num_rows], dtype=np.float32)

    def status(self, name: str) -> np.ndarray:
        """The ``done/<reward>`` codes (see :data:`STATUS`)."""
        return np.asarray(self._arr(f"done/{name}")[: self.num_rows], dtype=np.uint8)

    def scored_mask(self, name: str) -> np.ndarray:
        """True where the reward has a result (a score or a recorded failure): those rows are not rescored."""
        return self.status(name) != STATUS["pending"]

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        c = self.chunk_rows
        return chunk * c, min((chunk + 1) * c, self.num_rows)

    def num_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows)

    def write_scores(self, name: str, start: int, values, *, reasons: Sequence[str] | None = None,
                     status: np.ndarray | None = None) -> None:
        """Write scores of rows ``start:start+len(values)`` (chunk-aligned), then mark them done.

        ``reasons`` (``""`` = ok) go to ``failures/<reward>``; ``status`` gives the ``done`` codes (default:
        scored where finite, failed elsewhere). The done marks are written last, so an interruption leaves
        the rows pending and a resumed job rescores them.
        """
        self._writable()
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        n = values.shape[0]
        end = start + n
        c = self.chunk_rows
        if start % c or (end % c and end != self.num_rows) or end > self.num_rows:
            raise StoreError(
                f"write_scores({name!r}, start={start}, n={n}) is not chunk-aligned (chunk_rows={c}, "
                f"num_rows={self.num_rows}); write whole chunks so concurrent writers never share one."
            )
        if reasons is None:
            reasons = ["" if np.isfinite(v) else "non-finite score" for v in values]
        reasons_arr = _str_array(reasons, n)
        if status is None:
            status = np.where(np.isfinite(values), STATUS["scored"], STATUS["failed"]).astype(np.uint8)
        status = np.asarray(status, dtype=np.uint8)
        values = np.where(status == STATUS["failed"], np.float32("nan"), values).astype(np.float32)
        self._arr(f"scores/{name}")[start:end] = values
        self._arr(f"failures/{name}")[start:end] = reasons_arr
        self._arr(f"done/{name}")[start:end] = status

    def record_failures(self, name: str, ids: Sequence[str], reasons: Sequence[str]) -> None:
        """Mark ``ids`` as failed for ``name`` with their reasons (row-level writes: one writer only)."""
        self._writable()
        rows = self.index_of(ids)
        if len(reasons) != len(rows):
            raise StoreError("record_failures needs one reason per id.")
        for r, reason in zip(rows.tolist(), reasons):
            self._arr(f"scores/{name}")[r] = np.float32("nan")
            self._arr(f"failures/{name}")[r] = str(reason) or "failed"
            self._arr(f"done/{name}")[r] = STATUS["failed"]

    def failures(self, name: str) -> list[tuple[str, str]]:
        reasons = _as_str(self._arr(f"failures/{name}")[: self.num_rows])
        rows = np.flatnonzero(reasons != "")
        ids = self.ids()
        return [(str(ids[r]), str(reasons[r])) for r in rows]

    def reward_counts(self, name: str) -> dict[str, int]:
        st = self.status(name)
        scored = int(np.isin(st, [STATUS["scored"], STATUS["truncated"], STATUS["short_caption"]]).sum())
        failed = int((st == STATUS["failed"]).sum())
        return {
            "scored": scored,
            "failed": failed,
            "missing": int(st.shape[0] - scored - failed),
            "truncated": int((st == STATUS["truncated"]).sum()),
            "short_caption": int((st == STATUS["short_caption"]).sum()),
        }

    def finalize_reward(self, name: str) -> dict[str, int]:
        """Recompute the count attrs of ``scores/<reward>`` from the arrays (after a job)."""
        self._writable()
        with self.locks.store():
            self._refresh()
            counts = self.reward_counts(name)
            self._arr(f"scores/{name}").attrs.update(
                {
                    "count_scored": counts["scored"],
                    "count_failed": counts["failed"],
                    "count_truncated": counts["truncated"],
                    "count_short_caption": counts["short_caption"],
                }
            )
            self._consolidate()
        return counts

    def add_history(self, record: Mapping[str, Any]) -> None:
        self._writable()
        with self.locks.store():
            self._refresh()
            hist = list(self._group.attrs.get("history", []))
            hist.append(_jsonable(dict(record)))
            self._group.attrs["history"] = hist
            self._consolidate()

    # ------------------------------------------------------------------------------ rejected samples
    def record_rejected(self, data: str, rejected: Sequence[tuple[str, str]], *, examples: int = 20) -> None:
        """Record the samples of data spec ``data`` that got no row (duplicate or unusable ids), replacing
        an earlier record of the same data (a rerun on the same data finds the same ones again)."""
        by_reason: dict[str, int] = {}
        for _, reason in rejected:
            kind = reason.split(":", 1)[0]
            by_reason[kind] = by_reason.get(kind, 0) + 1
        self.record_rejected_summary(data, len(rejected), by_reason, list(rejected)[:examples], keep=examples)

    def record_rejected_summary(self, data: str, count: int, by_reason: Mapping[str, int],
                                examples: Sequence[tuple[str, str]], *, keep: int = 20) -> None:
        """:meth:`record_rejected` from counts (``{reason kind: n}``) and the first ``(id, reason)`` examples."""
        self._writable()
        entry = {"count": int(count), "by_reason": {str(k): int(v) for k, v in by_reason.items()},
                 "examples": [[repr(i) if not i.isprintable() else i, r] for i, r in list(examples)[:keep]]}
        with self.locks.store():
            self._refresh()
            rec = dict(self._group.attrs.get("rejected", {}))
            if count:
                rec[str(data)] = entry
            else:
                rec.pop(str(data), None)
            self._group.attrs["rejected"] = _jsonable(rec)
            self._consolidate()

    def rejected(self) -> dict[str, Any]:
        """``{"count": n, "by_reason": {...}, "by_data": {spec: {...}}}`` of the samples that got no row."""
        rec = dict(self._group.attrs.get("rejected", {}) or {})
        total, by_reason = 0, {}
        for entry in rec.values():
            total += int(entry.get("count", 0))
            for k, v in dict(entry.get("by_reason", {})).items():
                by_reason[k] = by_reason.get(k, 0) + int(v)
        return {"count": total, "by_reason": by_reason, "by_data": rec}

    # ------------------------------------------------------------------------------------------ bins
    def binnings(self) -> dict[str, list[str]]:
        if not self._has("bins"):
            return {}
        return {b: sorted(n for n, _ in g.arrays()) for b, g in sorted(self._group["bins"].groups())}

    def bins(self, binner: str, reward: str) -> np.ndarray:
        return np.asarray(self._arr(f"bins/{binner}/{reward}")[: self.num_rows], dtype=np.int16)

    def bin_attrs(self, binner: str, reward: str) -> dict[str, Any]:
        return dict(self._arr(f"bins/{binner}/{reward}").attrs)

    def bin_state(self, binner: str, reward: str) -> dict[str, Any]:
        return dict(self.bin_attrs(binner, reward)["state"])

    def bin(self, binner_name: str, options: Mapping[str, Any] | None = None, rewards: Sequence[str] | None = None,
            calibration_size: int = 100_000, seed: int = 0) -> dict[str, dict[str, Any]]:
        """Fit ``binner_name`` per reward on a seeded calibration subset of the scored rows (all of them if
        fewer), transform every row and write ``bins/<binner>/<reward>``. Never rescores."""
        from ._plugins import registry

        self._writable()
        available = self.rewards()
        rewards = list(rewards) if rewards else available
        for r in rewards:
            if r not in available:
                from ._errors import did_you_mean

                raise StoreError(
                    f"Reward {r!r} has no scores in store {self.url}.{did_you_mean(r, available)} "
                    f"Scored rewards: {', '.join(available) or '(none)'}. Score it first with `miro score`."
                )
        reg = registry("binners").get(binner_name)
        binner = registry("binners").create(binner_name, dict(options or {}))
        with self.locks.store():
            self._refresh()
            return self._bin_locked(binner_name, reg, binner, rewards, calibration_size, seed)

    def _bin_locked(self, binner_name, reg, binner, rewards, calibration_size, seed) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {}
        for r in rewards:
            scores = self.scores(r)
            finite = np.flatnonzero(np.isfinite(scores))
            if finite.size == 0:
                raise StoreError(f"Reward {r!r} in store {self.url} has no finite scores to fit a binner on.")
            if finite.size > calibration_size:
                rng = np.random.default_rng(seed)
                calib = np.sort(rng.choice(finite, size=calibration_size, replace=False))
            else:
                calib = finite
            state = _jsonable(binner.fit(scores[calib]))
            bins = _checked_bins(binner.transform(scores, state), scores, binner, reg, r)
            attrs = {
                "binner": binner_name,
                "options": binner.config_dict(),
                "num_bins": binner.num_bins,
                "state": state,
                "calibration_size": int(calib.size),
                "calibration_requested": int(calibration_size),
                "seed": int(seed),
                "distribution": reg.distribution,
                "distribution_version": reg.version,
                "reward_metadata": {k: self.reward_metadata(r).get(k) for k in _COMPAT_KEYS},
                "num_rows": int(self.num_rows),
                "scores_fingerprint": scores_fingerprint(scores),
            }
            arr = self._make(f"bins/{binner_name}/{r}", "int16", -1, attrs)
            arr[: self.num_rows] = bins
            states[r] = state
        self._consolidate()
        return states

    def bin_staleness(self, binner: str, reward: str) -> str | None:
        """Why ``bins/<binner>/<reward>`` no longer describes the scores (None when it still does)."""
        attrs = self.bin_attrs(binner, reward)
        if "num_rows" not in attrs or "scores_fingerprint" not in attrs:
            return "they were written by an older miro that recorded neither the row count nor the scores they binned"
        if int(attrs["num_rows"]) != self.num_rows:
            return (f"they were fitted on {int(attrs['num_rows'])} rows and the store now has {self.num_rows} "
                    "(rows added since binning would read as 'missing score')")
        if attrs["scores_fingerprint"] != scores_fingerprint(self.scores(reward)):
            return "the scores changed after binning (rows rescored or retried)"
        return None

    def stale_bins(self, binner: str, rewards: Sequence[str] | None = None) -> dict[str, str]:
        """``{reward: reason}`` for the binned rewards (of ``rewards``, default all) whose bins are stale."""
        have = self.binnings().get(binner, [])
        out = {}
        for r in (rewards if rewards is not None else have):
            if r in have:
                why = self.bin_staleness(binner, r)
                if why:
                    out[r] = why
        return out

    def levels(self, rewards: Sequence[str], binner: str, rows=None) -> np.ndarray:
        """Normalised levels ``k/(B-1)`` as float32 ``[n, len(rewards)]``; NaN where the bin is missing.

        Raises :class:`StoreError` if any bins are stale (the store has other rows or scores than were binned):
        new rows would otherwise train as "missing score"."""
        from .interfaces import Binner

        have = self.binnings().get(binner)
        if have is None:
            raise StoreError(
                f"Store {self.url} has no bins of binner {binner!r} (present: {', '.join(self.binnings()) or 'none'}). "
                f"Run `miro bin --store {self.url} --binner {binner}`."
            )
        cols = []
        for r in rewards:
            if r not in have:
                raise StoreError(
                    f"Reward {r!r} is not binned with {binner!r} in {self.url} (binned: {', '.join(have)}). "
                    f"Run `miro bin --store {self.url} --binner {binner} --rewards {r}`."
                )
        stale = self.stale_bins(binner, list(rewards))
        if stale:
            detail = "; ".join(f"{r}: {why}" for r, why in stale.items())
            raise StoreError(
                f"The {binner!r} bins of {', '.join(stale)} in store {self.url} are stale: {detail}. Rebin with "
                f"`miro bin --store {self.url} --binner {binner} --rewards {','.join(stale)}` (same --bins as before; "
                "rebinning never rescores)."
            )
        for r in rewards:
            b = self.bins(binner, r)
            if rows is not None:
                b = b[np.asarray(rows)]
            cols.append(Binner.levels(b, int(self.bin_attrs(binner, r)["num_bins"])))
        n = len(cols[0]) if cols else (self.num_rows if rows is None else len(np.asarray(rows)))
        return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((n, 0), np.float32)

    # ------------------------------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "format_version": int(self._group.attrs.get("format_version", 0)),
            "num_rows": self.num_rows,
            "chunk_rows": self.chunk_rows,
            "has_captions": self._has("captions"),
            "has_short_captions": self._has("short_captions"),
            "rewards": {r: self.reward_counts(r) for r in self.rewards()},
            "binners": self.binnings(),
            "stale_bins": {b: self.stale_bins(b) for b in self.binnings() if self.stale_bins(b)},
            "rejected": self.rejected(),
        }

    def __repr__(self) -> str:
        return f"RewardStore({self.url!r}, rows={self.num_rows}, rewards={self.rewards()})"


def open_store(url: str, mode: str = "r") -> RewardStore:
    return RewardStore.open(url, mode)


def _checked_bins(out: Any, scores: np.ndarray, binner: Any, reg: Any, reward: str) -> np.ndarray:
    """A binner's ``transform`` output checked against the Binner contract before anything is written."""
    from .interfaces import MISSING_BIN

    who = f"Binner {reg.name!r} (distribution {reg.distribution} {reg.version}, plugin {reg.plugin})"
    fix = ("It must return one integer level per score, in [0, num_bins) for finite scores and "
           f"{MISSING_BIN} (MISSING_BIN) for NaN. Fix the plugin (its BinnerContract tests in miro_core.testing "
           "check this) or use another binner; nothing was written.")
    bins = np.asarray(out)
    if bins.shape != scores.shape:
        raise StoreError(f"{who} broke its contract on reward {reward!r}: transform returned shape "
                         f"{bins.shape} for {scores.shape[0]} scores. {fix}")
    if not (np.issubdtype(bins.dtype, np.integer) or np.issubdtype(bins.dtype, np.floating)):
        raise StoreError(f"{who} broke its contract on reward {reward!r}: transform returned dtype {bins.dtype}. {fix}")
    if np.issubdtype(bins.dtype, np.floating) and not np.array_equal(bins, np.round(bins), equal_nan=False):
        raise StoreError(f"{who} broke its contract on reward {reward!r}: transform returned non-integer or NaN "
                         f"levels. {fix}")
    finite = ~np.isnan(scores)
    good = (bins[finite] >= 0) & (bins[finite] < binner.num_bins)
    if not good.all():
        bad = bins[finite][~good]
        raise StoreError(f"{who} broke its contract on reward {reward!r}: {bad.size} finite scores got levels "
                         f"outside [0, {binner.num_bins}) (e.g. {bad[:3].tolist()}). {fix}")
    if not (bins[~finite] == MISSING_BIN).all():
        raise StoreError(f"{who} broke its contract on reward {reward!r}: NaN scores got a level other than "
                         f"{MISSING_BIN}. {fix}")
    return bins.astype(np.int16)
