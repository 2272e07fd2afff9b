"""Resumable generation into GenEval's layout, and a disk cache for ``generate`` calls.

``generate_into``: every (prompt, sample) image has its own seed (``batch_seed(seed, group, sample)``), so an
image does not depend on which others were generated with it. A :class:`~miro_core.sampling.MiroPipeline` gets one
``torch.Generator`` per image; any other ``generate(prompts, seed=..., **kw)`` callable gets the seed of the first
image of each batch (its images then depend on the batch composition, which is the same on a resumed run with the
same ``batch_size``). Images are written atomically as soon as their batch is done; a re-run generates only the
missing ones. ``generation.json`` records what the images were generated with; a re-run with other settings
into the same folder is refused.

``CachedGenerate``: wraps a generator for evaluators that call it in memory (the ``world`` suite); each call's
images are stored as float32 safetensors keyed by the call's prompts and arguments, so a killed run resumes with
exactly the same numbers.
"""

from __future__ import annotations

__all__ = ["generate_into", "CachedGenerate", "source_id", "image_seed", "to_uint8"]

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miro_core import MiroError

from .._common import batch_seed
from ._layout import sample_path, save_png, write_prompt_metadata

log = logging.getLogger(__name__)


def image_seed(seed: int, group: int, sample: int) -> int:
    """The noise seed of image ``sample`` of prompt ``group``."""
    return batch_seed(seed, group, sample)


def source_id(pipeline: Any) -> dict[str, Any]:
    """What identifies a model in ``generation.json`` (checkpoint / pretrained path and step)."""
    meta = dict(getattr(pipeline, "metadata", None) or {})
    out = {k: str(meta[k]) for k in ("pretrained", "checkpoint") if meta.get(k)}
    if meta.get("step") is not None:
        out["step"] = int(meta["step"])
    if not out:
        fn = getattr(pipeline, "generate", pipeline)
        out["callable"] = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B,3,H,W]`` floats in [0, 1] -> ``[B,H,W,3]`` uint8, rounded as a PNG writer does."""
    x = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _is_pipeline(obj: Any) -> bool:
    from miro_core.sampling import MiroPipeline

    return isinstance(obj, MiroPipeline)


def _check_stamp(root: Path, stamp: dict[str, Any]) -> None:
    path = root / "generation.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(stamp) if old.get(k) != stamp.get(k))
        if diff:
            raise MiroError(
                f"{root} holds images generated with other settings ({', '.join(diff)} differ: "
                f"{ {k: old.get(k) for k in diff} } vs { {k: stamp.get(k) for k in diff} }). A resumed evaluation must "
                "use the same model and sampling settings: use a new --out, or delete the folder to start over."
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".generation.json.tmp")
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def generate_into(
    pipeline: Any,
    records: Sequence[Mapping[str, Any]],
    root: str | Path,
    *,
    images_per_prompt: int,
    seed: int,
    batch_size: int,
    sampling: Mapping[str, Any],
    progress: Callable[[int, str], Any] | None = None,
    stamp_extra: Mapping[str, Any] | None = None,
) -> int:
    """Generate the images of ``records`` (prompt records, each with ``prompt``) that ``root`` lacks.

    Writes GenEval's layout; returns how many images were generated now."""
    root = Path(root)
    if images_per_prompt < 1 or batch_size < 1:
        raise MiroError("images_per_prompt and batch_size must be >= 1.")
    stamp = {"source": source_id(pipeline), "sampling": json.loads(json.dumps(dict(sampling), sort_keys=True)),
             "seed": int(seed), **dict(stamp_extra or {})}
    if not _is_pipeline(pipeline):
        stamp["batch_size"] = int(batch_size)  # a plain callable's images depend on the batches
    _check_stamp(root, stamp)
    todo: list[tuple[int, int, str]] = []
    for g, rec in enumerate(records):
        write_prompt_metadata(root, g, rec)
        for k in range(images_per_prompt):
            if not sample_path(root, g, k).exists():
                todo.append((g, k, str(rec["prompt"])))
    total = len(records) * images_per_prompt
    if not todo:
        log.info("all %d images already in %s", total, root)
        return 0
    log.info("generating %d of %d images into %s (%d already there)", len(todo), total, root, total - len(todo))
    bar = progress(len(todo), "generate") if progress is not None else None
    kwargs = dict(sampling)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [p for _, _, p in chunk]
            with torch.no_grad():
                if _is_pipeline(pipeline):
                    gens = [torch.Generator().manual_seed(image_seed(seed, g, k)) for g, k, _ in chunk]
                    images = pipeline.generate(prompts, generator=gens, batch_size=len(chunk), **kwargs)
                else:
                    images = pipeline(prompts, seed=image_seed(seed, chunk[0][0], chunk[0][1]), **kwargs)
            arr = to_uint8(images)
            if arr.shape[0] != len(chunk):
                raise MiroError(f"generate returned {arr.shape[0]} images for {len(chunk)} prompts.")
            for (g, k, _), a in zip(chunk, arr):
                save_png(a, sample_path(root, g, k))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return len(todo)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:24]


class CachedGenerate:
    """``generate(prompts, **kw)`` whose results are stored in ``root`` (float32 safetensors per call).

    A call with the same prompts and arguments as an earlier one loads its images instead of generating:
    evaluators that generate in memory (``world_geneval``, ``reward_scores``) become resumable, bit for bit.
    Attributes of the wrapped pipeline (``reward_names``...) are visible through the wrapper."""

    def __init__(self, pipeline: Any, root: str | Path, *, stamp: Mapping[str, Any] | None = None):
        from miro_core.sampling import as_generate

        self._pipeline = pipeline
        self._generate = as_generate(pipeline)
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        _check_stamp(self.root, {"source": source_id(pipeline), **dict(stamp or {})})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._pipeline, name)

    def __call__(self, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        key = _key({"prompts": list(prompts), "kwargs": kwargs})
        path = self.root / f"{key}.safetensors"
        if path.exists():
            self.hits += 1
            return load_file(str(path))["images"]
        self.misses += 1
        images = torch.as_tensor(self._generate(list(prompts), **kwargs)).detach().float().cpu().contiguous()
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        save_file({"images": images}, str(tmp))
        os.replace(tmp, path)
        return images
