"""OpenAI CLIP score (CLIPScore, Hessel et al., 2021) with ``openai/clip-vit-large-patch14``.

Score = ``100 * max(cosine(image_embeds, text_embeds), 0)`` in [0, 100]. Evaluation only: the MIRO paper uses
it as an out-of-distribution metric that no model is conditioned on.
"""

from __future__ import annotations

__all__ = ["OpenAIClipScore"]

import torch

from miro_core import config, hookimpl

from ._clip_common import HFClipReward


class OpenAIClipScore(HFClipReward):
    """CLIPScore with OpenAI CLIP ViT-L/14: 100 * max(cosine, 0); evaluation only."""

    name = "openai_clip"
    version = "2"  # 2: 8-bit PIL preprocessing of the reference processor by default (preprocess option)
    evaluation_only = True
    model_license = "MIT (OpenAI CLIP)"

    @config
    class Config:
        model_id: str = "openai/clip-vit-large-patch14"
        revision: str = "32bd64288804d66eefd0ccbe215aa642df71cc41"
        model_path: str | None = None
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
        return 100.0 * cosine.clamp_min(0.0)


@hookimpl
def miro_register_rewards(register):
    register(OpenAIClipScore)
