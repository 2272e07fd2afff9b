"""Checkpoints: atomic directories that a sampler or a resumed run rebuilds everything from.

Layout of ``<out>/checkpoints/step_00001000/``::

    config.json          format + version, step, the full resolved TrainConfig, reward names, binner name and
                         fitted binner states, model geometry (text_dim, latent shape, image size)
    model.safetensors    raw weights
    ema.safetensors      EMA weights (what sampling uses by default)
    training_state.pt    optimizer, LR scheduler, EMA counter and every RNG state (torch.load(weights_only=True))

A checkpoint is written into ``.tmp-*`` (every file fsynced), renamed into place (the directory fsynced), then
``checkpoints/latest`` (a text file naming the directory) is replaced atomically; a crash (``kill -9`` at any
point, including mid-write) leaves either the old or the new checkpoint, never a partial one under a
``step_*`` name. Pruning (``keep``) renames a checkpoint out of the ``step_*`` namespace before deleting it, and
leftovers of killed writes (``.tmp-*``, ``.old-*``) are removed by the next save. ``training_state.pt`` is read
with ``torch.load(weights_only=True)``, which refuses pickled code; weights are safetensors (no pickle at all).
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "resolve_checkpoint",
    "read_checkpoint_meta",
    "load_state_dict_file",
    "load_training_state",
    "capture_rng",
    "restore_rng",
    "load_for_inference",
    "load_into",
    "list_checkpoints",
]

import json
import logging
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import CheckpointError, MiroError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "miro-checkpoint"
CHECKPOINT_VERSION = 1
_FILES = ("config.json", "model.safetensors", "ema.safetensors", "training_state.pt")


# ---------------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------------
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state that influences training, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: give every tensor its own contiguous CPU copy
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def list_checkpoints(root: str | Path) -> list[Path]:
    """The complete ``step_*`` checkpoints under ``root``, oldest first (a directory missing a file is skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and all((p / f).is_file() for f in _FILES))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _remove(path: Path, root: Path) -> None:
    """Take ``path`` out of the ``step_*`` namespace atomically, then delete it."""
    trash = root / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    """Delete ``.tmp-*`` / ``.old-*`` directories of killed writes (one training job writes a checkpoints dir)."""
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
            log.info("removing %s, left by an interrupted checkpoint write", p)
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    meta: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically and point ``root/latest`` at it; keep the newest ``keep`` (0 = all)."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        full_meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "step": int(step),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **meta,
        }
        save_file(_weights(model_state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_file(_weights(ema_state), str(tmp / "ema.safetensors"), metadata={"format": "pt"})
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / "config.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        for f in _FILES:
            _fsync_file(tmp / f)
        _fsync_dir(tmp)
        if final.exists():
            _remove(final, root)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".latest-{uuid.uuid4().hex[:8]}"
    pointer.write_text(name + "\n")
    _fsync_file(pointer)
    os.replace(pointer, root / "latest")
    _fsync_dir(root)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            _remove(old, root)
    log.info("saved checkpoint %s", final)
    return final


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a training output / checkpoints dir (-> its latest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"Checkpoint {p} does not exist; pass a checkpoint directory or a training --out dir.")
    if (p / "config.json").is_file() or (p / "model.safetensors").is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.is_file():
            target = root / latest.read_text().strip()
            if target.name.startswith("step_") and all((target / f).is_file() for f in _FILES):
                return target
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(
        f"{p} is not a MIRO checkpoint: no config.json + model.safetensors and no checkpoints/latest. Pass a "
        "checkpoint directory (…/checkpoints/step_XXXXXXXX) or the --out dir of `miro train`."
    )


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    p = resolve_checkpoint(path)
    missing = [f for f in _FILES if not (p / f).exists()]
    if missing:
        raise CheckpointError(f"Checkpoint {p} is incomplete: missing {', '.join(missing)}. Use another checkpoint.")
    try:
        meta = json.loads((p / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Checkpoint {p}: config.json is corrupt ({exc}).") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"Checkpoint {p}: config.json is not a {CHECKPOINT_FORMAT} file.")
    if int(meta.get("format_version", -1)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint {p} has format version {meta.get('format_version')}, newer than this MIRO "
            f"({CHECKPOINT_VERSION}); upgrade miro."
        )
    for key in ("train_config", "reward_names", "model_info", "step"):
        if key not in meta:
            raise CheckpointError(f"Checkpoint {p}: config.json lacks {key!r}; it is corrupt or from another tool.")
    return p, meta


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint file {path} is corrupt or unreadable ({exc}).") from exc


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"{what} does not fit the model described by its config.json ({' '.join(first)}). The checkpoint is "
            "incompatible with the installed backbone/conditioning versions or was modified."
        ) from exc


def load_training_state(path: Path) -> dict[str, Any]:
    """``training_state.pt`` with ``weights_only=True``: tensors and plain containers only, never pickled code."""
    import pickle

    file = path / "training_state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Checkpoint file {file} holds more than tensors and plain containers (pickled objects or code), "
            f"which MIRO never loads ({str(exc).splitlines()[0] if str(exc) else 'UnpicklingError'}). It was not "
            "written by MIRO or was tampered with: use another checkpoint."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any other unpickling failure means a corrupt file
        raise CheckpointError(f"Checkpoint file {file} is corrupt ({type(exc).__name__}: {exc}).") from exc


def load_for_inference(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Build a :class:`miro_core.sampling.MiroPipeline` from a checkpoint."""
    from .._config import structure, unstructure
    from .._plugins import registry
    from ..model import build_model
    from ..sampling import MiroPipeline
    from .config import TrainConfig

    p, meta = read_checkpoint_meta(path)
    try:
        cfg = structure(meta["train_config"], TrainConfig, path="train_config")
    except MiroError as exc:
        raise CheckpointError(f"Checkpoint {p}: its train_config is not valid for this MIRO version: {exc}") from exc
    info = meta["model_info"]
    device = torch.device(device)
    text_encoder = registry("text_encoders").create(cfg.model.text_encoder.name, cfg.model.text_encoder.options)
    text_encoder.setup(device)
    autoencoder = registry("autoencoders").create(cfg.model.autoencoder.name, cfg.model.autoencoder.options)
    autoencoder.setup(device)
    latent_shape = tuple(info["latent_shape"])
    model = build_model(cfg.model, meta["reward_names"], info["text_dim"], latent_shape[0], latent_shape[1])
    load_into(model, load_state_dict_file(p / ("ema.safetensors" if use_ema else "model.safetensors")), f"Checkpoint {p}")
    model.to(device).eval()
    return MiroPipeline(
        model, text_encoder, autoencoder,
        reward_names=meta["reward_names"], image_size=info["image_size"], latent_shape=latent_shape,
        device=device, binner_states=meta.get("binner_states"), model_config=unstructure(cfg.model),
        metadata={"checkpoint": str(p), "step": meta["step"], "binner": meta.get("binner")},
    )
