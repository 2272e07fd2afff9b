"""PickScore (Kirstain et al., 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences.

Score = ``logit_scale.exp() * cosine(image_embeds, text_embeds)`` with the PickScore_v1 ``CLIPModel`` and the
processor (image preprocessing + tokenizer) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as the reference
implementation does. Typical values for natural images: about 18..24 (the MIRO paper reports it / 100).
"""

from __future__ import annotations

__all__ = ["PickScore"]

import torch

from miro_core import config, hookimpl

from ._clip_common import HFClipReward


class PickScore(HFClipReward):
    """PickScore v1: human-preference reward, logit_scale.exp() * cosine (CLIP-H/14)."""

    name = "pick"
    version = "2"  # 2: 8-bit PIL preprocessing of the reference processor by default (preprocess option)
    model_license = "MIT (PickScore repository); see the yuvalkirstain/PickScore_v1 model card"
    processor_license = "MIT (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"

    @config
    class Config:
        #: Hugging Face repository of the CLIPModel weights.
        model_id: str = "yuvalkirstain/PickScore_v1"
        #: Pinned commit of ``model_id``.
        revision: str = "a4e4367c6dfa7288a00c550414478f865b875800"
        #: Local ``save_pretrained`` directory replacing the hub lookup of the model.
        model_path: str | None = None
        #: Repository of the processor (image preprocessing + tokenizer).
        processor_id: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        processor_revision: str | None = "1c2b8495b28150b8a4922ee1c8edee224c284c0c"
        processor_path: str | None = None
        #: Hugging Face hub cache to search (default: ``$HF_HUB_CACHE``).
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
    register(PickScore)
