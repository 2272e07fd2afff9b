"""Resolving reward weights offline: a configured local path, or the Hugging Face cache at a pinned revision.

Rewards never download at ``setup``: they describe what they need as :class:`WeightSource` objects
(``reward.weight_sources()``), and :func:`locate` finds those files locally. ``miro rewards download NAME``
(:mod:`miro_rewards.download_cmd`) is the only code path that touches the network; it uses
:func:`download`. A missing file raises a :class:`~miro_core.MiroError` naming the files, the revision,
the cache searched and the command that fetches them.

A source is either one file (``snapshot=False``, e.g. an MLP head ``.pth``) or a set of files from one
repository that a ``from_pretrained`` call reads as a directory (``snapshot=True``). ``required`` entries may
list alternatives separated by ``|`` (``"model.safetensors|pytorch_model.bin"``): the first one present wins.
"""

from __future__ import annotations

__all__ = [
    "WeightSource",
    "WeightsError",
    "locate",
    "is_present",
    "download",
    "hub_cache_dir",
    "check_model_config",
    "check_loading_info",
    "LEGACY_BUFFER_NAMES",
    "legacy_buffer_problem",
    "split_legacy_buffers",
    "report_ignored",
    "snapshot_revision",
]

import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs

from miro_core import MiroError

log = logging.getLogger(__name__)


class WeightsError(MiroError):
    """Reward weights are missing, at the wrong revision or not loadable with the configured classes."""


@attrs.frozen(kw_only=True)
class WeightSource:
    """One set of files a reward needs.

    ``role``: what the files are for ("model", "processor", "head"...); ``repo_id`` / ``revision``: where they
    live on the Hugging Face hub (revision pinned to a commit where known); ``required``: file names (``a|b``
    = either); ``optional``: fetched when the repository has them (tokenizer files...); ``snapshot``: the
    reward loads a directory (True) or the single required file (False); ``local_path``: a user-supplied
    directory (snapshot) or file (single file) that replaces the hub lookup; ``license``: of the weights.
    """

    role: str
    repo_id: str
    revision: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    snapshot: bool = True
    local_path: str | None = None
    license: str = "unknown"

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "required": list(self.required),
            "optional": list(self.optional),
            "snapshot": self.snapshot,
            "local_path": self.local_path,
            "license": self.license,
        }


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache searched: ``cache_dir`` or ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _alternatives(entry: str) -> list[str]:
    return [a.strip() for a in entry.split("|") if a.strip()]


def _cached_revisions(repo_id: str, cache: Path) -> list[str]:
    """Commits present in the cache for ``repo_id`` and refs pointing at them (for error messages)."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    out: list[str] = []
    snaps = repo_dir / "snapshots"
    if snaps.is_dir():
        out.extend(sorted(p.name for p in snaps.iterdir()))
    refs = repo_dir / "refs"
    if refs.is_dir():
        for ref in sorted(refs.rglob("*")):
            if ref.is_file():
                out.append(f"{ref.relative_to(refs)} -> {ref.read_text().strip()}")
    return out


def _fetch_hint(reward: str | None) -> str:
    if reward:
        return f"run `miro rewards download {reward}` on a machine with network access (then copy the cache)"
    return "download them with `miro rewards download NAME` on a machine with network access"


def _locate_local(source: WeightSource, reward: str | None) -> Path:
    path = Path(source.local_path).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise WeightsError(
            f"Reward {reward or '?'}: the configured local path {path} for its {source.role} weights "
            f"({source.describe()}) does not exist. Point the option at an existing "
            f"{'directory' if source.snapshot else 'file'}, or unset it to use the Hugging Face cache."
        )
    if not source.snapshot:
        if path.is_dir():
            name = _first_present(path, _alternatives(source.required[0]))
            if name is None:
                raise WeightsError(
                    f"Reward {reward or '?'}: directory {path} has no {source.required[0]} ({source.role} weights). "
                    "Pass the file itself or a directory containing it."
                )
            return path / name
        return path
    if not path.is_dir():
        raise WeightsError(
            f"Reward {reward or '?'}: the local path {path} for its {source.role} must be a directory in "
            f"`save_pretrained` layout (with {', '.join(source.required)}), not a file."
        )
    missing = [e for e in source.required if _first_present(path, _alternatives(e)) is None]
    if missing:
        raise WeightsError(
            f"Reward {reward or '?'}: local directory {path} lacks {', '.join(missing)} needed for its "
            f"{source.role} ({source.describe()}). Save the model there with `save_pretrained`, or unset the "
            "local path to use the Hugging Face cache."
        )
    return path


def _first_present(directory: Path, names: list[str]) -> str | None:
    for name in names:
        if (directory / name).is_file():
            return name
    return None


def locate(source: WeightSource, *, cache_dir: str | os.PathLike | None = None, reward: str | None = None) -> Path:
    """Find ``source`` without network: the snapshot directory (``snapshot=True``) or the file.

    Raises :class:`WeightsError` naming the missing files, the revisions present in the cache and the
    command that fetches the weights.
    """
    if source.local_path:
        return _locate_local(source, reward)
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir(cache_dir)
    found: list[Path] = []
    missing: list[str] = []
    for entry in source.required:
        hit = None
        for name in _alternatives(entry):
            res = try_to_load_from_cache(source.repo_id, name, cache_dir=str(cache), revision=source.revision)
            if isinstance(res, str):
                hit = Path(res)
                break
        if hit is None:
            missing.append(entry)
        else:
            found.append(hit)
    if missing:
        present = _cached_revisions(source.repo_id, cache)
        where = (
            f"the cache holds revision(s) {', '.join(present)} but not the configured revision {source.revision!r} "
            "(set the reward's revision option to one of them, or fetch the pinned one)"
            if present
            else f"the cache {cache} has nothing for {source.repo_id}"
        )
        raise WeightsError(
            f"Reward {reward or '?'}: missing {source.role} weights {', '.join(missing)} from "
            f"{source.describe()} ({where}). To fix: {_fetch_hint(reward)}, set HF_HUB_CACHE / the reward's "
            "cache_dir option to the cache holding them, or give a local path in the reward options."
        )
    if not source.snapshot:
        return found[0]
    dirs = {p.parent for p in found}
    if len(dirs) != 1:  # pragma: no cover - all files of one revision live in one snapshot directory
        raise WeightsError(f"Reward {reward or '?'}: files of {source.describe()} resolve to several directories: {dirs}.")
    return dirs.pop()


def is_present(source: WeightSource, *, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The located path, or None when :func:`locate` would fail."""
    try:
        return locate(source, cache_dir=cache_dir)
    except WeightsError:
        return None


def snapshot_revision(path: Path) -> str | None:
    """The commit of a hub-cache snapshot directory (``.../snapshots/<sha>[/file]``), else None."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def download(source: WeightSource, *, cache_dir: str | os.PathLike | None = None, reward: str | None = None) -> Path:
    """Fetch ``source`` into the hub cache with ``huggingface_hub`` (network). Returns :func:`locate`'s path."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    cache = str(hub_cache_dir(cache_dir))
    failures = (
        hf_errors.RepositoryNotFoundError,
        hf_errors.RevisionNotFoundError,
        hf_errors.EntryNotFoundError,
        hf_errors.LocalEntryNotFoundError,
        hf_errors.HfHubHTTPError,
        OSError,
    )
    try:
        if source.snapshot:
            listing = set(huggingface_hub.list_repo_files(source.repo_id, revision=source.revision))
            names: list[str] = []
            for entry in source.required:
                name = next((a for a in _alternatives(entry) if a in listing), None)
                if name is None:
                    raise WeightsError(
                        f"Reward {reward or '?'}: repository {source.describe()} has none of {entry}; the reward "
                        "cannot load it. Check the repository id and revision options."
                    )
                names.append(name)
            names.extend(n for n in source.optional if n in listing and n not in names)
        else:
            names = [_alternatives(source.required[0])[0]]
        for name in names:
            log.info("downloading %s from %s", name, source.describe())
            huggingface_hub.hf_hub_download(source.repo_id, name, revision=source.revision, cache_dir=cache)
    except WeightsError:
        raise
    except failures as exc:
        raise WeightsError(
            f"Reward {reward or '?'}: could not download {source.role} weights from {source.describe()}: "
            f"{type(exc).__name__}: {exc}. Check the network, the repository id and the revision (a gated "
            "repository also needs `huggingface-cli login`)."
        ) from exc
    return locate(attrs.evolve(source, local_path=None), cache_dir=cache, reward=reward)


def check_model_config(path: Path, *, expected_model_types: tuple[str, ...], reward: str, allow_remote_code: bool = False) -> dict[str, Any]:
    """Read ``config.json`` of a snapshot and refuse models that need other classes or remote code.

    The CLIP-family rewards load stock transformers classes only; a config with ``auto_map`` (custom
    Python code shipped in the repository) or another ``model_type`` is an error unless the reward opted
    into remote code.
    """
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"Reward {reward}: cannot read {cfg_path}: {exc}. Re-download the weights.") from exc
    model_type = cfg.get("model_type")
    if cfg.get("auto_map") and not allow_remote_code:
        raise WeightsError(
            f"Reward {reward}: {cfg_path} asks for remote code (auto_map {sorted(cfg['auto_map'])}); remote code is "
            f"not allowed for this reward, which loads the stock transformers classes for model_type "
            f"{'/'.join(expected_model_types)}. Point the reward at a checkpoint of that type."
        )
    if model_type not in expected_model_types:
        raise WeightsError(
            f"Reward {reward}: {cfg_path} has model_type {model_type!r}, expected {'/'.join(expected_model_types)}. "
            "The configured path or repository holds a different model; fix the model id / path option."
        )
    return cfg


#: Buffers that some library versions save in state dicts and others recompute (non-persistent): BERT/CLIP
#: ``position_ids`` (``arange``) and ``token_type_ids`` (zeros). Tensors with these names and exactly that
#: content are the only ones the loaders tolerate without a matching parameter.
LEGACY_BUFFER_NAMES = ("position_ids", "token_type_ids")


def legacy_buffer_problem(key: str, value: Any) -> str | None:
    """None when ``key`` is a legacy buffer (:data:`LEGACY_BUFFER_NAMES`) holding its deterministic content;
    otherwise why it is not (for the error message)."""
    import torch

    leaf = key.rsplit(".", 1)[-1]
    if leaf not in LEGACY_BUFFER_NAMES:
        return "not a known legacy buffer"
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex() or value.ndim not in (1, 2) \
            or (value.ndim == 2 and value.shape[0] != 1):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return f"named like the {leaf} buffer but it is not an integer [1, n] index tensor ({shape})"
    flat = value.reshape(-1).long()
    want = torch.arange(flat.numel()) if leaf == "position_ids" else torch.zeros(flat.numel(), dtype=torch.long)
    if not torch.equal(flat, want):
        what = "0, 1, 2, ..." if leaf == "position_ids" else "all zeros"
        return f"named like the {leaf} buffer but its values are not {what}: it carries information this loader would drop"
    return None


def split_legacy_buffers(state: dict[str, Any], known: Any, *, reward: str, what: str) -> tuple[dict[str, Any], list[str]]:
    """Remove the legacy buffers (:func:`legacy_buffer_problem`) that ``known`` (the model's state-dict keys)
    lacks; returns the rest and the removed keys. A tensor named like a legacy buffer but with other content
    raises :class:`WeightsError`."""
    known = set(known)
    kept, ignored = {}, []
    for key, value in state.items():
        if key not in known and key.rsplit(".", 1)[-1] in LEGACY_BUFFER_NAMES:
            problem = legacy_buffer_problem(key, value)
            if problem is not None:
                raise WeightsError(f"Reward {reward}: {what} has a tensor {key!r} {problem}. Re-download the checkpoint.")
            ignored.append(key)
        else:
            kept[key] = value
    return kept, ignored


def report_ignored(reward: str, what: str, ignored: dict[str, str] | list[str]) -> None:
    """Log the checkpoint keys a loader ignored (INFO: they are harmless by construction), with the reason."""
    if not ignored:
        return
    items = ignored.items() if isinstance(ignored, dict) else ((k, "legacy buffer") for k in ignored)
    by_reason: dict[str, list[str]] = {}
    for key, reason in items:
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        log.info("%s: ignored %d tensor(s) of %s (%s): %s", reward, len(keys), what, reason, shown)


def check_loading_info(info: dict[str, Any], *, what: str, reward: str, ignore_unexpected: tuple[str, ...] = ()) -> list[str]:
    """Fail when ``from_pretrained(..., output_loading_info=True)`` left weights randomly initialised.

    Unexpected checkpoint tensors are ignored as transformers (and the reference scripts, which load with the
    same ``from_pretrained``) ignore them; they are reported (legacy buffers at INFO, anything else as a
    WARNING naming the tensors) and returned, minus those under the ``ignore_unexpected`` prefixes (parts the
    reward deliberately does not load, e.g. the text tower of a vision-only reward)."""
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        sample = ", ".join(map(str, (missing + mismatched)[:6]))
        raise WeightsError(
            f"Reward {reward}: loading {what} left {len(missing)} weight(s) missing and {len(mismatched)} with the "
            f"wrong shape (e.g. {sample}); the checkpoint does not match the model class. Re-download it or fix "
            "the model id."
        )
    unexpected = sorted(str(k) for k in (info.get("unexpected_keys") or []) if not any(str(k).startswith(p) for p in ignore_unexpected))
    legacy = [k for k in unexpected if k.rsplit(".", 1)[-1] in LEGACY_BUFFER_NAMES]
    other = [k for k in unexpected if k not in legacy]
    report_ignored(reward, what, legacy)
    if other:
        shown = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
        log.warning("%s: %s has %d tensor(s) the model class does not use (ignored, as transformers does): %s",
                    reward, what, len(other), shown)
    return unexpected
