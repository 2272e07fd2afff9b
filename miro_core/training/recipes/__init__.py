"""Named training recipes: TOML files mirroring :class:`~miro_core.training.TrainConfig` that ``miro train
--recipe NAME`` starts from (``--config`` / flags / ``--set`` override them).

``paper``: the official MIRO recipe (DESIGN.md section 1, ``shared/reference/official-miro.md``): the released
``rin`` + :class:`~miro_core.cad_conditioning.CADConditioning` configuration (360,411,664 parameters), FLAN-T5-XL,
SDXL-VAE with the release's per-channel normalisation and sampled posterior, logit-normal times, learned
log-variance loss weighting, LAMB (lr 1e-3, betas 0.9 / 0.999, coupled L2 weight decay 0.01, trust ratio on the
decayed group only), 5k warmup steps and a cosine of rate 0.8, clipping at 2, EMA 0.9999 without warmup, no
caption dropout, 64 quantile bins, global batch 1024 for 500k steps.
"""

from __future__ import annotations

__all__ = ["RECIPES", "load_recipe"]

from pathlib import Path
from typing import Any

from ..._errors import ConfigError, did_you_mean

_DIR = Path(__file__).parent
RECIPES = tuple(sorted(p.stem for p in _DIR.glob("*.toml")))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe ``name`` as a nested dict (a partial TrainConfig)."""
    import tomllib

    path = _DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"Unknown recipe {name!r}.{did_you_mean(name, RECIPES)} Available recipes: {', '.join(RECIPES)}.")
    return tomllib.loads(path.read_text())
