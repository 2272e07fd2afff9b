"""The ``world`` data source: procedural scenes with a web-like quality spectrum, generated on the fly.

Sample ``i`` depends only on ``(seed, i)``: its id is ``world-<seed>-<i>``, so any shard or subset can be
regenerated anywhere. ``Sample.meta`` keeps the ground truth: the scene graph, the degradations applied
and the caption corruption (or None), plus the true caption.
"""

from __future__ import annotations

__all__ = ["WorldSource", "make_sample"]

from collections.abc import Iterator
from typing import Any

import numpy as np

from miro_core import DataSource, Sample, config, hookimpl

from .captions import make_caption, phrase, short_phrase, spec_from_scene
from .degrade import apply_degradations, sample_degradations
from .scene import render, sample_scene, scene_rng


#: random stream of the synthetic-caption draw (streams 0.. are the scene's own)
_SYNTH_STREAM = 31


def make_sample(seed: int, index: int, cfg: Any) -> Sample:
    """Build sample ``index`` of a world with config ``cfg`` (a :class:`WorldSource.Config`)."""
    rng = scene_rng(seed, index)
    scene = sample_scene(rng, backdrop_prob=cfg.p_backdrop)
    caption, short, corruption, _ = make_caption(scene, rng, partial_prob=cfg.p_partial_caption,
                                                 wrong_prob=cfg.p_wrong_caption)
    degradations = sample_degradations(rng, {
        "blur": cfg.p_blur, "noise": cfg.p_noise, "low_contrast": cfg.p_low_contrast,
        "clutter": cfg.p_clutter, "jpeg": cfg.p_jpeg,
    })
    synthetic = False
    if cfg.p_synthetic_caption > 0:
        # paper section 3.3: a recaptioner that describes the whole scene correctly; its own random stream, so
        # the scene, the web-like caption and the degradations of every sample are those of the default world
        srng = scene_rng(seed, index, _SYNTH_STREAM)
        if srng.random() < cfg.p_synthetic_caption:
            synthetic = True
            spec = spec_from_scene(scene)
            caption, short, corruption = phrase(spec, srng), short_phrase(spec), None
    img = render(scene, cfg.image_size, chw=True).transpose(1, 2, 0)
    if degradations:
        img = apply_degradations(img, degradations)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    meta = {
        "scene": scene.as_dict(),
        "degradations": degradations,
        "caption_corruption": corruption,
        "true_caption": phrase(spec_from_scene(scene), None),
    }
    if cfg.p_synthetic_caption > 0:
        meta["synthetic_caption"] = synthetic
    return Sample(id=f"world-{seed}-{index}", caption=caption, image=image, short_caption=short, meta=meta)


class WorldSource(DataSource):
    """Coloured shapes with counts, colours and relations; degraded images and imperfect captions.

    Images are uint8 HWC arrays. Default probabilities give roughly half the samples at least one
    degradation and 30% imperfect captions (half partial, half wrong).
    """

    name = "world"

    @config
    class Config:
        num_samples: int = 20000
        seed: int = 0
        image_size: int = 32
        p_blur: float = 0.25
        p_noise: float = 0.25
        p_low_contrast: float = 0.2
        p_clutter: float = 0.1
        p_jpeg: float = 0.1
        #: chance of a saturated colour backdrop instead of the dark background
        p_backdrop: float = 0.1
        p_partial_caption: float = 0.15
        p_wrong_caption: float = 0.15
        #: chance that a sample's caption is a synthetic (re-captioned) one: a true, complete description of the
        #: scene in a random template (paper section 3.3, 50% real + 50% synthetic); 0 = the web-like captions only
        p_synthetic_caption: float = 0.0

    def __len__(self) -> int:
        return int(self.config.num_samples)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"world sample {index} out of range (num_samples={n})")
        return make_sample(self.config.seed, index % n, self.config)

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples(0, 1)

    def iter_samples(self, rank: int = 0, world_size: int = 1) -> Iterator[Sample]:
        for i in range(rank, len(self), world_size):
            yield make_sample(self.config.seed, i, self.config)


@hookimpl
def miro_register_data_sources(register):
    register(WorldSource)
