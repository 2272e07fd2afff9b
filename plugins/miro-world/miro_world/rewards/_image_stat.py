"""Base class of the world's image-only rewards: a pure function of the image at a working resolution."""

from __future__ import annotations

__all__ = ["ImageStatReward"]

from collections.abc import Callable
from typing import ClassVar

import torch

from miro_core import Reward, config

from .._imageops import check_images


class ImageStatReward(Reward):
    """Scores ``compute(images, resolution)``; subclasses set ``name``, ``version``, ``measures``, ``compute``."""

    uses_text = False
    #: what the reward measures (stored in the provenance)
    measures: ClassVar[str] = ""
    compute: ClassVar[Callable[[torch.Tensor, int], torch.Tensor]]

    @config
    class Config:
        #: working resolution (images are resized to it first, so scores compare across sizes)
        resolution: int = 32

    def score(self, images, prompts):
        images = check_images(images, prompts, self.name)
        with torch.no_grad():
            return type(self).compute(images, self.config.resolution)

    def metadata(self):
        return {**super().metadata(), "measures": self.measures, "uses_text": False}
