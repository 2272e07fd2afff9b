"""The scoring pipeline: stream a data source through reward models into a :class:`~miro_core.store.RewardStore`.

Design (documented in ``docs/scoring.md``):

* Rows first. Rank 0 reads the ids and captions of the source (up to ``limit``), creates the store or appends
  the new ids, and creates/checks every reward column (a version/config mismatch fails before any work).
* Then scoring touches only pending rows: a row is pending for a reward while its ``done/<reward>`` code is 0.
  Adding a reward to a scored store therefore scores only that reward; a killed job resumes where it stopped.
* All rewards of one job are set up once and each decoded batch goes through all of them (images are decoded
  once). To keep one heavy model in memory at a time, run ``miro score`` once per reward: each run scores
  only the rewards that are missing.
* Images are decoded in ``workers`` DataLoader worker processes (``0``: in the main process); batches are
  grouped by image size, since rewards take ``[B, 3, H, W]``.
* Results are buffered per store chunk and written when the chunk's pending rows are all scored: scores and
  failure reasons first, the done codes last, whole chunks only. Under ``torchrun`` rank ``r`` owns the chunks
  ``c`` with ``c % world_size == r``, so writers never share a chunk.
* Per-sample failures (undecodable image, exception inside the reward, NaN/inf score) are isolated by
  retrying a failing batch one sample at a time and recorded with their reason; the job goes on. A reward
  that fails on every sample of its first batch raises (a broken reward must not mark a dataset "failed").
"""

from __future__ import annotations

__all__ = ["score_dataset", "DecodedBatches"]

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._errors import MiroError
from .interfaces import DataSource, Reward

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# streaming + decoding
# ---------------------------------------------------------------------------------------------------
class DecodedBatches(torch.utils.data.IterableDataset):
    """Samples of ``source`` whose row is in ``wanted``, decoded and batched (in DataLoader workers)."""

    def __init__(self, source: DataSource, index: Mapping[str, int], wanted: set[int], batch_size: int,
                 limit: int | None):
        super().__init__()
        self.source = source
        self.index = index
        self.wanted = wanted
        self.batch_size = batch_size
        self.limit = limit

    def _items(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        k = 0
        for pos, sample in enumerate(self.source):
            if self.limit is not None and pos >= self.limit:
                break
            row = self.index.get(str(sample.id))
            if row is None or row not in self.wanted:
                continue
            k += 1
            if (k - 1) % nw != wid:
                continue
            yield row, sample

    def _batch(self, items) -> dict[str, Any]:
        from .data import to_tensor

        images, errors = [], []
        for _, s in items:
            try:
                images.append(to_tensor(s.image))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - any decode problem is a per-sample failure
                images.append(None)
                errors.append(f"image decode failed: {type(exc).__name__}: {exc}")
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            if img is not None:
                groups.setdefault(tuple(img.shape), []).append(i)
        return {
            "rows": [r for r, _ in items],
            "ids": [str(s.id) for _, s in items],
            "captions": [s.caption or "" for _, s in items],
            "short_captions": [s.short_caption for _, s in items],
            "errors": errors,
            "groups": [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()],
        }

    def __iter__(self):
        buf = []
        for item in self._items():
            buf.append(item)
            if len(buf) == self.batch_size:
                yield self._batch(buf)
                buf = []
        if buf:
            yield self._batch(buf)


def _identity(x):
    return x


# ---------------------------------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------------------------------
class _Dist:
    """torch.distributed (gloo) when running under torchrun with WORLD_SIZE > 1; no-op otherwise."""

    def __init__(self, rank: int | None, world_size: int | None):
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise MiroError(f"rank {self.rank} is outside world_size {self.world_size}.")
        self.owned = False
        self.active = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if "MASTER_ADDR" not in os.environ:
                    raise MiroError(
                        f"world_size={self.world_size} needs torch.distributed: launch with `torchrun "
                        "--nproc_per_node K miro score ...` (or initialise a process group before calling)."
                    )
                dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size)
                self.owned = True
            self.active = True

    def agree(self, ok: bool) -> bool:
        """Barrier that also tells every rank whether all ranks got here without an error."""
        if not self.active:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def sum(self, value: int) -> int:
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t)
        return int(t.item())

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------
def _normalise_rewards(rewards) -> dict[str, dict[str, Any]]:
    if isinstance(rewards, str):
        from .cli.score_cmd import parse_reward_list

        rewards = parse_reward_list(rewards)
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


def _prepare_store(store_url, source, rewards, limit, chunk_rows, job_config):
    """Rank 0: create/extend the rows, create/check the reward columns, record the job."""
    from .store import DEFAULT_CHUNK_ROWS, RewardStore

    ids, caps, shorts = [], [], []
    for pos, s in enumerate(source):
        if limit is not None and pos >= limit:
            break
        ids.append(str(s.id))
        caps.append(s.caption or "")
        shorts.append(s.short_caption)
    if not ids:
        raise MiroError("The data source yielded no samples; check the --data spec (and --limit).")
    have_short = any(x is not None for x in shorts)
    try:
        store = RewardStore.open(store_url, "a")
    except MiroError as exc:
        if "No reward store" not in str(exc):
            raise
        store = RewardStore.create(store_url, ids, caps, shorts if have_short else None,
                                   chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS, config=job_config)
    else:
        index = store.id_index()
        new = [i for i, x in enumerate(ids) if x not in index]
        if len(set(ids)) != len(ids):
            raise MiroError("The data source yields duplicate sample ids; every sample needs a unique id.")
        if new:
            store.append_rows([ids[i] for i in new], [caps[i] for i in new],
                              [shorts[i] for i in new] if have_short else None)
    for name, reward in rewards.items():
        store.ensure_reward(name, _reward_provenance(reward))
    store.add_history({**job_config, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return store


def _pick_prompt(reward: Reward, caption: str, short: str | None) -> tuple[str, int]:
    from .store import STATUS

    if not reward.uses_text or reward.text_fits(caption):
        return caption, STATUS["scored"]
    if short:
        return short, STATUS["short_caption"]
    return caption, STATUS["truncated"]


def _score_group(reward: Reward, images: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Scores of one same-size group; a failing batch is retried per sample to isolate the culprit."""

    def run(imgs, ps):
        with torch.inference_mode():
            out = reward.score(imgs, ps)
        out = torch.as_tensor(out).detach().float().reshape(-1).cpu().numpy()
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
    for i, v in enumerate(values):
        if not reasons[i] and not np.isfinite(v):
            reasons[i] = f"non-finite score ({v})"
    return values.astype(np.float32), reasons


class _ChunkBuffer:
    """Results of one store chunk until all its pending rows have been scored."""

    def __init__(self, start: int, end: int, rewards: Sequence[str], pending: dict[str, np.ndarray]):
        n = end - start
        self.start, self.end = start, end
        self.values = {r: np.full(n, np.nan, np.float32) for r in rewards}
        self.reasons = {r: [""] * n for r in rewards}
        self.status = {r: np.zeros(n, np.uint8) for r in rewards}
        self.pending = pending  # reward -> bool[n] pending before this run
        self.remaining = int(np.logical_or.reduce([p for p in pending.values()]).sum())

    def flush(self, store) -> None:
        from .store import STATUS

        n = self.end - self.start
        for r, pend in self.pending.items():
            if not pend.any():
                continue
            sl = slice(self.start, self.end)
            old_status = np.asarray(store._arr(f"done/{r}")[sl], np.uint8)
            old_values = np.asarray(store._arr(f"scores/{r}")[sl], np.float32)
            old_reasons = [str(x) for x in np.asarray(store._arr(f"failures/{r}")[sl]).tolist()]
            values = np.where(pend, self.values[r], old_values).astype(np.float32)
            status = np.where(pend, self.status[r], old_status).astype(np.uint8)
            reasons = [self.reasons[r][i] if pend[i] else old_reasons[i] for i in range(n)]
            values[status == STATUS["failed"]] = np.nan
            store.write_scores(r, self.start, values, reasons=reasons, status=status)


def score_dataset(
    source: DataSource | str,
    rewards: Sequence[str] | Mapping[str, Mapping[str, Any]] | str,
    store_url: str,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    workers: int = 0,
    limit: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    chunk_rows: int | None = None,
    data_spec: str | None = None,
) -> dict[str, Any]:
    """Score ``source`` with ``rewards`` into the store at ``store_url``; return a summary dict.

    ``rewards``: names, or ``{name: options}``. ``rank`` / ``world_size`` default to the torchrun
    environment (``RANK`` / ``WORLD_SIZE``). ``chunk_rows`` applies to a newly created store. Resumable:
    rows already scored (or recorded as failed) for a reward are skipped.
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
    }
    dist = _Dist(rank, world_size)
    try:
        ok, err = True, None
        if dist.rank == 0:
            try:
                _prepare_store(store_url, source, objs, limit, chunk_rows, job_config)
            except Exception as exc:  # noqa: BLE001 - re-raised after telling the other ranks
                ok, err = False, exc
        if not dist.agree(ok):
            if err is not None:
                raise err
            raise MiroError("Rank 0 failed to prepare the reward store; see its error message.")
        store = RewardStore.open(store_url, "a")
        n_chunks = store.num_chunks()
        my_chunks = [c for c in range(n_chunks) if c % dist.world_size == dist.rank]
        statuses = {r: store.status(r) for r in objs}
        buffers: dict[int, _ChunkBuffer] = {}
        wanted: set[int] = set()
        for c in my_chunks:
            s, e = store.chunk_bounds(c)
            pend = {r: statuses[r][s:e] == STATUS["pending"] for r in objs}
            buf = _ChunkBuffer(s, e, list(objs), pend)
            if buf.remaining:
                buffers[c] = buf
                any_pend = np.logical_or.reduce(list(pend.values()))
                wanted.update((s + np.flatnonzero(any_pend)).tolist())
        log.info("rank %d: %d rows pending in %d chunks", dist.rank, len(wanted), len(buffers))

        stats = {r: {"scored": 0, "failed": 0, "truncated": 0, "short_caption": 0} for r in objs}
        processed = 0
        ok, err = True, None
        try:
            successes = dict.fromkeys(objs, 0)
            if wanted:
                for r in objs.values():
                    r.setup(device)
                dataset = DecodedBatches(source, store.id_index(), wanted, batch_size, limit)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                    prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
                )
                bar = None
                if progress and dist.rank == 0:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=len(wanted) * max(dist.world_size, 1), desc="scoring", unit="img", dynamic_ncols=True)
                c_rows = store.chunk_rows
                dev = torch.device(device)
                try:
                    for batch in loader:
                        rows = batch["rows"]
                        for name, reward in objs.items():
                            bufs = [buffers[row // c_rows] for row in rows]
                            local = [row - b.start for row, b in zip(rows, bufs)]
                            todo = [i for i, (b, k) in enumerate(zip(bufs, local)) if b.pending[name][k]]
                            todo_set = set(todo)
                            for i in todo:
                                if batch["errors"][i] is not None:
                                    b, k = bufs[i], local[i]
                                    b.status[name][k] = STATUS["failed"]
                                    b.reasons[name][k] = batch["errors"][i]
                                    stats[name]["failed"] += 1
                            for idx, imgs in batch["groups"]:
                                sel = [j for j, i in enumerate(idx) if i in todo_set]
                                if not sel:
                                    continue
                                members = [idx[j] for j in sel]
                                picked = [_pick_prompt(reward, batch["captions"][i], batch["short_captions"][i]) for i in members]
                                group_imgs = imgs[sel] if len(sel) != len(idx) else imgs
                                values, reasons = _score_group(reward, group_imgs.to(dev), [p for p, _ in picked])
                                ok_count = sum(1 for x in reasons if not x)
                                if ok_count == 0 and successes[name] == 0 and len(members) > 1:
                                    raise MiroError(
                                        f"Reward {name!r} failed on every sample of its first batch ({reasons[0]}); "
                                        "it looks broken rather than the data. Fix the reward or its options and rerun "
                                        "(nothing was marked as scored)."
                                    )
                                successes[name] += ok_count
                                for i, v, why, (_, code) in zip(members, values, reasons, picked):
                                    b, k = bufs[i], local[i]
                                    b.values[name][k] = v
                                    b.reasons[name][k] = why
                                    if why:
                                        b.status[name][k] = STATUS["failed"]
                                        stats[name]["failed"] += 1
                                    else:
                                        b.status[name][k] = code
                                        stats[name]["scored"] += 1
                                        if code == STATUS["truncated"]:
                                            stats[name]["truncated"] += 1
                                        elif code == STATUS["short_caption"]:
                                            stats[name]["short_caption"] += 1
                        for row in rows:
                            c = row // c_rows
                            b = buffers[c]
                            b.remaining -= 1
                            if b.remaining == 0:
                                b.flush(store)
                                del buffers[c]
                        processed += len(rows)
                        if bar is not None:
                            bar.update(len(rows) * max(dist.world_size, 1))
                    for c in sorted(buffers):  # rows absent from this source stay pending
                        buffers[c].flush(store)
                    buffers.clear()
                finally:
                    if bar is not None:
                        bar.close()
                    for r in objs.values():
                        r.teardown()
            for name, st in stats.items():
                if st["truncated"]:
                    log.warning(
                        "reward %s: %d captions exceed its text limit and have no short caption; they were scored "
                        "truncated (count stored in the store attrs)", name, st["truncated"],
                    )
        except Exception as exc:  # noqa: BLE001 - re-raised after telling the other ranks
            ok, err = False, exc
        all_ok = dist.agree(ok)
        if err is not None:
            raise err
        if not all_ok:
            raise MiroError("Another rank of this scoring job failed; see its error. Rerun to resume.")
        processed_total = dist.sum(processed)
        store = RewardStore.open(store_url, "a")
        if dist.rank == 0 and all_ok:
            for name in objs:
                store.finalize_reward(name)
        dist.agree(True)
        final = RewardStore.open(store_url, "r")
        return {
            "store": store_url,
            "rank": dist.rank,
            "world_size": dist.world_size,
            "num_rows": final.num_rows,
            "rows_processed": processed_total,
            "rows_processed_this_rank": processed,
            "this_run": stats,
            "rewards": {r: final.reward_counts(r) for r in objs},
            "seconds": time.perf_counter() - t0,
        }
    finally:
        dist.close()
