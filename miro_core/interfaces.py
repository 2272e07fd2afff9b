"""The abstract component interfaces (DESIGN.md section 4).

Names are a contract; signatures may grow (new optional arguments at the end) but never break.
Every component class has a string class attribute ``name`` and a nested frozen attrs ``Config``;
instances are built by the registries as ``cls(config)``.
"""

from __future__ import annotations

__all__ = [
    "Component",
    "Reward",
    "Binner",
    "Backbone",
    "Guidance",
    "TextEncoder",
    "Autoencoder",
    "Evaluator",
    "Suite",
    "DataSource",
    "Sample",
    "Command",
    "MISSING_BIN",
]

import abc
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np
import torch
from torch import nn

from ._config import EmptyConfig, unstructure

if TYPE_CHECKING:
    import argparse

#: Bin value stored for a missing (NaN) score.
MISSING_BIN = -1


class Component:
    """Mixin for registered components: ``name``, ``Config`` and ``self.config``."""

    name: ClassVar[str]
    Config: ClassVar[type] = EmptyConfig

    def __init__(self, config: Any = None):
        self.config = config if config is not None else type(self).Config()

    def config_dict(self) -> dict[str, Any]:
        return unstructure(self.config)


# ---------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------
class Reward(Component, abc.ABC):
    """A reward model r(image, caption) -> float, higher is better.

    Contract:
      * ``setup(device)`` loads weights (never at import or construction time); it is idempotent.
      * ``score(images, prompts)`` takes float32 images ``[B, 3, H, W]`` in ``[0, 1]`` RGB (any size: the
        reward applies its own preprocessing) and a list of ``B`` captions; returns a float tensor ``[B]``.
        A score that cannot be computed for one sample is NaN (the pipeline records it as a failure).
      * ``metadata()`` returns provenance (model id, revision, reward version) stored with the scores.
    """

    #: Bump when a change makes scores incomparable with earlier ones (the store refuses to mix them).
    version: ClassVar[str] = "1"
    #: False for rewards that ignore the caption (pure image quality).
    uses_text: ClassVar[bool] = True
    #: Token limit of the text encoder, or None if unlimited. Longer captions use the sample's short
    #: caption when the data provides one; otherwise they are truncated (and counted).
    max_text_tokens: ClassVar[int | None] = None
    #: True for rewards meant only for evaluation (e.g. ``openai_clip``), not for conditioning.
    evaluation_only: ClassVar[bool] = False

    def setup(self, device: str | torch.device = "cpu") -> None:  # noqa: B027 - optional
        """Load weights onto ``device``. Default: nothing to load."""

    def teardown(self) -> None:  # noqa: B027 - optional
        """Free memory held by weights (the pipeline calls this before loading the next heavy reward)."""

    @abc.abstractmethod
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores ``[B]`` for images ``[B,3,H,W]`` in [0,1] and their captions."""

    def text_fits(self, prompt: str) -> bool:
        """Whether ``prompt`` fits the reward's text limit (rewards with a tokenizer override this)."""
        return True

    def metadata(self) -> dict[str, Any]:
        """Provenance stored beside the scores."""
        return {"reward": self.name, "version": self.version, "config": self.config_dict()}


# ---------------------------------------------------------------------------------------------------
# Binners
# ---------------------------------------------------------------------------------------------------
class Binner(Component, abc.ABC):
    """Maps raw scores to integer bins ``0..num_bins-1`` (``MISSING_BIN`` for NaN).

    ``fit`` returns a JSON-serialisable state; ``transform`` uses only that state, so a binning can be
    stored, reloaded and applied to new scores (e.g. the guidance targets at sampling time).
    """

    @property
    def num_bins(self) -> int:
        return int(getattr(self.config, "num_bins"))

    @abc.abstractmethod
    def fit(self, scores: np.ndarray) -> dict[str, Any]:
        """Fit on a 1-D array of raw scores (may contain NaN / inf); return a JSON-serialisable state."""

    @abc.abstractmethod
    def transform(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Bins as int16 array of the same shape; NaN -> ``MISSING_BIN``."""

    def fit_transform(self, scores: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        state = self.fit(scores)
        return self.transform(scores, state), state

    @staticmethod
    def levels(bins: np.ndarray, num_bins: int) -> np.ndarray:
        """Normalised levels ``k/(B-1)`` in [0, 1] as float32; missing bins -> NaN."""
        bins = np.asarray(bins)
        out = bins.astype(np.float32) / max(num_bins - 1, 1)
        out[bins < 0] = np.nan
        return out


# ---------------------------------------------------------------------------------------------------
# Model components
# ---------------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """A denoiser ``forward(x_t, t, context, context_mask) -> v`` with ``v.shape == x_t.shape``.

    ``x_t``: ``[B, C, H, W]``; ``t``: ``[B]`` in [0, 1] (1 = pure noise); ``context``: ``[B, L, D]`` tokens
    (text tokens followed by reward tokens); ``context_mask``: ``[B, L]`` bool, True = attend.
    Self-conditioning state, where a backbone has it, is its own business.

    ``train_uniforms``: names of per-sample random draws the backbone needs in training (e.g. which samples
    are self-conditioned). The training loop draws one uniform in [0, 1) per sample and name from its seeded
    generator and passes them as keyword arguments (``forward(..., self_cond=u)``), so a resumed or a DDP run
    draws exactly what a single uninterrupted run does. ``default_conditioning`` (``module:Class``) names the
    conditioning module the backbone was designed with; empty = :class:`miro_core.conditioning.RewardConditioning`.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = EmptyConfig
    train_uniforms: ClassVar[tuple[str, ...]] = ()
    default_conditioning: ClassVar[str] = ""

    def __init__(self, config: Any = None):
        super().__init__()
        self.config = config if config is not None else type(self).Config()

    def config_dict(self) -> dict[str, Any]:
        return unstructure(self.config)

    @abc.abstractmethod
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        ...


class Guidance(Component, abc.ABC):
    """Combines velocity predictions for positive / negative reward targets into one velocity.

    ``__call__(model_fn, x_t, t, positive, negative)``: ``model_fn(x, t, cond) -> v`` evaluates the model for
    a batch of conditioning; ``positive`` / ``negative`` are conditioning batches (see
    :class:`miro_core.sampling` for their type). Strategies evaluate both branches in one batched call.
    """

    @abc.abstractmethod
    def __call__(self, model_fn: Any, x_t: torch.Tensor, t: torch.Tensor, positive: Any, negative: Any) -> torch.Tensor:
        ...


class TextEncoder(Component, abc.ABC):
    """Captions -> ``(tokens [B, L, D] float, mask [B, L] bool)``; ``dim`` = D."""

    dim: int

    def setup(self, device: str | torch.device = "cpu") -> None:  # noqa: B027
        """Load weights."""

    @abc.abstractmethod
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ...


class Autoencoder(Component, abc.ABC):
    """Images in [0, 1] ``[B,3,H,W]`` <-> latents ``[B,C,h,w]`` (normalised to roughly unit variance)."""

    def setup(self, device: str | torch.device = "cpu") -> None:  # noqa: B027
        """Load weights."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent of a square image of side ``image_size``."""


class Evaluator(Component, abc.ABC):
    """Evaluates a generator on a prompt set; returns a flat ``{metric: float}`` dict."""

    @abc.abstractmethod
    def evaluate(self, generate: Any, **kwargs: Any) -> dict[str, float]:
        """``generate(prompts, **sampling_kwargs) -> images [B,3,H,W] in [0,1]``."""


class Suite(Component, abc.ABC):
    """A named evaluation (``miro eval --suite NAME``): a prompt set, how to generate, how to score.

    ``run(out, pipeline=..., images=..., progress=...)`` evaluates either a model (``pipeline``: a
    :class:`miro_core.sampling.MiroPipeline` or any ``generate(prompts, **kw) -> [B,3,H,W]`` callable) or a
    folder of images another model produced (``images``), writes ``metrics.json`` and ``report.md`` into
    ``out`` and returns the metrics. Generation into ``out`` is resumable: a re-run keeps the images already
    written. ``progress(total, desc)`` returns a bar with ``update(n)`` / ``close()`` (None: no bars).
    """

    #: True when the suite can score a folder of images (``miro eval --images DIR``)
    accepts_images: ClassVar[bool] = True
    #: True when the suite can generate with a model (``--pretrained`` / ``--checkpoint``)
    accepts_model: ClassVar[bool] = True

    @abc.abstractmethod
    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        """Evaluate into the folder ``out``; returns the ``metrics.json`` content."""


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
@attrs.frozen
class Sample:
    """One (image, caption) pair.

    ``image`` is whatever is cheapest to carry to a decode worker: encoded bytes, a path, a PIL image, a
    uint8 HWC array or a float CHW tensor in [0, 1]; :func:`miro_core.data.to_tensor` decodes all of them.
    """

    id: str
    caption: str
    image: Any
    short_caption: str | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)


class DataSource(Component, abc.ABC):
    """An iterable of :class:`Sample` with unique ids, in a deterministic order.

    ``iter_samples(rank, world_size)`` yields the samples whose position ``i`` has ``i % world_size == rank``;
    sources that can skip cheaply override it.
    """

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Sample]:
        ...

    def iter_samples(self, rank: int = 0, world_size: int = 1) -> Iterator[Sample]:
        for i, sample in enumerate(self):
            if i % world_size == rank:
                yield sample

    def __len__(self) -> int:  # optional: sources of unknown length raise TypeError
        raise TypeError(f"data source {self.name!r} does not know its length")


# ---------------------------------------------------------------------------------------------------
# CLI extension
# ---------------------------------------------------------------------------------------------------
class Command(Component, abc.ABC):
    """A ``miro`` sub-command. ``name`` may contain a space for nested commands (``"store info"``)."""

    help: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027
        """Declare arguments."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int | None:
        """Run; return the exit status (None = 0). Raise MiroError for user errors."""
