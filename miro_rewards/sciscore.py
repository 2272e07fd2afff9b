"""SciScore (Science-T2I, Li et al., 2025): a CLIP-H fine-tuned to prefer scientifically plausible images.

Score = ``logit_scale.exp() * cosine(image_embeds, text_embeds)`` with the ``Jialuo21/SciScore`` ``CLIPModel``
and its own processor, as the reference evaluation does (the MIRO reference stores it / 100).
"""

from __future__ import annotations

__all__ = ["SciScore"]

import torch

from miro_core import config, hookimpl

from ._clip_common import HFClipReward


class SciScore(HFClipReward):
    """SciScore: scientific-plausibility reward, logit_scale.exp() * cosine (CLIP-H/14)."""

    name = "sciscore"
    version = "2"  # 2: 8-bit PIL preprocessing of the reference processor by default (preprocess option)
    model_license = "see the Jialuo21/SciScore model card (not stated in our sources)"

    @config
    class Config:
        model_id: str = "Jialuo21/SciScore"
        #: No commit could be verified offline: ``main`` until pinned (see docs/rewards.md).
        revision: str = "main"
        model_path: str | None = None
        #: None: the processor files come from ``model_id`` (the reference uses the model's own processor).
        processor_id: str | None = None
        processor_revision: str | None = None
        processor_path: str | None = None
        #: ``original``: the reference processor's 8-bit PIL resize, bit for bit (CPU); ``fast``: float tensors
        #: resized on the reward's device (batched; differs from the reference by resampling rounding).
        preprocess: str = "original"
        cache_dir: str | None = None
        dtype: str = "float32"
        batch_size: int = 32

    def formula(self, cosine: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        return logit_scale * cosine


@hookimpl
def miro_register_rewards(register):
    register(SciScore)
