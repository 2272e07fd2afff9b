"""Encoded datasets: VAE latents and text-encoder outputs written once as shards, streamed by training.

``encode_dataset(source, url, text_encoder, autoencoder, ...)`` (``miro encode``) writes, under any fsspec URL::

    encoded.json            header: format, key (hash of data spec, encoder configs, image size), specs, units
    shard-00000.safetensors one per unit of the source: latents [n, C, h, w] and text tokens trimmed to their mask
                            ([sum of lengths, D], with offsets [n + 1]) in fp16 / bf16; ids and captions in the
                            safetensors metadata
    empty.safetensors       the text encoder's output for "" (caption dropout, text-dropping guidance)

A *unit* of the source is one webdataset shard (tar URL); for a JSONL manifest the lines that start in the byte
range ``[S k / units, S (k + 1) / units)`` of its ``S`` bytes (``units = ceil(S / (shard_rows * bytes per line))``,
the bytes per line measured on the manifest's first MiB; the header says ``"layout": "bytes"``: no rank reads the
whole manifest; an encode begun before byte ranges, without that field, is resumed with its old layout); for other
sources the samples ``i`` with ``i % units == k`` (``DataSource.iter_samples(k, units)``, cheap for the world and
image folders), ``units = ceil(len(source) / shard_rows)``. Rank ``r`` of ``W`` encodes the units ``k % W == r``;
each shard is written to a temporary name and renamed, so a killed encode resumes with the shards it finished
(nothing is re-encoded, nothing is partial).

:class:`StreamingData` reads such a dataset for training: rank ``r`` of ``W`` owns the shards ``k % W == r`` (it
never reads another rank's shards; together the ranks cover the data set once per epoch); epoch ``e`` permutes a rank's shards with ``(seed, r, e)``, and ``buffer_shards``
consecutive shards are pooled and shuffled with a generator seeded by ``(seed, r, e, group)``. The per-rank sample
sequence is a pure function of ``(seed, W, r)`` over the concatenated epochs, so step ``s`` consumes samples
``[s * b, (s + 1) * b)`` of it and a resumed run continues at exactly that sample (only shard headers are read to
find it). Reward levels are joined by id from the store: its bins are read once, ids are matched through a sorted
64-bit hash index (12 bytes per store row); samples whose id is not in the store are counted and skipped. Memory
holds the group being consumed (``buffer_shards`` shards), not the data set.
"""

from __future__ import annotations

__all__ = ["ENCODED_FORMAT", "encode_dataset", "encoded_key", "open_encoded", "StreamingData", "EncodedHeader"]

import hashlib
import json
import logging
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from .._errors import ConfigError, StoreError
from ..store import IdIndex

log = logging.getLogger(__name__)

ENCODED_FORMAT = "miro-encoded"
ENCODED_VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _spec(spec: Any) -> Any:
    from .._config import unstructure

    return unstructure(spec) if attrs.has(type(spec)) else spec


def encoded_key(data_spec: str, text_encoder_spec: Any, autoencoder_spec: Any, image_size: int, dtype: str) -> str:
    """What the shards depend on (the source content is taken to be a function of its spec)."""
    payload = {"format": ENCODED_VERSION, "spec": data_spec, "text_encoder": _spec(text_encoder_spec),
               "autoencoder": _spec(autoencoder_spec), "image_size": int(image_size), "dtype": dtype}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------
# Units of a source
# ---------------------------------------------------------------------------------------------------
#: bytes of a JSONL manifest's start read to estimate its bytes per line (how many byte-range units it gets)
_JSONL_PROBE = 1 << 20


def source_units(source: Any, shard_rows: int, layout: str | None = None
                 ) -> tuple[int, Callable[[int], Iterator[Any]]]:
    """``(number of units, unit -> iterator of samples)`` (see the module doc). ``layout`` (a JSONL manifest):
    ``"bytes"`` for byte-range units, ``"strided"`` for the positions ``i % units == k`` (encodes made before
    byte ranges)."""
    urls = getattr(source, "urls", None)
    if urls:
        from .._plugins import registry

        return len(urls), lambda k: iter(registry("data_sources").create("webdataset", {"url": urls[k]}))
    from ..data.sources import JsonlSource

    if isinstance(source, JsonlSource) and layout != "strided":
        size = source.size()
        n = end = 0
        for _, stop, _ in source.read_rows(0, min(size, _JSONL_PROBE), warn_duplicates=False):
            n, end = n + 1, stop
        per_line = end / n if n else max(size, 1)
        units = max(1, math.ceil(size / (max(1, int(shard_rows)) * per_line)))
        return units, lambda k: source.read_range(size * k // units, size * (k + 1) // units)
    try:
        n = len(source)
    except TypeError:
        n = None
    units = max(1, math.ceil(n / shard_rows)) if n else 1
    return units, lambda k: source.iter_samples(k, units)


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------
def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _write_atomic(fs: Any, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


_TMP_RE = re.compile(r"^(?:shard-(\d+)|(empty))\.safetensors\.tmp-[0-9a-f]{8}$")


def _remove_stale_temporaries(fs: Any, root: str, rank: int, world_size: int) -> None:
    """Delete the temporary files a killed encode left behind (``shard-K.safetensors.tmp-*``), for the units this
    rank owns (no other rank writes them now) and, on rank 0, of ``empty.safetensors``. One listing of the folder.
    The header's temporaries are left alone: another rank may be writing one right now."""
    try:
        names = [str(n).rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)]
    except (FileNotFoundError, OSError):
        return
    for name in names:
        m = _TMP_RE.match(name)
        if m is None:
            continue
        mine = (int(m.group(1)) % world_size == rank) if m.group(1) is not None else rank == 0
        if mine:
            try:
                fs.rm(_join(root, name))
                log.info("removed %s, left behind by an encode that was killed", _join(root, name))
            except FileNotFoundError:
                pass


def _read_header(fs: Any, path: str) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor shapes + ``__metadata__``) without reading the tensors."""
    with fs.open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 2**20:
            raise StoreError(f"{path}: safetensors header of {size} bytes; the file is corrupt.")
        return json.loads(f.read(size))


def _load(fs: Any, path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + size]).get("__metadata__", {})
        return load(data), meta
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt shard
        raise StoreError(f"Encoded shard {path} is corrupt ({type(exc).__name__}: {exc}); delete it and run "
                         "`miro encode` again (only missing shards are encoded).") from exc


@attrs.frozen
class EncodedHeader:
    url: str
    key: str
    units: int
    latent_shape: tuple[int, int, int]
    text_dim: int
    meta: dict[str, Any]

    def shard_name(self, k: int) -> str:
        return f"shard-{k:05d}.safetensors"


def open_encoded(url: str, *, require_complete: bool = True) -> EncodedHeader:
    fs, root = _fs(url)
    path = _join(root, "encoded.json")
    if not fs.exists(path):
        raise StoreError(f"{url} is not an encoded dataset (no encoded.json); create it with `miro encode --data SPEC "
                         f"--out {url}`.")
    meta = json.loads(fs.cat_file(path))
    if meta.get("format") != ENCODED_FORMAT or int(meta.get("version", 0)) > ENCODED_VERSION:
        raise StoreError(f"{path} is not a {ENCODED_FORMAT} v{ENCODED_VERSION} header.")
    header = EncodedHeader(url=url, key=meta["key"], units=int(meta["units"]),
                           latent_shape=tuple(meta.get("latent_shape") or (0, 0, 0)),
                           text_dim=int(meta.get("text_dim") or 0), meta=meta)
    if require_complete:
        missing = [k for k in range(header.units) if not fs.exists(_join(root, header.shard_name(k)))]
        if missing or not fs.exists(_join(root, "empty.safetensors")):
            raise StoreError(f"Encoded dataset {url} is incomplete ({len(missing)} of {header.units} shards missing, "
                             f"e.g. {header.shard_name(missing[0]) if missing else 'empty.safetensors'}); run "
                             "`miro encode` again to finish it.")
    return header


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------
def encode_dataset(source: Any, url: str, text_encoder: Any, autoencoder: Any, *, data_spec: str,
                   text_encoder_spec: Any, autoencoder_spec: Any, image_size: int, rank: int = 0,
                   world_size: int = 1, shard_rows: int = 4096, batch_size: int = 64, dtype: str = "float16",
                   device: torch.device | str = "cpu", progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Encode this rank's missing units into ``url``; returns ``{"units", "encoded", "skipped", "rows"}``."""
    from safetensors.torch import save

    from .data import preprocess_image

    if dtype not in _DTYPES:
        raise ConfigError(f"encode dtype must be one of {', '.join(_DTYPES)} (got {dtype!r}).")
    fs, root = _fs(url)
    fs.makedirs(root, exist_ok=True)
    key = encoded_key(data_spec, text_encoder_spec, autoencoder_spec, image_size, dtype)
    header_path = _join(root, "encoded.json")
    old = json.loads(fs.cat_file(header_path)) if fs.exists(header_path) else None
    from ..data.sources import JsonlSource

    layout = None
    if isinstance(source, JsonlSource):  # byte ranges, unless resuming an encode made before them
        layout = "strided" if old is not None and "layout" not in old else "bytes"
    units, unit_iter = source_units(source, shard_rows, layout)
    header = {"format": ENCODED_FORMAT, "version": ENCODED_VERSION, "key": key, "units": units, "spec": data_spec,
              "text_encoder": _spec(text_encoder_spec), "autoencoder": _spec(autoencoder_spec),
              "image_size": int(image_size), "dtype": dtype,
              "latent_shape": list(autoencoder.latent_shape(image_size)), "text_dim": int(text_encoder.dim)}
    if layout == "bytes":
        header["layout"] = layout
    if old is not None:
        if old.get("key") != key or int(old.get("units", -1)) != units:
            raise ConfigError(f"{url} holds an encoding of other data or other encoders (key {old.get('key')}, "
                              f"{old.get('units')} units; now {key}, {units} units). Use another --out, or delete it.")
    else:  # every rank may write it: the content is the same, and the write is atomic
        _write_atomic(fs, header_path, json.dumps(header, indent=2, sort_keys=True).encode())
    torch_dtype = _DTYPES[dtype]
    done = {"units": units, "encoded": 0, "skipped": 0, "rows": 0}
    _remove_stale_temporaries(fs, root, rank, world_size)
    with torch.no_grad():
        if rank == 0 and not fs.exists(_join(root, "empty.safetensors")):
            tok, msk = text_encoder.encode([""])
            _write_atomic(fs, _join(root, "empty.safetensors"), save(
                {"tokens": tok.float().cpu().contiguous(), "mask": msk.bool().cpu().contiguous()}))
        for k in range(rank, units, world_size):
            path = _join(root, f"shard-{k:05d}.safetensors")
            if fs.exists(path):
                done["skipped"] += 1
                continue
            ids, captions, lats, texts = [], [], [], []
            batch: list[Any] = []

            def flush():
                if not batch:
                    return
                imgs = torch.stack([preprocess_image(s.image, image_size) for s in batch]).to(device)
                lats.append(autoencoder.encode(imgs).float().cpu().to(torch_dtype))
                tok, msk = text_encoder.encode([s.caption for s in batch])
                for t, m in zip(tok.float().cpu(), msk.bool().cpu()):
                    texts.append(t[m].to(torch_dtype))
                ids.extend(s.id for s in batch)
                captions.extend(s.caption for s in batch)
                if progress:
                    progress(len(batch))
                batch.clear()

            for sample in unit_iter(k):
                batch.append(sample)
                if len(batch) >= batch_size:
                    flush()
            flush()
            n = len(ids)
            lengths = torch.tensor([t.shape[0] for t in texts], dtype=torch.int64)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
            c, h, w = header["latent_shape"]
            tensors = {
                "latents": torch.cat(lats) if lats else torch.zeros(0, c, h, w, dtype=torch_dtype),
                "text": torch.cat(texts) if texts else torch.zeros(0, header["text_dim"], dtype=torch_dtype),
                "offsets": offsets,
            }
            meta = {"ids": json.dumps(ids), "captions": json.dumps(captions), "rows": str(n), "unit": str(k)}
            _write_atomic(fs, path, save({k2: v.contiguous() for k2, v in tensors.items()}, metadata=meta))
            done["encoded"] += 1
            done["rows"] += n
    return done


# ---------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------
class StreamingData:
    """A rank's stream of ``(latent, text tokens, levels)`` samples from an encoded dataset (module doc)."""

    def __init__(self, header: EncodedHeader, *, store: Any = None, rewards: Sequence[str] = (), binner: str = "",
                 seed: int = 0, rank: int = 0, world_size: int = 1, buffer_shards: int = 4):
        fs, root = _fs(header.url)
        self.fs, self.root, self.header = fs, root, header
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.buffer_shards = max(1, int(buffer_shards))
        if header.units < world_size:
            raise ConfigError(f"Encoded dataset {header.url} has {header.units} shards for {world_size} ranks; every "
                              "rank needs at least one: encode with a smaller shard_rows.")
        #: the shards this rank owns (the same every epoch; the ranks' shards partition the data set)
        self.own = list(range(self.rank, header.units, self.world_size))
        self.rewards = tuple(rewards)
        self.levels_table: np.ndarray | None = None
        self.index: IdIndex | None = None
        if self.rewards:
            if store is None:
                raise ConfigError("Streaming with rewards needs the reward store (data.store).")
            self.levels_table = np.asarray(store.levels(list(self.rewards), binner), dtype=np.float32)
            # a RewardStore hashes its ids chunk by chunk (16 bytes a row, no list of every id)
            self.index = (store.row_index() if hasattr(store, "row_index")
                          else IdIndex.of_ids([str(x) for x in np.asarray(store.ids()).tolist()]))
        # kept rows per own shard, from the shard headers alone (ids are in the metadata)
        self.kept: dict[int, np.ndarray] = {}
        self.skipped_not_in_store = 0
        for k in self.own:
            ids = json.loads(_read_header(fs, _join(root, header.shard_name(k)))["__metadata__"]["ids"])
            keep = np.ones(len(ids), dtype=bool) if self.index is None else self.index.rows_of(ids) >= 0
            if not keep.all():
                missing = int((~keep).sum())
                self.skipped_not_in_store += missing
                log.warning("%d samples of encoded shard %d are not in the reward store: skipped", missing, k)
            self.kept[k] = keep
        self.epoch_size = int(sum(int(v.sum()) for v in self.kept.values()))
        if self.epoch_size == 0:
            raise StoreError(f"Encoded dataset {header.url}: the shards of rank {self.rank} hold no sample that is in "
                             "the reward store.")
        e = _load(fs, _join(root, "empty.safetensors"))[0]
        self.empty_tokens, self.empty_mask = e["tokens"].float(), e["mask"].bool()
        self._group_key: tuple[int, int] | None = None
        self._group: dict[str, Any] | None = None

    # -- the order -------------------------------------------------------------------------------------
    def _gen(self, *parts: int) -> torch.Generator:
        h = self.seed
        for p in (self.rank, *parts):
            h = (h * 1_000_003 + p + 0x9E3779B9) & 0x7FFFFFFFFFFF
        return torch.Generator().manual_seed(h)

    def epoch_shards(self, epoch: int) -> list[int]:
        """This rank's shards in the order of ``epoch``."""
        perm = torch.randperm(len(self.own), generator=self._gen(epoch)).tolist()
        return [self.own[i] for i in perm]

    def _groups(self, epoch: int) -> list[list[int]]:
        shards = self.epoch_shards(epoch)
        return [shards[i:i + self.buffer_shards] for i in range(0, len(shards), self.buffer_shards)]

    def _load_group(self, epoch: int, gi: int) -> dict[str, Any]:
        if self._group_key == (epoch, gi):
            return self._group  # type: ignore[return-value]
        lat, texts, ids, caps, lv = [], [], [], [], []
        for k in self._groups(epoch)[gi]:
            t, meta = _load(self.fs, _join(self.root, self.header.shard_name(k)))
            sid, cap = json.loads(meta["ids"]), json.loads(meta["captions"])
            idx = np.nonzero(self.kept[k])[0]
            off = t["offsets"].tolist()
            if self.index is not None:
                lv.append(self.levels_table[self.index.rows_of([sid[i] for i in idx])])
            lat.append(t["latents"][torch.from_numpy(idx)])
            texts.extend(t["text"][off[i]:off[i + 1]] for i in idx)
            ids.extend(sid[i] for i in idx)
            caps.extend(cap[i] for i in idx)
        n = len(ids)
        perm = torch.randperm(n, generator=self._gen(epoch, gi + 1)).tolist()
        levels = torch.from_numpy(np.concatenate(lv)) if lv else torch.zeros(n, 0)
        group = {"latents": torch.cat(lat)[perm], "texts": [texts[i] for i in perm], "ids": [ids[i] for i in perm],
                 "captions": [caps[i] for i in perm], "levels": levels[perm], "n": n}
        self._group_key, self._group = (epoch, gi), group
        return group

    def _group_sizes(self, epoch: int) -> list[int]:
        return [sum(int(self.kept[k].sum()) for k in grp) for grp in self._groups(epoch)]

    def take(self, start: int, count: int) -> dict[str, Any]:
        """Samples ``[start, start + count)`` of this rank's stream (epochs concatenated), padded as one batch."""
        out: dict[str, list] = {"latents": [], "texts": [], "ids": [], "captions": [], "levels": []}
        pos, need = int(start), int(count)
        while need > 0:
            epoch, within = divmod(pos, self.epoch_size)
            sizes = self._group_sizes(epoch)
            gi, acc = 0, 0
            while within >= acc + sizes[gi]:
                acc += sizes[gi]
                gi += 1
            grp = self._load_group(epoch, gi)
            lo = within - acc
            hi = min(grp["n"], lo + need)
            for key in ("latents", "levels"):
                out[key].append(grp[key][lo:hi])
            for key in ("texts", "ids", "captions"):
                out[key].extend(grp[key][lo:hi])
            pos += hi - lo
            need -= hi - lo
        tokens, mask = _pad_texts(out["texts"], self.header.text_dim)
        return {"latents": torch.cat(out["latents"]).float(), "tokens": tokens, "mask": mask,
                "levels": torch.cat(out["levels"]).float(), "ids": out["ids"], "captions": out["captions"]}


def _pad_texts(texts: list[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max([t.shape[0] for t in texts] + [1])
    tokens = torch.zeros(len(texts), length, dim)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, t in enumerate(texts):
        tokens[i, : t.shape[0]] = t.float()
        mask[i, : t.shape[0]] = True
    return tokens, mask


# ---------------------------------------------------------------------------------------------------
# The training side: encode what is missing, then stream
# ---------------------------------------------------------------------------------------------------
@attrs.define
class StreamInfo:
    """What the training loop needs to know of a streamed data set (the in-memory ``TrainingData`` has the same
    fields)."""

    stream: StreamingData
    reward_names: tuple[str, ...]
    binner_states: dict[str, Any]
    latent_shape: tuple[int, int, int]
    text_dim: int
    image_size: int
    captions: list[str]
    cache_path: str
    num_samples: int

    def __len__(self) -> int:
        return self.num_samples


def wait_complete(url: str, poll_s: float = 2.0, timeout_s: float | None = None) -> EncodedHeader:
    """Poll until every shard of ``url`` exists (no collective: the other ranks may encode for hours)."""
    import time

    t0 = time.monotonic()
    logged = False
    while True:
        try:
            return open_encoded(url)
        except StoreError:
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise
            if not logged:
                log.info("waiting for the other ranks to finish encoding %s", url)
                logged = True
            time.sleep(poll_s)


def prepare_stream(cfg: Any, text_encoder: Any, autoencoder: Any, *, text_encoder_spec: Any, autoencoder_spec: Any,
                   source: Any = None, store: Any = None, device: torch.device | str = "cpu", rank: int = 0,
                   world_size: int = 1, seed: int = 0, progress: Callable[[int], None] | None = None) -> StreamInfo:
    """Encode the missing shards of ``cfg.encoded`` (this rank's share), wait for the others, open the stream."""
    from .data import resolve_rewards

    if source is None:
        from ..data import resolve_data

        source = resolve_data(cfg.spec)
    if store is None and cfg.store:
        from ..store import RewardStore

        store = RewardStore.open(cfg.store)
    rewards = resolve_rewards(cfg, store)
    res = encode_dataset(source, cfg.encoded, text_encoder, autoencoder, data_spec=cfg.spec,
                         text_encoder_spec=text_encoder_spec, autoencoder_spec=autoencoder_spec,
                         image_size=cfg.image_size, rank=rank, world_size=world_size, shard_rows=cfg.shard_rows,
                         batch_size=cfg.encode_batch_size, dtype=cfg.encode_dtype, device=device, progress=progress)
    if res["encoded"]:
        log.info("encoded %d shards (%d rows) into %s; %d were already there", res["encoded"], res["rows"],
                 cfg.encoded, res["skipped"])
    header = wait_complete(cfg.encoded)
    stream = StreamingData(header, store=store, rewards=rewards, binner=cfg.binner, seed=seed, rank=rank,
                           world_size=world_size, buffer_shards=cfg.buffer_shards)
    first = json.loads(_read_header(stream.fs, _join(stream.root, header.shard_name(stream.own[0])))
                       ["__metadata__"]["captions"])[:8]
    states = {r: store.bin_state(cfg.binner, r) for r in rewards}
    if stream.skipped_not_in_store:
        log.warning("%d samples of this rank's shards are not in the reward store and are skipped",
                    stream.skipped_not_in_store)
    return StreamInfo(stream=stream, reward_names=tuple(rewards), binner_states=states,
                      latent_shape=tuple(header.latent_shape), text_dim=header.text_dim, image_size=cfg.image_size,
                      captions=first, cache_path=cfg.encoded, num_samples=stream.epoch_size)
