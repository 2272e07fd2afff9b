"""The scoring pipeline: stream a data source through reward models into a :class:`~miro_core.store.RewardStore`.

Design (documented in ``docs/scoring.md``):

* Rows first, reading ids and captions only. The source is cut into pieces
  (:mod:`miro_core.data.parts`): a webdataset source by shard (rank ``r`` of ``W`` reads the shards
  ``k % W == r``, as webdataset's ``split_by_node`` does), an image folder / JSONL manifest / indexable source by
  contiguous slice. Every rank reads the ids and captions of its own pieces (no image is decoded; a local shard
  is read header by header, seeking over the images), in parallel; rank 0 gathers them, creates the store or
  appends the new ids in the source's own order (the same rows whatever the number of ranks), creates/checks
  every reward column (a version/config mismatch fails before any work) and sends each rank the rows of its
  pieces. Collectives use the long process-group timeout of :mod:`miro_core.distributed`.
* Then scoring touches only pending rows: a row is pending for a reward while its ``done/<reward>`` code is 0.
  Adding a reward to a scored store therefore scores only that reward; a killed job resumes where it stopped.
* All rewards of one job are set up once and each decoded batch goes through all of them (images are decoded
  once). To keep one heavy model in memory at a time, run ``miro score`` once per reward: each run scores
  only the rewards that are missing.
* Images are decoded and collated in ``workers`` DataLoader worker processes (``None``: :func:`auto_workers`;
  ``0``: in the main process); worker ``w`` reads only its share of the rank's pieces (its own shards, as
  webdataset's ``split_by_worker``, or its own contiguous sub-slice), skips pieces with nothing pending, builds
  whole batches grouped by image size since rewards take ``[B, 3, H, W]``; the main process only runs the
  rewards (vectorised bookkeeping) and writes chunks.
* Results are buffered per store chunk and written when the chunk's pending rows are all scored: scores and
  failure reasons first, the done codes last, whole chunks only. A chunk whose rows come from pieces of several
  ranks is written under the store's chunk lock (re-reading the rows this rank did not score); a store without
  locks (not a local path) has those shared chunks written at the end, one rank after the other.
* Per-sample failures (undecodable image, exception inside the reward, NaN/inf score; for rewards that use
  text also an empty or non-UTF-8 caption) are isolated by retrying a failing batch one sample at a time and
  recorded with their reason; the job goes on. Samples that cannot get a row (a repeated id, an id with a
  NUL byte or control character) are recorded in the store's ``rejected`` attrs (``miro store info``).
* The broken-reward guard: a reward that fails on each of the first ``guard_samples`` (default 8) samples it
  is given, whatever the batch size, raises before anything of the job is written (a broken reward must not
  mark a dataset "failed"). ``retry_failed`` rescores the rows recorded as failed (and only those, with the
  pending ones) once the cause is fixed.
* Concurrency (local stores): each job claims the rows it scores; a second job on the same rows of a reward
  is refused, jobs on disjoint rows (shards of the data) run side by side, chunk writes are serialised.
"""

from __future__ import annotations

__all__ = ["score_dataset", "DecodedBatches", "auto_workers"]

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._errors import MiroError
from .interfaces import DataSource, Reward

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# streaming + decoding (runs in the DataLoader worker processes)
# ---------------------------------------------------------------------------------------------------
class DecodedBatches(torch.utils.data.IterableDataset):
    """This rank's wanted samples, decoded and collated into batches, each worker reading only its own pieces.

    ``parts`` (:class:`~miro_core.data.parts.SourceParts`) and ``pieces`` (this rank's share of the source) say
    what this rank reads; ``rows[i]`` is the store row of each position of ``pieces[i]`` (-1: no row, e.g. a
    repeated id or past ``limit``), as the ids pass found them. DataLoader worker ``w`` of ``n`` reads only its
    share of the pieces (:meth:`SourceParts.worker_pieces`: its own shards, or its own contiguous slice); a
    piece without a wanted row is not opened. A batch holds ``batch_size`` consecutive wanted samples of one
    worker and arrives ready to score: ``rows`` (int64 array), ``captions``, ``short_captions``, ``errors``
    (``{position: reason}`` of undecodable images) and ``groups``: ``[(positions, float32 [b, 3, H, W])]`` per
    image size. With ``keep_uint8``, ``groups_u8`` holds, per group, the decoded 8-bit images as uint8
    ``[b, 3, H, W]`` (None for a group with float inputs): rewards with ``accepts_uint8`` get those bytes
    instead of a float round trip.
    """

    def __init__(self, parts, pieces: list, rows: list[np.ndarray], wanted: np.ndarray, batch_size: int,
                 keep_uint8: bool = False):
        super().__init__()
        if len(pieces) != len(rows):
            raise ValueError(f"{len(pieces)} pieces but {len(rows)} row arrays")
        self.parts, self.pieces, self.rows = parts, list(pieces), list(rows)
        self.wanted = np.asarray(wanted, bool)
        self.batch_size = batch_size
        self.keep_uint8 = keep_uint8

    def worker_share(self, worker: int, num_workers: int) -> list[tuple[tuple, np.ndarray]]:
        """``[(piece, rows of its positions)]`` that DataLoader worker ``worker`` of ``num_workers`` reads."""
        if self.parts.kind != "slices":
            return list(zip(self.pieces, self.rows))[worker::num_workers]
        out = []
        for (unit, lo, hi), r in zip(self.pieces, self.rows):
            for sub in self.parts.worker_pieces([(unit, lo, hi)], worker, num_workers):
                out.append((sub, r[sub[1] - lo:sub[2] - lo]))
        return out

    def _batches_of_items(self):
        """Lists of ``(row, sample)`` per batch of this worker."""
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        bs, wanted, n_rows = self.batch_size, self.wanted, self.wanted.shape[0]
        buf = []
        for piece, rows in self.worker_share(wid, nw):
            keep = (rows >= 0) & (rows < n_rows)
            keep[keep] = wanted[rows[keep]]
            if not keep.any():
                continue  # nothing of this piece is wanted: it is not even opened
            last = int(np.flatnonzero(keep)[-1])  # the rest of the piece is not read
            n = 0
            for j, sample in self.parts.samples(piece, keep if self.parts.kind == "slices" else None):
                n = j + 1
                if j >= rows.shape[0]:
                    raise MiroError(_changed(piece, self.parts, rows.shape[0], "more"))
                if keep[j]:
                    buf.append((int(rows[j]), sample))
                    if len(buf) == bs:
                        yield buf
                        buf = []
                if j == last:
                    break
            if n <= last:
                raise MiroError(_changed(piece, self.parts, rows.shape[0], f"only {n}"))
        if buf:
            yield buf

    @staticmethod
    def _batch(items, keep_uint8: bool = False) -> dict[str, Any]:
        from .data._decode import decode_raw, image_size, stack_images

        errors: dict[int, str] = {}
        text_errors: dict[int, str] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        raws: list[Any] = [None] * len(items)
        for i, (_, s) in enumerate(items):
            why = _caption_problem(s)
            if why:
                text_errors[i] = why
            try:
                raw = decode_raw(s.image)
                raws[i] = raw
                groups.setdefault(image_size(raw), []).append(i)
            except Exception as exc:  # noqa: BLE001 - any decode problem is a per-sample failure
                errors[i] = f"image decode failed: {type(exc).__name__}: {exc}"
        out = {
            "rows": np.fromiter((r for r, _ in items), dtype=np.int64, count=len(items)),
            "captions": [s.caption or "" for _, s in items],
            "short_captions": [s.short_caption for _, s in items],
            "errors": errors,
            "text_errors": text_errors,
            "groups": [(np.asarray(idx, dtype=np.int64), stack_images([raws[i] for i in idx]))
                       for idx in groups.values()],
        }
        if keep_uint8:
            out["groups_u8"] = [_stack_uint8([raws[i] for i in idx]) for idx in groups.values()]
        return out

    def __iter__(self):
        for items in self._batches_of_items():
            yield self._batch(items, self.keep_uint8)


def _changed(piece, parts, expected: int, got: str) -> str:
    where = parts.source.urls[piece[0]] if parts.kind == "shards" else f"positions {piece[1]}..{piece[2]}"
    return (f"Data source {where}: {got} samples where the ids pass of this job found {expected}; the data changed "
            "while it was being scored. Make the data read-only during `miro score` and rerun (it resumes).")


def _caption_problem(sample) -> str | None:
    """Why a text-using reward cannot score ``sample``'s caption (None when it can)."""
    meta = getattr(sample, "meta", None) or {}
    if meta.get("caption_error"):
        return f"caption unusable: {meta['caption_error']}"
    if not _encodable(str(sample.caption or "")):
        return "caption unusable: not valid Unicode (it holds a lone surrogate, e.g. from undecodable bytes)"
    if not str(sample.caption or "").strip():
        return "caption unusable: empty caption (a reward that reads text cannot score it)"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _store_text(text: str | None) -> str | None:
    """Text as the store can hold it (UTF-8): lone surrogates become U+FFFD."""
    if text is None or _encodable(text):
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _id_problem(sample_id: str) -> str | None:
    """Why a sample id cannot be a store row (None when it can)."""
    if sample_id == "":
        return "unusable id: empty"
    if not _encodable(sample_id):
        return "unusable id: not valid Unicode (a lone surrogate, e.g. a file name that is not UTF-8)"
    if "\x00" in sample_id:
        return "unusable id: contains a NUL byte"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in sample_id):
        return "unusable id: contains a control character"
    if len(sample_id) > 4096:
        return f"unusable id: {len(sample_id)} characters (the limit is 4096)"
    return None


def _stack_uint8(raws: list) -> torch.Tensor | None:
    """Same-size decoded uint8 ``[H, W, 3]`` images -> uint8 ``[b, 3, H, W]``; None if any input was float."""
    if not all(isinstance(r, np.ndarray) for r in raws):
        return None
    h, w = raws[0].shape[:2]
    u8 = np.empty((len(raws), 3, h, w), np.uint8)
    for i, r in enumerate(raws):
        u8[i] = r.transpose(2, 0, 1)
    return torch.from_numpy(u8)


def _identity(x):
    return x


def _cpus_per_rank() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def reward_threads(device: str | torch.device, workers: int) -> int | None:
    """Intra-op threads for the rewards of a CPU job: this rank's cores minus the decode workers' (at least 1);
    None on an accelerator. More threads than free cores make torch's thread pool wait on busy cores (measured
    6x slower on 2 busy cores, docs/benchmarks.md)."""
    if torch.device(device).type != "cpu":
        return None
    return max(1, _cpus_per_rank() - max(0, int(workers)))


def auto_workers(device: str | torch.device = "cpu") -> int:
    """Decode workers per rank when ``workers`` is not given: one core per rank stays with the reward, the
    rest (at most 2 on CPU, where the reward needs the cores itself, and 8 on an accelerator) decode."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    cap = 2 if torch.device(device).type == "cpu" else 8
    return max(0, min(cap, cpus // local - 1))


# ---------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------
def _normalise_rewards(rewards) -> dict[str, dict[str, Any]]:
    if isinstance(rewards, str):
        from ._reward_list import parse_reward_list

        rewards = list(parse_reward_list(rewards))
    if isinstance(rewards, Mapping):
        out = {str(k): dict(v or {}) for k, v in rewards.items()}
    else:
        out = {}
        for r in rewards:
            if r in out:
                raise MiroError(f"Reward {r!r} is listed twice; list each reward once.")
            out[str(r)] = {}
    if not out:
        raise MiroError("No rewards to score; pass at least one reward name (see `miro plugins --kind rewards`).")
    return out


def _reward_provenance(reward: Reward) -> dict[str, Any]:
    from ._plugins import registry

    reg = registry("rewards").get(reward.name)
    meta = dict(reward.metadata())
    meta.setdefault("version", reward.version)
    meta.setdefault("config", reward.config_dict())
    meta.update(
        {
            "distribution": reg.distribution,
            "distribution_version": reg.version,
            "plugin": reg.plugin,
            "class": f"{type(reward).__module__}.{type(reward).__qualname__}",
            "uses_text": bool(reward.uses_text),
            "max_text_tokens": reward.max_text_tokens,
        }
    )
    return meta


#: rows / text bytes per block of the store-preparation passes (spool writes, store writes)
_PREP_BLOCK = 4096
_PREP_BYTES = 1 << 20
_REJECT_EXAMPLES = 20


def _spool_base(store_url: str):
    """``(filesystem, folder)`` holding every job's ids-pass spool: ``<store>/.miro-spool``."""
    import fsspec

    from .store import local_path

    lp = local_path(store_url)
    if lp is not None:
        return fsspec.filesystem("file"), os.path.join(lp, ".miro-spool")
    fs, root = fsspec.core.url_to_fs(store_url)
    return fs, root.rstrip("/") + "/.miro-spool"


def _spool(store_url: str, job: str):
    """``(filesystem, folder)`` of one job's ids-pass spool: ``<store>/.miro-spool/<job>/`` (plain files, not
    zarr nodes; ``job`` is a random token rank 0 draws, so concurrent jobs on one store do not meet)."""
    fs, base = _spool_base(store_url)
    return fs, f"{base}/{job}"


def _remove_spool(store_url: str, job: str) -> None:
    fs, root = _spool(store_url, job)
    parent = _spool_base(store_url)[1]
    try:
        if fs.exists(root):
            fs.rm(root, recursive=True)
        if fs.exists(parent) and not fs.ls(parent):
            fs.rm(parent, recursive=True)
    except OSError:  # pragma: no cover - best effort
        log.debug("could not remove the spool %s", root)


#: a job's spool untouched for this long belongs to a job that was killed (a live one writes or is read within
#: minutes): the next job on the store removes it
SPOOL_STALE_S = 6 * 3600


def _sweep_stale_spools(store_url: str, older_than_s: float = SPOOL_STALE_S, now: float | None = None) -> list[str]:
    """Remove the spools of killed jobs (``.miro-spool/<job>/`` whose newest file is older than ``older_than_s``);
    returns the removed job tokens. Best effort: a listing or removal error only logs."""
    fs, base = _spool_base(store_url)
    now = time.time() if now is None else now
    removed = []
    try:
        if not fs.exists(base):
            return removed
        for d in fs.ls(base, detail=True):
            if d.get("type") != "directory":
                continue
            stamps = [_mtime(e) for e in fs.ls(d["name"], detail=True)] or [_mtime(d)]
            if now - max(stamps) > older_than_s:
                fs.rm(d["name"], recursive=True)
                removed.append(d["name"].rstrip("/").rsplit("/", 1)[-1])
    except OSError as exc:  # pragma: no cover - best effort
        log.debug("could not sweep the spools under %s: %s", base, exc)
    if removed:
        log.warning("removed %d ids-pass spool(s) of killed jobs from %s (untouched for over %.0f h): %s",
                    len(removed), base, older_than_s / 3600, ", ".join(removed))
    return removed


def _mtime(entry: dict) -> float:
    t = entry.get("mtime", entry.get("LastModified", entry.get("updated", 0.0)))
    if hasattr(t, "timestamp"):
        return float(t.timestamp())
    try:
        return float(t)
    except (TypeError, ValueError):  # an unparsable stamp counts as fresh: never remove what we cannot date
        return time.time()


def _discard_spool(store_url: str, job: str) -> None:
    """Remove the spool after a failed ids pass, and the store folder too if the spool was all it held."""
    from .store import local_path

    _remove_spool(store_url, job)
    lp = local_path(store_url)
    try:
        if lp is not None and os.path.isdir(lp) and not os.listdir(lp):
            os.rmdir(lp)
    except OSError:  # pragma: no cover - best effort
        pass


def _spool_file(fs, root: str, rank: int) -> str:
    return f"{root}/r{int(rank)}.jsonl"


def _read_texts(parts, pieces, limit: int | None, store_url: str, job: str, rank: int) -> dict[str, Any]:
    """This rank's ids pass over its pieces: no image is decoded (or, for local shards, read).

    The ids and captions go, one JSON line per sample, to this rank's spool file in the store folder (rank 0
    copies the new rows from there, block by block); what comes back is small: per piece the number of samples,
    the 64-bit hash of each id and which ids are unusable, plus the first unusable ids as examples. With
    ``limit`` (one process, or a source cut into slices) it stops after ``limit`` samples."""
    from .store import hash_ids

    from .store import _to_store

    _to_store(store_url, "w")  # a clear error for an unwritable --store location, before any data is read
    fs, root = _spool(store_url, job)
    try:
        fs.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise MiroError(f"Cannot write the ids-pass spool {root} in the store location: {exc}. Pass a writable "
                        "--store location.") from exc
    path = _spool_file(fs, root, rank)
    out, examples = [], []
    have_short = False
    n = 0
    with fs.open(path + ".tmp", "wb") as f:
        for piece in pieces:
            ids, bad, hashes, count = [], bytearray(), [], 0  # ids of the current block only: hashed per block
            if limit is None or n < limit:
                lines, nbytes = [], 0
                for s in parts.texts(piece):
                    sid = str(s.id)
                    short = _store_text(s.short_caption)
                    have_short = have_short or short is not None
                    why = _id_problem(sid)
                    if why is not None and len(examples) < _REJECT_EXAMPLES:
                        examples.append((len(out), count, sid, why))
                    bad.append(why is not None)  # 1 byte a sample
                    ids.append(sid if why is None else "")
                    lines.append(json.dumps([sid, _store_text(s.caption or ""), short]))
                    nbytes += len(lines[-1])
                    n += 1
                    count += 1
                    if len(lines) >= _PREP_BLOCK or nbytes >= _PREP_BYTES:
                        f.write(("\n".join(lines) + "\n").encode("ascii"))
                        hashes.append(hash_ids(ids))
                        lines, ids, nbytes = [], [], 0
                    if limit is not None and n >= limit:
                        break
                if lines:
                    f.write(("\n".join(lines) + "\n").encode("ascii"))
                    hashes.append(hash_ids(ids))
            out.append((count, np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
                        np.frombuffer(bytes(bad), dtype=np.uint8).astype(bool)))
    fs.mv(path + ".tmp", path)
    problems = [(str(w), str(y)) for w, y in list(getattr(parts.source, "problems", None) or [])]
    return {"pieces": out, "problems": problems, "examples": examples, "short": have_short}


def _global_order(parts, shares: list[list], texts: list[dict]) -> list[tuple[int, int]]:
    """``(rank, piece index)`` in the source's own order (shards 0..n-1; slices in rank order)."""
    order = [(r, i) for r, pieces in enumerate(shares) for i in range(len(pieces))]
    if parts.kind == "shards":
        order.sort(key=lambda ri: shares[ri[0]][ri[1]][0])
    return order


class _SpoolReader:
    """Rank 0's sequential read of the ranks' spool files in the source's order (one open file per rank)."""

    def __init__(self, store_url: str, job: str, order: list[tuple[int, int]], lengths: dict[tuple[int, int], int]):
        self.store_url, self.job = store_url, job
        self.fs, self.root = _spool(store_url, job)
        self.order, self.lengths = order, lengths

    def lines(self, limit_total: int):
        """``(global position, [id, caption, short])`` for the first ``limit_total`` positions."""
        files: dict[int, Any] = {}
        last: dict[int, int] = {}
        pos = 0
        try:
            for r, i in self.order:
                if last.get(r, -1) > i:
                    raise MiroError("internal: spool pieces out of order")  # pragma: no cover - order is sorted
                last[r] = i
                n = self.lengths[(r, i)]
                if n == 0 or pos >= limit_total:
                    pos += n
                    continue
                f = files.get(r)
                if f is None:
                    f = files[r] = self.fs.open(_spool_file(self.fs, self.root, r), "rb")
                for _ in range(n):
                    line = f.readline()
                    if not line:
                        raise MiroError(f"The ids-pass spool of rank {r} ({self.root}) ends early; rerun the job.")
                    if pos < limit_total:
                        yield pos, json.loads(line)
                    pos += 1
        finally:
            for f in files.values():
                f.close()

    def remove(self) -> None:
        _remove_spool(self.store_url, self.job)


def _prepare_store(store_url, job, parts, shares, texts, rewards, limit, chunk_rows, job_config):
    """Rank 0: create/extend the rows (in the source's order), create/check the reward columns, record the job.

    ``shares[r]``: the pieces of rank ``r``; ``texts[r]``: its ids pass (:func:`_read_texts`). Memory: about 40
    bytes per sample (hashes, flags, rows) and one block of ids and captions; the new rows are copied from the
    ranks' spool files into the store block by block. Returns the store and, per rank, the store row of each
    position of each of its pieces (-1: no row)."""
    from .store import DEFAULT_CHUNK_ROWS, IdIndex, RewardStore

    order = _global_order(parts, shares, texts)
    lengths = {(r, i): texts[r]["pieces"][i][0] for r, i in order}
    offsets: dict[tuple[int, int], int] = {}
    total = 0
    for ri in order:
        offsets[ri] = total
        total += lengths[ri]
    n_seen = total if limit is None else min(total, int(limit))
    h = np.empty(total, dtype=np.uint64)
    bad = np.zeros(total, dtype=bool)
    for ri in order:
        n, hh, bb = texts[ri[0]]["pieces"][ri[1]]
        h[offsets[ri]: offsets[ri] + n], bad[offsets[ri]: offsets[ri] + n] = hh, bb
    h, bad = h[:n_seen], bad[:n_seen]
    reader = _SpoolReader(store_url, job, order, lengths)

    # unusable ids (examples from the ranks, in the source's order) and duplicates (the first one is kept)
    valid = np.flatnonzero(~bad)
    _, first_idx = np.unique(h[valid], return_index=True)
    is_first = np.zeros(len(valid), dtype=bool)
    is_first[first_idx] = True
    del first_idx
    cand = valid[is_first]  # positions that get a row, in the source's order
    dup_pos = valid[~is_first]
    if dup_pos.size:  # the position of the first sample with each repeated id
        kept = IdIndex(h[cand], cand)
        dup_first = kept.rows_of_hashes(h[dup_pos])
        del kept
    del valid, is_first
    examples: list[tuple[int, str, str]] = []
    for r, t in enumerate(texts):
        for i, j, sid, why in t["examples"]:
            if offsets[(r, i)] + j < n_seen:
                examples.append((offsets[(r, i)] + j, sid, why))
    if dup_pos.size:  # read the duplicated ids back: example messages, and a 64-bit hash clash is caught here
        first_of = dict(zip(dup_pos.tolist(), dup_first.tolist()))
        wanted = set(first_of) | set(first_of.values())
        seen_id: dict[int, str] = {}
        n_dup_examples = 0
        for pos, (sid, _, _) in reader.lines(n_seen):
            if pos not in wanted:
                continue
            seen_id[pos] = sid
            f = first_of.get(pos)
            if f is None:
                continue
            if seen_id[f] != sid:
                raise MiroError(f"Sample ids {seen_id[f]!r} and {sid!r} share a 64-bit hash; rename one of them.")
            if n_dup_examples < _REJECT_EXAMPLES:
                n_dup_examples += 1
                examples.append((pos, sid, f"duplicate id: sample {pos} of the data repeats the id of sample {f} "
                                 "(the first is kept)"))
    n_rejected = int(bad.sum()) + int(dup_pos.size)
    if not cand.size:
        if n_seen:
            first = min(examples)[2] if examples else "unusable id"
            raise MiroError(f"None of the {n_seen} samples of the data source has a usable id (first problem: "
                            f"{first}); fix the ids of the data.")
        raise MiroError("The data source yielded no samples; check the --data spec (and --limit).")
    examples.sort()
    by_reason: dict[str, int] = {}
    if bad.any():
        by_reason["unusable id"] = int(bad.sum())
    if dup_pos.size:
        by_reason["duplicate id"] = int(dup_pos.size)
    src_problems = [tuple(p) for t in texts for p in t["problems"]]  # e.g. a truncated webdataset shard
    for _, why in src_problems:
        kind = why.split(":", 1)[0]
        by_reason[kind] = by_reason.get(kind, 0) + 1
    rejected_examples = [(sid, why) for _, sid, why in examples] + src_problems
    if n_rejected or src_problems:
        log.warning("%d samples get no row in the store (%s, ...); they are recorded as rejected (`miro store "
                    "info` counts them)", n_rejected + len(src_problems), rejected_examples[0][1])

    def read_new(mask: np.ndarray):
        want = np.zeros(n_seen, dtype=bool)
        want[cand[mask]] = True
        ids, caps, shorts, nbytes = [], [], [], 0
        for pos, (sid, cap, short) in reader.lines(n_seen):
            if want[pos]:
                ids.append(sid)
                caps.append(cap)
                shorts.append(short)
                nbytes += len(sid) + len(cap) + len(short or "")
                if len(ids) >= _PREP_BLOCK or nbytes >= _PREP_BYTES:
                    yield ids, caps, shorts
                    ids, caps, shorts, nbytes = [], [], [], 0
        if ids:
            yield ids, caps, shorts

    have_short = any(t["short"] for t in texts)
    store, cand_rows = RewardStore.open_or_create_rows(
        store_url, h[cand], read_new, with_captions=True, with_short=have_short,
        chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS, config=job_config)
    reader.remove()
    for name, reward in rewards.items():
        store.ensure_reward(name, _reward_provenance(reward))
    store.record_rejected_summary(str(job_config.get("data", "")), n_rejected + len(src_problems), by_reason,
                                  rejected_examples)
    store.add_history({**job_config, "rejected": n_rejected + len(src_problems),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    row_of = np.full(total, -1, dtype=np.int64)
    row_of[cand] = cand_rows
    out = []
    for r, pieces in enumerate(shares):
        out.append([row_of[offsets[(r, i)]: offsets[(r, i)] + lengths[(r, i)]].copy() for i in range(len(pieces))])
    return store, out


class _PromptPicker:
    """Chooses the prompt (caption / short caption) and the done code of a sample for one reward.

    ``text_fits`` (a tokenisation) runs only for rewards that use text and override it, once per distinct
    caption (a bounded cache: datasets repeat captions)."""

    _CACHE = 1 << 16

    def __init__(self, reward: Reward):
        from .store import STATUS

        self.reward = reward
        self.checks = bool(reward.uses_text) and type(reward).text_fits is not Reward.text_fits
        self.codes = (STATUS["scored"], STATUS["short_caption"], STATUS["truncated"])
        self.cache: dict[str, bool] = {}

    def fits(self, caption: str) -> bool:
        ok = self.cache.get(caption)
        if ok is None:
            ok = bool(self.reward.text_fits(caption))
            if len(self.cache) >= self._CACHE:
                self.cache.clear()
            self.cache[caption] = ok
        return ok

    def pick(self, captions: Sequence[str], shorts: Sequence[str | None], members) -> tuple[list[str], np.ndarray]:
        scored, short_code, truncated = self.codes
        if not self.checks:
            return [captions[i] for i in members], np.full(len(members), scored, np.uint8)
        prompts, codes = [], np.empty(len(members), np.uint8)
        for j, i in enumerate(members):
            cap = captions[i]
            if self.fits(cap):
                prompts.append(cap)
                codes[j] = scored
            elif shorts[i]:
                prompts.append(shorts[i])
                codes[j] = short_code
            else:
                prompts.append(cap)
                codes[j] = truncated
        return prompts, codes


def _pick_prompt(reward: Reward, caption: str, short: str | None) -> tuple[str, int]:
    """The prompt and done code of one sample (see :class:`_PromptPicker`, which the pipeline uses)."""
    prompts, codes = _PromptPicker(reward).pick([caption], [short], [0])
    return prompts[0], int(codes[0])


def _score_group(reward: Reward, images: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Scores of one same-size group; a failing batch is retried per sample to isolate the culprit."""

    def run(imgs, ps):
        with torch.inference_mode():
            out = reward.score(imgs, ps)
        out = torch.as_tensor(out).detach().reshape(-1).to("cpu", torch.float32).numpy()
        if out.shape[0] != len(ps):
            raise ValueError(f"reward returned {out.shape[0]} scores for {len(ps)} samples")
        return out

    n = len(prompts)
    try:
        values = run(images, prompts)
        reasons = [""] * n
    except Exception as batch_exc:  # noqa: BLE001 - isolate per sample
        if n == 1:
            return np.array([np.nan], np.float32), [f"reward raised {type(batch_exc).__name__}: {batch_exc}"]
        values = np.full(n, np.nan, np.float32)
        reasons = [""] * n
        for i in range(n):
            try:
                values[i] = run(images[i : i + 1], prompts[i : i + 1])[0]
            except Exception as exc:  # noqa: BLE001
                reasons[i] = f"reward raised {type(exc).__name__}: {exc}"
    bad = ~np.isfinite(values)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            if not reasons[i]:
                reasons[i] = f"non-finite score ({values[i]})"
    return values.astype(np.float32, copy=False), reasons


class _ChunkBuffer:
    """Results of one store chunk until all the rows this job wants from it have been scored."""

    def __init__(self, start: int, end: int, rewards: Sequence[str], pending: dict[str, np.ndarray]):
        n = end - start
        self.start, self.end = start, end
        self.values = {r: np.full(n, np.nan, np.float32) for r in rewards}
        self.reasons: dict[str, dict[int, str]] = {r: {} for r in rewards}  # failures only
        self.status = {r: np.zeros(n, np.uint8) for r in rewards}
        self.pending = pending  # reward -> bool[n]: rows this job scores for that reward
        self.touched = {r: np.zeros(n, bool) for r in rewards}  # rows that got a result in this job
        self.remaining = int(np.logical_or.reduce([p for p in pending.values()]).sum())

    def flush(self, store, chunk_lock=None) -> None:
        """Write the chunk: this job's results for the rows it scored, the rows on disk for all the others
        (re-read under the chunk lock, so a concurrent job on other rows of the chunk loses nothing)."""
        from contextlib import nullcontext

        from .store import STATUS

        n = self.end - self.start
        sl = slice(self.start, self.end)
        for r, touched in self.touched.items():
            if not touched.any():
                continue
            with (chunk_lock(r, self.start // max(1, store.chunk_rows)) if chunk_lock else nullcontext()):
                status, values = self.status[r], self.values[r]
                reasons = [""] * n
                for k, why in self.reasons[r].items():
                    reasons[k] = why
                if not touched.all():  # keep what is on disk for the rows this job did not score
                    keep = ~touched
                    old_status = np.asarray(store._arr(f"done/{r}")[sl], np.uint8)
                    old_values = np.asarray(store._arr(f"scores/{r}")[sl], np.float32)
                    old_reasons = np.asarray(store._arr(f"failures/{r}")[sl]).tolist()
                    values = np.where(touched, values, old_values).astype(np.float32)
                    status = np.where(touched, status, old_status).astype(np.uint8)
                    for k in np.flatnonzero(keep).tolist():
                        reasons[k] = str(old_reasons[k])
                values = np.where(status == STATUS["failed"], np.float32("nan"), values).astype(np.float32)
                store.write_scores(r, self.start, values, reasons=reasons, status=status)


class _Scorer:
    """The main-process side of a job: scores each decoded batch with every reward, buffers per chunk,
    writes whole chunks. Vectorised per batch; per-sample Python work only where a reward needs it
    (``text_fits``) and for failures."""

    def __init__(self, store, rewards: Mapping[str, Reward], buffers: dict[int, _ChunkBuffer], device,
                 guard_samples: int = 8, expected: Mapping[str, int] | None = None, retry_failed: bool = False,
                 defer: set[int] | frozenset[int] = frozenset()):
        from .store import STATUS

        self.store = store
        #: chunks shared with other ranks of a store without locks: written at the end, one rank after the other
        self.defer = set(defer)
        self.deferred: list[_ChunkBuffer] = []
        self.retry_failed = retry_failed
        self.chunk_lock = store.locks.chunk if getattr(store.locks, "enabled", False) else None
        # broken-reward guard: a reward must succeed once within its first `threshold` attempted samples
        self.attempts = dict.fromkeys(rewards, 0)
        self.threshold = {r: max(2, min(int(guard_samples), int((expected or {}).get(r, guard_samples))))
                          for r in rewards}
        self.first_reason: dict[str, str] = {}
        self.expected = {r: int((expected or {}).get(r, 1)) for r in rewards}
        self.held: list[_ChunkBuffer] = []  # complete chunks written once every reward passed the guard
        self.rewards = rewards
        self.buffers = buffers
        self.c_rows = store.chunk_rows
        self.dev = torch.device(device)
        self.non_blocking = self.dev.type == "cuda"
        self.pickers = {name: _PromptPicker(r) for name, r in rewards.items()}
        self.uint8 = {name: bool(getattr(r, "accepts_uint8", False)) for name, r in rewards.items()}
        self.text = {name: bool(getattr(r, "uses_text", True)) for name, r in rewards.items()}
        self.stats = {r: {"scored": 0, "failed": 0, "truncated": 0, "short_caption": 0} for r in rewards}
        self.successes = dict.fromkeys(rewards, 0)
        self.failed = STATUS["failed"]
        self.st_trunc, self.st_short = STATUS["truncated"], STATUS["short_caption"]

    def _views(self, rows: np.ndarray):
        """``[(buffer, batch positions, local rows)]`` of the chunks the batch touches (usually one)."""
        chunks = rows // self.c_rows
        first, last = int(chunks[0]), int(chunks[-1])
        if first == last and (chunks.shape[0] < 3 or bool((chunks == first).all())):
            b = self.buffers[first]
            return [(b, slice(None), rows - b.start)]
        out = []
        for c in np.unique(chunks).tolist():
            pos = np.flatnonzero(chunks == c)
            b = self.buffers[c]
            out.append((b, pos, rows[pos] - b.start))
        return out

    def add(self, batch: Mapping[str, Any]) -> int:
        rows = batch["rows"]
        n = rows.shape[0]
        views = self._views(rows)
        text_errors: dict[int, str] = batch.get("text_errors", {})
        for name, reward in self.rewards.items():
            errors: dict[int, str] = {**text_errors, **batch["errors"]} if self.text[name] else batch["errors"]
            todo = np.zeros(n, bool)
            for b, pos, local in views:
                todo[pos] = b.pending[name][local]
            if not todo.any():
                continue
            vals = np.full(n, np.nan, np.float32)
            codes = np.zeros(n, np.uint8)
            why: dict[int, str] = {}
            for i, reason in errors.items():
                if todo[i]:
                    codes[i] = self.failed
                    why[i] = reason
            st = self.stats[name]
            groups_u8 = batch.get("groups_u8")
            skip = np.zeros(n, bool)
            if errors:
                skip[np.fromiter(errors.keys(), dtype=np.int64, count=len(errors))] = True
            for g, (idx, imgs) in enumerate(batch["groups"]):
                sel = todo[idx] & ~skip[idx]
                if not sel.any():
                    continue
                if self.uint8[name] and groups_u8 is not None and groups_u8[g] is not None:
                    imgs = groups_u8[g]  # the decoded bytes themselves (the reward's reference starts from them)
                members = idx if sel.all() else idx[sel]
                group_imgs = imgs if members is idx else imgs[torch.from_numpy(np.flatnonzero(sel))]
                prompts, pcodes = self.pickers[name].pick(batch["captions"], batch["short_captions"], members)
                values, reasons = _score_group(reward, group_imgs.to(self.dev, non_blocking=self.non_blocking), prompts)
                failed = [j for j, r in enumerate(reasons) if r]
                ok_count = len(members) - len(failed)
                self.attempts[name] += len(members)
                self.successes[name] += ok_count
                if failed and name not in self.first_reason:
                    self.first_reason[name] = reasons[failed[0]]
                self._check_guard(name, final=False)
                vals[members] = values
                if failed:
                    pcodes = pcodes.copy()
                    pcodes[failed] = self.failed
                    for j in failed:
                        why[int(members[j])] = reasons[j]
                codes[members] = pcodes
            st["failed"] += int((codes[todo] == self.failed).sum())
            ok = todo & (codes != self.failed)
            st["scored"] += int(ok.sum())
            st["truncated"] += int((codes[ok] == self.st_trunc).sum())
            st["short_caption"] += int((codes[ok] == self.st_short).sum())
            for b, pos, local in views:
                t = todo[pos]
                if t.all():
                    b.values[name][local] = vals[pos]
                    b.status[name][local] = codes[pos]
                    b.touched[name][local] = True
                else:
                    b.values[name][local[t]] = vals[pos][t]
                    b.status[name][local[t]] = codes[pos][t]
                    b.touched[name][local[t]] = True
            for i, reason in why.items():
                row = int(rows[i])
                c = row // self.c_rows
                self.buffers[c].reasons[name][row - self.buffers[c].start] = reason
        for b, pos, _ in views:
            b.remaining -= n if isinstance(pos, slice) else len(pos)
            if b.remaining <= 0:
                del self.buffers[b.start // self.c_rows]
                self.held.append(b)
        if self.held and self._guard_passed():
            self._flush_held()
        return n

    def _flush_held(self) -> None:
        for b in self.held:
            if b.start // self.c_rows in self.defer:
                self.deferred.append(b)
            else:
                b.flush(self.store, self.chunk_lock)
        self.held.clear()

    def _guard_passed(self) -> bool:
        return all(self.successes[r] > 0 or not self.expected.get(r, 0) for r in self.rewards)

    def _check_guard(self, name: str, final: bool) -> None:
        if self.successes[name] or self.attempts[name] < (2 if final else self.threshold[name]):
            return
        retry = (" With --retry-failed these rows had failed before: if they are bad data rather than a broken "
                 "reward, score without --retry-failed to leave them recorded as failed.") if self.retry_failed else ""
        from ._plugins import registry

        try:
            reg = registry("rewards").get(name)
            origin = f" (distribution {reg.distribution} {reg.version}, plugin {reg.plugin})"
        except MiroError:
            origin = ""
        raise MiroError(
            f"Reward {name!r}{origin} failed on each of the first {self.attempts[name]} samples it was given "
            f"(first error: {self.first_reason.get(name, '?')}); it looks broken rather than the data. Fix the "
            f"reward or its options and rerun (nothing of this job was written).{retry}"
        )

    def flush_all(self) -> None:
        for name in self.rewards:
            self._check_guard(name, final=True)
        self._flush_held()
        for c in sorted(self.buffers):  # rows absent from this source stay as they are on disk
            if c in self.defer:
                self.deferred.append(self.buffers[c])
            else:
                self.buffers[c].flush(self.store, self.chunk_lock)
        self.buffers.clear()

    def flush_deferred(self) -> None:
        """Write the chunks shared with other ranks (called by one rank at a time; see ``defer``)."""
        for b in self.deferred:
            b.flush(self.store, None)
        self.deferred.clear()


def score_dataset(
    source: DataSource | str,
    rewards: Sequence[str] | Mapping[str, Mapping[str, Any]] | str,
    store_url: str,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    workers: int | None = None,
    limit: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    chunk_rows: int | None = None,
    data_spec: str | None = None,
    retry_failed: bool = False,
    guard_samples: int = 8,
) -> dict[str, Any]:
    """Score ``source`` with ``rewards`` into the store at ``store_url``; return a summary dict.

    ``rewards``: names, or ``{name: options}``. ``rank`` / ``world_size`` default to the torchrun
    environment (``RANK`` / ``WORLD_SIZE``). ``workers``: decode processes per rank, ``None`` = automatic
    (:func:`auto_workers`). ``chunk_rows`` applies to a newly created store. Resumable: rows already
    scored (or recorded as failed) for a reward are skipped; with ``retry_failed`` the failed ones are scored
    again (their old reason is replaced by the new result). ``guard_samples``: a reward that fails on each of
    its first that many samples raises before anything is written (see the module docstring).
    """
    from ._plugins import registry
    from .data import resolve_data
    from .store import STATUS, RewardStore

    t0 = time.perf_counter()
    if isinstance(source, str):
        data_spec = data_spec or source
        source = resolve_data(source)
    if batch_size < 1:
        raise MiroError(f"batch_size must be >= 1, got {batch_size}.")
    if guard_samples < 1:
        raise MiroError(f"guard_samples must be >= 1, got {guard_samples}.")
    if workers is None:
        workers = auto_workers(device)
    if workers < 0:
        raise MiroError(f"workers must be >= 0 (or None for automatic), got {workers}.")
    specs = _normalise_rewards(rewards)
    reg = registry("rewards")
    objs: dict[str, Reward] = {name: reg.create(name, opts) for name, opts in specs.items()}
    job_config = {
        "job": "score",
        "data": data_spec or f"{source.name}:{source.config_dict()}",
        "data_source": source.name,
        "data_config": source.config_dict(),
        "rewards": {n: r.config_dict() for n, r in objs.items()},
        "batch_size": batch_size,
        "device": str(device),
        "limit": limit,
        "retry_failed": bool(retry_failed),
    }
    from .data.parts import source_parts
    from .distributed import (agree, all_reduce_sum, barrier, broadcast_object, cleanup, gather_objects,
                              init_distributed, scatter_objects)

    dist = init_distributed(torch.device(device).type, rank=rank, world_size=world_size)
    threads_before = torch.get_num_threads()
    threads = reward_threads(device, workers)
    if threads is not None and threads < threads_before:
        torch.set_num_threads(threads)  # restored at the end
    try:
        # -- the ids pass: every rank reads the ids and captions of its own pieces, rank 0 makes the rows ------
        parts = source_parts(source)
        shares = [parts.rank_pieces(r, dist.world_size, limit if parts.kind == "slices" else None)
                  for r in range(dist.world_size)]
        pieces = shares[dist.rank]
        if dist.rank == 0:
            _sweep_stale_spools(store_url)
        job = broadcast_object(uuid.uuid4().hex[:16] if dist.rank == 0 else None, dist)
        own_err = None
        try:
            mine_texts = ("ok", _read_texts(parts, pieces, limit if (parts.kind != "shards" or not dist.enabled)
                                            else None, store_url, job, dist.rank))
        except Exception as exc:  # noqa: BLE001 - re-raised after telling the other ranks
            own_err, mine_texts = exc, ("error", f"rank {dist.rank}: {exc}")
        gathered = gather_objects(mine_texts, dist)
        del mine_texts
        rows_by_rank = None
        if dist.rank == 0:
            bad = [m for kind, m in gathered if kind == "error"]
            if bad:
                _discard_spool(store_url, job)
                rows_by_rank = [("error", bad[0])] * dist.world_size
            else:
                try:
                    _, rows = _prepare_store(store_url, job, parts, shares, [t for _, t in gathered], objs, limit,
                                             chunk_rows, job_config)
                    rows_by_rank = [("ok", r) for r in rows]
                except Exception as exc:  # noqa: BLE001 - re-raised after telling the other ranks
                    _discard_spool(store_url, job)
                    own_err = own_err or exc
                    rows_by_rank = [("error", f"rank 0 failed to prepare the reward store: {exc}")] * dist.world_size
            del gathered
        kind, piece_rows = scatter_objects(rows_by_rank, dist)
        del rows_by_rank
        if own_err is not None:
            raise own_err
        if kind == "error":
            raise MiroError(f"{piece_rows}; see that rank's error. Rerun to resume.")
        store = RewardStore.open(store_url, "a")  # one handle for the whole job (arrays are re-read per access)
        n_chunks = store.num_chunks()
        # rows this job scores per reward: pending (or failed, with retry_failed) among the rows of this rank's
        # pieces (rows of other data in the store, or of another job's shards, are left alone)
        todo_codes = [STATUS["pending"], STATUS["failed"]] if retry_failed else [STATUS["pending"]]
        mine = np.zeros(store.num_rows, bool)
        for r in piece_rows:
            mine[r[r >= 0]] = True
        todo = {r: np.isin(store.status(r), todo_codes) & mine for r in objs}
        buffers: dict[int, _ChunkBuffer] = {}
        wanted = np.logical_or.reduce(list(todo.values())) if todo else np.zeros(store.num_rows, bool)
        defer: set[int] = set()
        locked = bool(getattr(store.locks, "enabled", False))
        for c in range(n_chunks):
            s, e = store.chunk_bounds(c)
            if wanted[s:e].any():
                buffers[c] = _ChunkBuffer(s, e, list(objs), {r: todo[r][s:e] for r in objs})
                if dist.enabled and not locked and not mine[s:e].all():
                    defer.add(c)  # another rank may write rows of this chunk: no lock to serialise us
        n_wanted = int(wanted.sum())
        log.info("rank %d: %d rows to score in %d chunks from %d pieces, %d decode workers", dist.rank, n_wanted,
                 len(buffers), len(pieces), workers)

        from ._store_locks import claim_all

        expected = {r: int(t.sum()) for r, t in todo.items()}
        scorer = _Scorer(store, objs, buffers, device, guard_samples=guard_samples, expected=expected,
                         retry_failed=retry_failed, defer=defer)
        processed = 0
        ok, err = True, None
        try:
            claim_all(store.locks, [(r, np.flatnonzero(t)) for r, t in todo.items() if t.any()], store_url)
            if n_wanted:
                dataset = DecodedBatches(parts, pieces, piece_rows, wanted, batch_size,
                                         keep_uint8=any(scorer.uint8.values()))
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                    prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
                    pin_memory=scorer.dev.type == "cuda",
                )
                # start the workers first: they decode the first batches while the rewards load
                batches = iter(loader)
                bar, ready = None, []
                try:
                    for r in objs.values():
                        r.setup(device)
                        ready.append(r)
                    if progress and dist.rank == 0:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=n_wanted * max(dist.world_size, 1), desc="scoring", unit="img", dynamic_ncols=True)
                    for batch in batches:
                        n = scorer.add(batch)
                        processed += n
                        if bar is not None:
                            bar.update(n * max(dist.world_size, 1))
                    scorer.flush_all()
                finally:
                    shutdown = getattr(batches, "_shutdown_workers", None)
                    if shutdown is not None:  # now, not when an exception's traceback lets go of the iterator
                        shutdown()
                    del batches
                    if bar is not None:
                        bar.close()
                    for r in ready:
                        r.teardown()
            for name, st in scorer.stats.items():
                if st["truncated"]:
                    log.warning(
                        "reward %s: %d captions exceed its text limit and have no short caption; they were scored "
                        "truncated (count stored in the store attrs)", name, st["truncated"],
                    )
        except Exception as exc:  # noqa: BLE001 - re-raised after telling the other ranks
            ok, err = False, exc
        finally:
            store.locks.release_claims()
        all_ok = agree(ok, dist)
        if err is not None:
            raise err
        if not all_ok:
            raise MiroError("Another rank of this scoring job failed; see its error. Rerun to resume.")
        if dist.enabled and not locked:  # chunks shared between ranks, one rank after the other
            for r in range(dist.world_size):
                if r == dist.rank:
                    scorer.flush_deferred()
                barrier(dist)
        processed_total = all_reduce_sum(processed, dist)
        if dist.rank == 0:
            for name in objs:
                store.finalize_reward(name)
        agree(True, dist)
        return {
            "store": store_url,
            "rank": dist.rank,
            "world_size": dist.world_size,
            "num_rows": store.num_rows,
            "rows_processed": processed_total,
            "rows_processed_this_rank": processed,
            "workers": workers,
            "pieces_this_rank": len(pieces),
            "this_run": scorer.stats,
            "rewards": {r: store.reward_counts(r) for r in objs},
            "seconds": time.perf_counter() - t0,
        }
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
        cleanup(dist)
