"""Sampling: conditioning batches, the guided ODE sampler and :class:`MiroPipeline`.

``MiroPipeline.from_checkpoint(dir)`` rebuilds text encoder, autoencoder and model from the checkpoint's
``config.json`` and samples with any registered guidance strategy (default ``multi_reward_cfg``, paper eq. 3).
"""

from __future__ import annotations

__all__ = [
    "Cond",
    "MiroPipeline",
    "isolate_reward",
    "interpolate_rewards",
    "resolve_targets",
    "save_images",
    "image_grid",
]

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ._errors import ConfigError, did_you_mean
from ._plugins import registry
from .flow import integrate

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Conditioning batches
# ---------------------------------------------------------------------------------------------------
@attrs.define
class Cond:
    """A batch of conditioning: text tokens ``[B,L,D]``, text mask ``[B,L]`` bool, reward levels ``[B,N]``."""

    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    levels: torch.Tensor

    def __len__(self) -> int:
        return int(self.text_tokens.shape[0])

    @staticmethod
    def _pad(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - tokens.shape[1]
        if extra <= 0:
            return tokens, mask
        tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
        return tokens, mask

    @staticmethod
    def cat(a: Cond, b: Cond) -> Cond:
        """Concatenate along the batch (text padded to the longer sequence with masked zeros)."""
        length = max(a.text_tokens.shape[1], b.text_tokens.shape[1])
        ta, ma = Cond._pad(a.text_tokens, a.text_mask, length)
        tb, mb = Cond._pad(b.text_tokens, b.text_mask, length)
        return Cond(torch.cat([ta, tb]), torch.cat([ma, mb]), torch.cat([a.levels, b.levels]))

    def with_text(self, text: Cond) -> Cond:
        """This batch with the text of ``text`` (a batch of 1 is broadcast), e.g. the empty caption."""
        n = len(self)
        tokens, mask = text.text_tokens, text.text_mask
        if tokens.shape[0] == 1 and n != 1:
            tokens, mask = tokens.expand(n, -1, -1), mask.expand(n, -1)
        return Cond(tokens, mask, self.levels)

    def to(self, device: torch.device | str) -> Cond:
        return Cond(self.text_tokens.to(device), self.text_mask.to(device), self.levels.to(device))


# ---------------------------------------------------------------------------------------------------
# Reward targets
# ---------------------------------------------------------------------------------------------------
def resolve_targets(reward_names: Sequence[str], targets: Mapping[str, float] | None, default: float, what: str) -> list[float]:
    """Levels for every reward (``default`` where unspecified); rejects unknown names and levels outside [0, 1].

    A NaN level is allowed: it asks for the model's "missing score" token.
    """
    targets = dict(targets or {})
    names = list(reward_names)
    for name, value in targets.items():
        if name not in names:
            have = ", ".join(names) if names else "none (an unconditioned baseline)"
            raise ConfigError(
                f"The checkpoint was not trained with reward {name!r} ({what}).{did_you_mean(name, names)} "
                f"Its rewards: {have}."
            )
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} level for {name!r} must be a number in [0, 1] (got {value!r}).") from None
        if not math.isnan(v) and not (0.0 <= v <= 1.0):
            raise ConfigError(
                f"{what} level for {name!r} is {v}, outside [0, 1]; levels are normalised bins k/(B-1), "
                "1.0 = best bin, 0.0 = worst."
            )
        targets[name] = v
    return [float(targets.get(n, default)) for n in names]


def isolate_reward(names: Sequence[str], name: str) -> tuple[dict[str, float], dict[str, float]]:
    """Guide along one reward only: s+ = 1 everywhere, s- = 1 except s-[name] = 0."""
    if name not in names:
        raise ConfigError(f"Reward {name!r} is not among {list(names)}.{did_you_mean(name, names)}")
    return {n: 1.0 for n in names}, {n: (0.0 if n == name else 1.0) for n in names}


def interpolate_rewards(names: Sequence[str], a: str, b: str, t: float) -> tuple[dict[str, float], dict[str, float]]:
    """Trade off rewards ``a`` and ``b``: s+ = 1 everywhere, s-[a] = t, s-[b] = 1 - t, other s- = 1."""
    for n in (a, b):
        if n not in names:
            raise ConfigError(f"Reward {n!r} is not among {list(names)}.{did_you_mean(n, names)}")
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"interpolation weight t must be in [0, 1] (got {t}).")
    neg = {n: 1.0 for n in names}
    neg[a], neg[b] = float(t), float(1.0 - t)
    return {n: 1.0 for n in names}, neg


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------
def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """``[B,3,H,W]`` -> one ``[3, H', W']`` grid (1 px padding)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images.float().clamp(0, 1), nrow=nrow, padding=1)


def save_images(images: torch.Tensor, out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each image as ``{prefix}_{i:04d}.png``; returns the paths."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    arr = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i, a in enumerate(arr):
        p = out / f"{prefix}_{i:04d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------
def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _ModelFn:
    """``model_fn(x, t, cond) -> v`` for guidance strategies (no grad, bf16 autocast on CUDA)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model
        self.device = device
        self.stateful = bool(getattr(model, "stateful", False))
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        with _autocast(self.device):
            v = self.model(x, t, cond.text_tokens, cond.text_mask, cond.levels)
        return v.to(x.dtype)


class MiroPipeline:
    """Text + reward targets -> images, with multi-reward classifier-free guidance.

    ``pipe(prompts, reward_targets={"aesthetic": 1.0}, guidance_scale=7.0)``; unspecified positive targets
    default to 1.0, negative ones to 0.0.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        text_encoder: Any,
        autoencoder: Any,
        *,
        reward_names: Sequence[str],
        image_size: int,
        latent_shape: Sequence[int],
        device: torch.device | str = "cpu",
        binner_states: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.reward_names = tuple(reward_names)
        self.image_size = int(image_size)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.device = torch.device(device)
        self.binner_states = dict(binner_states or {})
        self.metadata = dict(metadata or {})
        self._empty: Cond | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> MiroPipeline:
        """Rebuild everything from a checkpoint directory (or a training output dir: its latest checkpoint)."""
        from .training.checkpoint import load_for_inference

        return load_for_inference(path, device=device, use_ema=use_ema)

    # -- helpers ---------------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens, mask = self.text_encoder.encode(list(prompts))
        return tokens.to(self.device, torch.float32), mask.to(self.device, torch.bool)

    def empty_text(self) -> Cond:
        if self._empty is None:
            tokens, mask = self.encode_text([""])
            self._empty = Cond(tokens, mask, tokens.new_zeros(1, len(self.reward_names)))
        return self._empty

    def levels(self, targets: Mapping[str, float] | None, default: float, n: int, what: str) -> torch.Tensor:
        vals = resolve_targets(self.reward_names, targets, default, what)
        return torch.tensor(vals, dtype=torch.float32, device=self.device).reshape(1, -1).expand(n, -1).contiguous()

    def guidance_strategy(self, name: str, scale: float, interval: tuple[float, float] | None):
        reg = registry("guidance").get(name)
        fields = {f.name for f in attrs.fields(reg.cls.Config)}
        opts: dict[str, Any] = {}
        if "scale" in fields:
            opts["scale"] = float(scale)
        if interval is not None:
            if "interval" not in fields:
                raise ConfigError(f"Guidance strategy {name!r} does not support a guidance interval.")
            a, b = (float(v) for v in interval)
            if not 0.0 <= a <= b <= 1.0:
                raise ConfigError(f"guidance interval must satisfy 0 <= a <= b <= 1 (got {interval}).")
            opts["interval"] = (a, b)
        return registry("guidance").create(name, opts)

    # -- sampling --------------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: str | Sequence[str],
        reward_targets: Mapping[str, float] | None = None,
        negative_reward_targets: Mapping[str, float] | None = None,
        guidance_scale: float = 7.0,
        guidance: str = "multi_reward_cfg",
        num_steps: int = 50,
        solver: str = "euler",
        seed: int | torch.Generator | None = None,
        guidance_interval: tuple[float, float] | None = None,
        drop_text_in_negative: bool = False,
        time_shift: float = 1.0,
        generator: torch.Generator | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """Generate one image per prompt; returns float ``[B,3,H,W]`` in [0, 1] on CPU."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ConfigError("No prompts given: pass at least one prompt.")
        n = len(prompts)
        pos_levels = self.levels(reward_targets, 1.0, n, "positive target")
        neg_levels = self.levels(negative_reward_targets, 0.0, n, "negative target")
        strategy = self.guidance_strategy(guidance, guidance_scale, guidance_interval)

        tokens, mask = self.encode_text(prompts)
        positive = Cond(tokens, mask, pos_levels)
        negative = Cond(tokens, mask, neg_levels)
        prepare = getattr(strategy, "prepare_negative", None)
        if drop_text_in_negative:
            negative = negative.with_text(self.empty_text())
        elif callable(prepare):
            negative = prepare(negative, self.empty_text)

        if generator is None:
            generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(
                int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            )
        x1 = torch.randn(n, *self.latent_shape, generator=generator).to(self.device)
        model_fn = _ModelFn(self.model, self.device)
        self.last_model_fn = model_fn
        if hasattr(self.model, "reset_state"):
            self.model.reset_state()

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return strategy(model_fn, x, t, positive, negative)

        with torch.no_grad():
            x0 = integrate(velocity, x1, num_steps=num_steps, solver=solver, shift=time_shift)
            if return_latents:
                return x0.float().cpu()
            images = self.autoencoder.decode(x0.float())
        return images.float().clamp(0.0, 1.0).cpu()

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Evaluator-facing alias of ``__call__``."""
        return self(prompts, **kwargs)

    def to(self, device: str | torch.device) -> MiroPipeline:
        self.device = torch.device(device)
        self.model.to(self.device)
        self._empty = None
        return self

