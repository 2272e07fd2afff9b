"""Shared machinery of the Hugging Face text encoders: lazy loading, errors for missing weights,
tokenisation to ``(tokens [B,L,D] float32, mask [B,L] bool)``."""

from __future__ import annotations

__all__ = ["HFTextEncoder", "resolve_source", "DTYPES"]

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from miro_core import ConfigError, MiroError, TextEncoder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists() or source.count("/") > 1


def resolve_source(source: str, what: str, how: str) -> tuple[str, bool]:
    """``(path_or_id, is_local)``; raise :class:`MiroError` when a path is given but does not exist."""
    if _looks_like_path(source):
        p = Path(source).expanduser()
        if not p.exists():
            raise MiroError(f"{what}: model path {str(p)!r} does not exist. {how}")
        return str(p), True
    return source, False


class HFTextEncoder(TextEncoder):
    """Base of the built-in encoders. Subclasses define ``_source()``, ``_load(source, revision)`` returning
    ``(tokenizer, model)``, ``_hidden_size(config)`` and ``_how_to_get()``."""

    def __init__(self, config: Any = None):
        super().__init__(config)
        dtype = getattr(self.config, "dtype", "float32")
        if dtype not in DTYPES:
            raise ConfigError(f"text encoder {self.name!r}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
        self._tokenizer = None
        self._model = None
        self._device = torch.device("cpu")
        self._dim: int | None = None

    # -- subclass hooks -----------------------------------------------------------------------------
    def _source(self) -> str:
        return str(self.config.model)

    def _revision(self) -> str | None:
        return getattr(self.config, "revision", None)

    def _how_to_get(self) -> str:
        raise NotImplementedError

    def _kw(self, local: bool) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments for Hub-style configs (``revision``, ``local_files_only``)."""
        kw: dict[str, Any] = {"local_files_only": local or getattr(self.config, "local_files_only", False)}
        revision = getattr(self.config, "revision", None)
        if not local and revision:
            kw["revision"] = revision
        return kw

    def _load(self, source: str, revision: str | None, local: bool):
        raise NotImplementedError

    def _load_config(self, source: str, revision: str | None, local: bool):
        raise NotImplementedError

    def _hidden_size(self, cfg: Any) -> int:
        return int(cfg.hidden_size)

    def _hidden_states(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # -- public API ---------------------------------------------------------------------------------
    def _what(self) -> str:
        rev = self._revision()
        return f"text encoder {self.name!r} ({self._source()}" + (f" @ {rev}" if rev else "") + ")"

    def _wrap(self, exc: Exception) -> MiroError:
        return MiroError(f"Could not load {self._what()}: {type(exc).__name__}: {exc}. {self._how_to_get()}")

    @property
    def dim(self) -> int:  # type: ignore[override]
        """Token width; read from the model config (no weights loaded) when not set up yet."""
        if self._dim is None:
            source, local = resolve_source(self._source(), self._what(), self._how_to_get())
            try:
                cfg = self._load_config(source, self._revision(), local)
            except (OSError, ValueError) as exc:
                raise self._wrap(exc) from exc
            self._dim = self._hidden_size(cfg)
        return self._dim

    def setup(self, device: str | torch.device = "cpu") -> None:
        self._device = torch.device(device)
        if self._model is None:
            source, local = resolve_source(self._source(), self._what(), self._how_to_get())
            try:
                self._tokenizer, model = self._load(source, self._revision(), local)
            except (OSError, ValueError) as exc:
                raise self._wrap(exc) from exc
            dtype = DTYPES[getattr(self.config, "dtype", "float32")]
            self._model = model.to(dtype=dtype).eval().requires_grad_(False)
            self._dim = self._hidden_size(self._model.config)
            log.info("loaded %s (%d-d tokens)", self._what(), self._dim)
        self._model.to(self._device)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._model is None:
            self.setup(self._device)
        batch = self._tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=int(self.config.max_length),
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self._device)
        mask = batch["attention_mask"].to(self._device)
        hidden = self._hidden_states(self._model, ids, mask).float()
        mask = mask.bool()
        hidden = hidden * mask[..., None]
        return hidden, mask
