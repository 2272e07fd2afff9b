"""JINA CLIP score (Koukounas et al., 2024): cosine of jina-clip text and image embeddings.

``jinaai/jina-clip-v2`` (``jina-clip-v1`` as an option) ships its model code in the repository (transformers
``auto_map``; v2 points at ``jinaai/jina-clip-implementation``), so loading it *executes Python code from the
hub*. This reward therefore refuses to load unless the user opts in with ``trust_remote_code = true`` and, for
a hub model, pins ``revision`` (and, for v2, ``code_revision``) to a 40-hex commit: a moving branch could
change the code that runs. A local ``model_path`` directory is accepted as is (the user vetted its code).

Score (as the model card's retrieval example): ``cos(encode_text(caption), encode_image(image))`` using the
model's own ``encode_text`` / ``encode_image`` (its remote processor does tokenisation and image
preprocessing; images are handed over as 8-bit RGB PIL images: a uint8 input as is, a float input quantised
with ``round(x * 255)``, the exact inverse of ``u8 / 255``, so the model sees the bytes the reference would open
from the file). Long captions are fine (v2: 8192 tokens).
"""

from __future__ import annotations

__all__ = ["JinaClipScore"]

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from miro_core import ConfigError, MiroError, Reward, config, hookimpl

from ._clip_common import check_inputs, chunks, torch_dtype
from ._pixels import to_pil_images
from ._weights import WeightSource, WeightsError, check_model_config, locate, snapshot_revision

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")


def _to_pil(images: torch.Tensor) -> list:
    """8-bit RGB PIL images of a uint8 / float ``[B, 3, H, W]`` batch (see the module doc)."""
    return to_pil_images(images)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float32))
    if isinstance(x, (list, tuple)):
        return torch.stack([_as_tensor(v) for v in x])
    raise MiroError(f"jina_clip: the model's encoder returned {type(x).__name__}, expected a tensor or array.")


class JinaClipScore(Reward):
    """JINA CLIP v2 (v1 option) cosine similarity of caption and image embeddings; needs remote-code opt-in."""

    name = "jina_clip"
    version = "1"
    uses_text = True
    max_text_tokens = None
    accepts_uint8 = True

    @config
    class Config:
        #: ``jinaai/jina-clip-v2`` or ``jinaai/jina-clip-v1``.
        model_id: str = "jinaai/jina-clip-v2"
        #: Commit (40 hex) of ``model_id`` to load; required for a hub model (remote code must be pinned).
        revision: str | None = None
        #: Commit of the code repository named in ``auto_map`` (v2: ``jinaai/jina-clip-implementation``).
        code_revision: str | None = None
        #: Explicit opt-in to executing the model repository's Python code.
        trust_remote_code: bool = False
        #: Local ``save_pretrained`` directory (with its modeling code), replacing the hub lookup.
        model_path: str | None = None
        #: Matryoshka truncation of the embeddings (v2 only; None = full 1024-d).
        truncate_dim: int | None = None
        cache_dir: str | None = None
        dtype: str = "float32"
        batch_size: int = 32

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        self.model = None
        self.device = torch.device("cpu")
        self._resolved: dict[str, str | None] = {}

    def weight_sources(self) -> list[WeightSource]:
        c = self.config
        sources = [
            WeightSource(
                role="model", repo_id=c.model_id, revision=c.revision or "main",
                required=("config.json", "model.safetensors|pytorch_model.bin"),
                optional=("configuration_clip.py", "modeling_clip.py", "processing_clip.py", "preprocessor_config.json",
                          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model"),
                local_path=c.model_path, license="CC-BY-NC-4.0 (jina-clip-v2) / Apache-2.0 (jina-clip-v1)",
            )
        ]
        if c.model_id.endswith("jina-clip-v2") and not c.model_path:
            sources.append(WeightSource(
                role="code", repo_id="jinaai/jina-clip-implementation", revision=c.code_revision or "main",
                required=("configuration_clip.py", "modeling_clip.py"),
                optional=("processing_clip.py", "eva_model.py", "hf_model.py", "rope_embeddings.py", "transform.py",
                          "modeling_lora.py", "mlp.py", "block.py", "mha.py", "embedding.py", "xlm_padding.py",
                          "stochastic_depth.py"),
                license="CC-BY-NC-4.0",
            ))
        return sources

    def _check_opt_in(self) -> None:
        c = self.config
        if not c.trust_remote_code:
            raise MiroError(
                f"Reward {self.name}: {c.model_path or c.model_id} loads Python code shipped in the model repository "
                "(transformers remote code), which this reward never runs without an explicit opt-in. Set "
                "`trust_remote_code = true` in the jina_clip options after reviewing the code, and pin `revision` "
                "(and, for jina-clip-v2, `code_revision` of jinaai/jina-clip-implementation) to a 40-hex commit."
            )
        if c.model_path:
            return
        pins = [("revision", c.revision)]
        if c.model_id.endswith("jina-clip-v2"):  # its auto_map points at jinaai/jina-clip-implementation
            pins.append(("code_revision", c.code_revision))
        for field, value in pins:
            if value is None or not _COMMIT.fullmatch(value):
                raise MiroError(
                    f"Reward {self.name}: remote code needs a pinned `{field}` (a 40-hex commit of the hub repository), "
                    f"got {value!r}; a branch name could change the code that runs. Look up the commit on the model "
                    "page or in the Hugging Face cache (snapshots/<commit>) and set it, or use a local `model_path`."
                )

    # -- loading -------------------------------------------------------------------------------------
    def setup(self, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel

        device = torch.device(device)
        if self.model is not None:
            if device != self.device:
                self.model.to(device)
                self.device = device
            return
        self._check_opt_in()
        sources = self.weight_sources()
        model_dir = locate(sources[0], cache_dir=self.config.cache_dir, reward=self.name)
        for extra in sources[1:]:
            locate(extra, cache_dir=self.config.cache_dir, reward=self.name)  # code repo present at its commit
        cfg = check_model_config(model_dir, expected_model_types=("jina_clip",), reward=self.name, allow_remote_code=True)
        if not cfg.get("auto_map"):
            raise WeightsError(f"Reward {self.name}: {model_dir}/config.json has no auto_map; it is not a jina-clip checkpoint.")
        kwargs: dict[str, Any] = {"trust_remote_code": True, "local_files_only": True, "dtype": torch_dtype(self.config.dtype)}
        if self.config.code_revision:
            kwargs["code_revision"] = self.config.code_revision
        if self.config.cache_dir:
            kwargs["cache_dir"] = self.config.cache_dir
        try:
            model = AutoModel.from_pretrained(str(model_dir), **kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise WeightsError(f"Reward {self.name}: cannot load {model_dir} with its remote code: {exc}.") from exc
        for method in ("encode_text", "encode_image"):
            if not callable(getattr(model, method, None)):
                raise WeightsError(f"Reward {self.name}: the model class {type(model).__name__} has no {method}(); not a jina-clip model.")
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self._resolved = {"model_commit": snapshot_revision(model_dir), "model_class": type(model).__name__}
        log.info("%s: loaded %s (remote code %s) on %s", self.name, model_dir, type(model).__module__, device)

    def teardown(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- scoring -------------------------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"convert_to_tensor": True}
        if self.config.truncate_dim is not None:
            kw["truncate_dim"] = self.config.truncate_dim
        return kw

    def embed(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 CPU text and image embeddings ``[B, D]`` from the model's own API (not normalised here)."""
        txt = _as_tensor(self.model.encode_text(list(prompts), **self._kwargs()))
        img = _as_tensor(self.model.encode_image(_to_pil(images), **self._kwargs()))
        return txt, img

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.model is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = []
        for sl in chunks(images.shape[0], self.config.batch_size):
            txt, img = self.embed(images[sl], list(prompts[sl]))
            out.append(torch.nn.functional.cosine_similarity(txt, img, dim=-1, eps=1e-12))
        return torch.cat(out).float() if out else torch.zeros(0)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(model_id=self.config.model_id, revision=self.config.revision, code_revision=self.config.code_revision,
                    **self._resolved)
        return meta


@hookimpl
def miro_register_rewards(register):
    register(JinaClipScore)
