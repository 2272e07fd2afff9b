"""Training data: a DataSource joined by sample id with the reward store's levels, plus a latent/text cache.

Text embeddings and latents are computed once and cached as safetensors shards under
``<cache_dir>/<key>/`` where ``key`` hashes the text-encoder and autoencoder configs, the image size, the
data spec and the (id, caption) list. Image content is assumed to be a function of (data spec, id).
The cache directory is written to a temporary name and renamed when complete, so an interrupted run
never leaves a half cache behind. Levels are never cached: they are read from the store (cheap), so any
subset of rewards trains from the same cache.
"""

from __future__ import annotations

__all__ = ["TrainingData", "prepare_data", "resolve_rewards", "cache_key", "default_cache_dir", "preprocess_image"]

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from .._config import unstructure
from .._errors import ConfigError, StoreError, did_you_mean
from .config import DataConfig

log = logging.getLogger(__name__)

SHARD_ROWS = 4096
CACHE_FORMAT = 1


@attrs.define
class TrainingData:
    """Everything the loop needs, in memory (float32 CPU tensors, row-aligned)."""

    ids: list[str]
    captions: list[str]
    latents: torch.Tensor  # [N, C, h, w]
    text_tokens: torch.Tensor  # [N, L, D]
    text_mask: torch.Tensor  # [N, L] bool
    levels: torch.Tensor  # [N, R], NaN = missing
    empty_tokens: torch.Tensor  # [1, L0, D]
    empty_mask: torch.Tensor  # [1, L0]
    reward_names: tuple[str, ...]
    binner_states: dict[str, Any]
    image_size: int
    cache_path: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.latents.shape[1:])  # type: ignore[return-value]

    @property
    def text_dim(self) -> int:
        return int(self.text_tokens.shape[-1])


def default_cache_dir() -> Path:
    return Path(os.environ.get("MIRO_CACHE_DIR", Path.home() / ".cache" / "miro" / "train"))


def resolve_rewards(cfg: DataConfig, store: Any) -> tuple[str, ...]:
    """The reward names to condition on; ``("all",)`` expands to every reward binned with ``cfg.binner``."""
    names = cfg.reward_names
    if not names:
        return ()
    if store is None:
        raise ConfigError(
            f"Rewards {', '.join(names)} were requested but no reward store is given; pass --store URL "
            "(data.store), or --rewards none for the unconditioned baseline."
        )
    binned = store.binnings().get(cfg.binner, [])
    if names == ("all",):
        if not binned:
            raise StoreError(
                f"Store has no rewards binned with {cfg.binner!r}; run `miro bin --binner {cfg.binner}` first."
            )
        return tuple(binned)
    if len(set(names)) != len(names):
        raise ConfigError(f"data.rewards lists a reward twice: {list(names)}.")
    available = list(store.rewards())
    for n in names:
        if n not in available:
            raise ConfigError(
                f"Reward {n!r} is not in the store.{did_you_mean(n, available)} Rewards in the store: "
                f"{', '.join(available) or '(none)'}; or use --rewards none for the baseline."
            )
        if n not in binned:
            raise StoreError(
                f"Reward {n!r} is not binned with {cfg.binner!r} (binned: {', '.join(binned) or 'none'}); run "
                f"`miro bin --binner {cfg.binner} --rewards {n}`."
            )
    return names


def preprocess_image(image: Any, size: int) -> torch.Tensor:
    """Decode to ``[3, H, W]`` in [0, 1], resize the short side to ``size`` (antialiased), centre crop."""
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
        x = image.float()
    else:
        from ..data import to_tensor

        x = to_tensor(image)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, top : top + size, left : left + size]
    return x.clamp(0.0, 1.0).contiguous()


def _spec_dict(spec: Any) -> dict[str, Any]:
    return unstructure(spec) if attrs.has(type(spec)) else dict(spec)


def cache_key(cfg: DataConfig, text_encoder_spec: Any, autoencoder_spec: Any, ids: Sequence[str], captions: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i, c in zip(ids, captions):
        h.update(i.encode())
        h.update(b"\0")
        h.update(c.encode())
        h.update(b"\1")
    payload = {
        "format": CACHE_FORMAT,
        "text_encoder": _spec_dict(text_encoder_spec),
        "autoencoder": _spec_dict(autoencoder_spec),
        "image_size": cfg.image_size,
        "spec": cfg.spec,
        "rows": h.hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _pad_cat(parts: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(p.shape[1] for p in parts)
    out_t, out_m = [], []
    for p, m in zip(parts, masks):
        extra = length - p.shape[1]
        if extra:
            p = torch.cat([p, p.new_zeros(p.shape[0], extra, p.shape[2])], 1)
            m = torch.cat([m, m.new_zeros(m.shape[0], extra)], 1)
        out_t.append(p)
        out_m.append(m)
    return torch.cat(out_t), torch.cat(out_m)


def _encode_to_cache(
    path: Path, samples: list[Any], cfg: DataConfig, text_encoder: Any, autoencoder: Any, device: torch.device,
    meta: dict[str, Any], progress: Callable[[int], None] | None,
) -> None:
    from safetensors.torch import save_file

    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        bs = max(1, cfg.encode_batch_size)
        shard, rows, n_shards = [], 0, 0

        def flush():
            nonlocal shard, n_shards
            if not shard:
                return
            lat = torch.cat([s[0] for s in shard])
            tok, msk = _pad_cat([s[1] for s in shard], [s[2] for s in shard])
            save_file({"latents": lat.contiguous(), "text_tokens": tok.contiguous(), "text_mask": msk.to(torch.uint8).contiguous()},
                      str(tmp / f"shard_{n_shards:05d}.safetensors"))
            n_shards += 1
            shard = []

        with torch.no_grad():
            for start in range(0, len(samples), bs):
                chunk = samples[start : start + bs]
                imgs = torch.stack([preprocess_image(s.image, cfg.image_size) for s in chunk]).to(device)
                lat = autoencoder.encode(imgs).float().cpu()
                tok, msk = text_encoder.encode([s.caption for s in chunk])
                shard.append((lat, tok.float().cpu(), msk.bool().cpu()))
                rows += len(chunk)
                if progress:
                    progress(len(chunk))
                if sum(x[0].shape[0] for x in shard) >= SHARD_ROWS:
                    flush()
            flush()
            etok, emsk = text_encoder.encode([""])
            save_file({"text_tokens": etok.float().cpu().contiguous(), "text_mask": emsk.to(torch.uint8).cpu().contiguous()},
                      str(tmp / "empty.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({**meta, "num_shards": n_shards, "rows": rows}, indent=2))
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "meta.json").exists():  # not a concurrent writer that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    lats, toks, msks = [], [], []
    for i in range(meta["num_shards"]):
        d = load_file(str(path / f"shard_{i:05d}.safetensors"))
        lats.append(d["latents"])
        toks.append(d["text_tokens"])
        msks.append(d["text_mask"].bool())
    tok, msk = _pad_cat(toks, msks)
    e = load_file(str(path / "empty.safetensors"))
    return torch.cat(lats), tok, msk, e["text_tokens"], e["text_mask"].bool(), meta


def prepare_data(
    cfg: DataConfig,
    text_encoder: Any,
    autoencoder: Any,
    *,
    text_encoder_spec: Any,
    autoencoder_spec: Any,
    source: Any = None,
    store: Any = None,
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    build: bool = True,
    progress: Callable[[int], None] | None = None,
) -> TrainingData:
    """Join ``source`` (default: ``resolve_data(cfg.spec)``) with ``store`` (default: ``cfg.store``) by id.

    With ``build=False`` the cache must already exist (non-zero ranks wait for rank 0 to build it).
    """
    if source is None:
        from ..data import resolve_data

        source = resolve_data(cfg.spec)
    if store is None and cfg.store:
        from ..store import RewardStore

        store = RewardStore.open(cfg.store)
    rewards = resolve_rewards(cfg, store)

    samples = []
    for s in source:
        samples.append(s)
        if cfg.limit and len(samples) >= cfg.limit:
            break
    if not samples:
        raise ConfigError(f"Data source {cfg.spec!r} yielded no samples.")
    if len({s.id for s in samples}) != len(samples):
        raise ConfigError(f"Data source {cfg.spec!r} yields duplicate sample ids; ids must be unique.")

    rows = None
    if store is not None:
        index = {str(x): i for i, x in enumerate(np.asarray(store.ids()).tolist())}
        kept = [s for s in samples if s.id in index]
        dropped = len(samples) - len(kept)
        if not kept:
            raise StoreError(
                f"None of the {len(samples)} samples of {cfg.spec!r} is in the reward store {cfg.store or store!r}; "
                "score this data first (`miro score`) or pass the store that was built from it."
            )
        if dropped:
            log.warning("%d of %d samples are not in the reward store and are skipped", dropped, len(samples))
        samples = kept
        rows = np.array([index[s.id] for s in samples], dtype=np.int64)
    levels = (
        torch.from_numpy(np.asarray(store.levels(list(rewards), cfg.binner, rows), dtype=np.float32))
        if rewards
        else torch.zeros(len(samples), 0)
    )
    binner_states = {r: store.bin_state(cfg.binner, r) for r in rewards}

    ids = [s.id for s in samples]
    captions = [s.caption for s in samples]
    key = cache_key(cfg, text_encoder_spec, autoencoder_spec, ids, captions)
    root = Path(cache_dir) if cache_dir else (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())
    path = root / key
    if not (path / "meta.json").exists():
        if not build:
            raise FileNotFoundError(f"latent cache {path} is missing")
        root.mkdir(parents=True, exist_ok=True)
        log.info("encoding %d samples into the cache %s", len(samples), path)
        meta = {"format": CACHE_FORMAT, "key": key, "ids_sha": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                "text_encoder": _spec_dict(text_encoder_spec), "autoencoder": _spec_dict(autoencoder_spec),
                "image_size": cfg.image_size, "spec": cfg.spec}
        _encode_to_cache(path, samples, cfg, text_encoder, autoencoder, torch.device(device), meta, progress)
    else:
        log.info("using cached latents and text embeddings from %s", path)
    lat, tok, msk, etok, emsk, meta = _load_cache(path)
    if lat.shape[0] != len(ids):
        raise StoreError(f"Latent cache {path} has {lat.shape[0]} rows, expected {len(ids)}; delete it and retry.")
    return TrainingData(ids=ids, captions=captions, latents=lat, text_tokens=tok, text_mask=msk, levels=levels,
                        empty_tokens=etok, empty_mask=emsk, reward_names=tuple(rewards), binner_states=binner_states,
                        image_size=cfg.image_size, cache_path=str(path))
