"""``world_alignment``: text-image alignment from the world's own small contrastive model.

Not the evaluator: a learned CNN + transformer dual encoder (:mod:`miro_world.alignment_model`) trained
with InfoNCE and hard negatives from caption corruptions. Score = cosine similarity of the image and
caption embeddings (in [-1, 1]; higher = better aligned). Uses the shipped weights unless ``weights``
points to a directory written by ``miro world train-alignment``.
"""

from __future__ import annotations

__all__ = ["WorldAlignment"]

import hashlib
import json
from pathlib import Path

import torch

from miro_core import Reward, config, hookimpl

from .._imageops import check_images, resize


class WorldAlignment(Reward):
    """Cosine similarity of a world-trained dual encoder (image + caption)."""

    name = "world_alignment"
    version = "1"
    uses_text = True

    @config
    class Config:
        #: directory with ``alignment.json`` + ``alignment.safetensors`` (None: the shipped model)
        weights: str | None = None
        batch_size: int = 256

    def __init__(self, config=None):
        super().__init__(config)
        self._model = None
        self._device = torch.device("cpu")

    def _dir(self) -> Path:
        from ..alignment_model import SHIPPED_WEIGHTS

        return Path(self.config.weights) if self.config.weights else SHIPPED_WEIGHTS

    def setup(self, device="cpu"):
        if self._model is None:
            from ..alignment_model import load_alignment_model

            self._device = torch.device(device)
            self._model = load_alignment_model(self._dir(), self._device)

    def teardown(self):
        self._model = None

    def score(self, images, prompts):
        from ..alignment_model import tokenize

        images = check_images(images, prompts, self.name)
        self.setup(self._device)
        model = self._model
        out = []
        with torch.no_grad():
            for s in range(0, images.shape[0], self.config.batch_size):
                x = resize(images[s : s + self.config.batch_size], model.cfg.image_size).to(self._device)
                ids, lengths = tokenize(list(prompts[s : s + self.config.batch_size]), model.cfg.max_len)
                out.append(model(x, ids.to(self._device), lengths).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def metadata(self):
        meta = {**super().metadata(), "uses_text": True, "measures": "text-image alignment: cosine similarity of "
                "a small world-trained contrastive dual encoder (not the GenEval evaluator)"}
        d = self._dir()
        weights = d / "alignment.safetensors"
        if weights.exists():
            meta["model_id"] = str(d)
            meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
            info = json.loads((d / "alignment.json").read_text())
            meta["heldout_metrics"] = info.get("metrics", {})
        return meta


@hookimpl
def miro_register_rewards(register):
    register(WorldAlignment)
