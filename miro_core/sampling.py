"""Sampling: conditioning batches, the guided ODE sampler and :class:`MiroPipeline`.

``MiroPipeline.from_pretrained(dir)`` / ``from_checkpoint(dir)`` rebuild text encoder, autoencoder and model from
a ``config.json`` and sample with any registered guidance strategy (default ``multi_reward_cfg``, paper eq. 3).
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
    "as_generate",
    "load_pipeline",
    "SAMPLING_DEFAULTS",
    "SAMPLING_PRESETS",
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
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        xin, tokens = x, cond.text_tokens
        if self.dtype != torch.float32 and self.device.type != "cuda":  # a cast model (torch_dtype) on CPU
            xin, tokens = x.to(self.dtype), tokens.to(self.dtype)
        with _autocast(self.device):
            v = self.model(xin, t, tokens, cond.text_mask, cond.levels)
        return v.to(x.dtype)


def load_pipeline(*, checkpoint: str | Path | None = None, pretrained: str | Path | None = None,
                  text_encoder: Any = None, vae: Any = None, device: str = "auto", use_ema: bool = True) -> MiroPipeline:
    """The CLI's way to get a pipeline: a training checkpoint, or a pretrained directory / Hub id (ours or an
    official release, with optional ``text_encoder`` / ``vae`` replacements); ``device="auto"`` = CUDA when present."""
    if (checkpoint is None) == (pretrained is None):
        raise ConfigError("Give exactly one of a checkpoint and a pretrained model.")
    if checkpoint is not None and (text_encoder is not None or vae is not None):
        raise ConfigError("--text-encoder / --vae go with --pretrained; a checkpoint uses its own.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if checkpoint is not None:
        return MiroPipeline.from_checkpoint(checkpoint, device=device, use_ema=use_ema)
    return MiroPipeline.from_pretrained(pretrained, text_encoder=text_encoder, vae=vae, device=device)


def as_generate(obj: Any) -> Any:
    """The ``generate(prompts, **kwargs) -> images [B,3,H,W]`` callable of a :class:`MiroPipeline` (its
    ``generate`` method: ``__call__`` returns PIL images by default), or ``obj`` itself for any other callable."""
    return obj.generate if isinstance(obj, MiroPipeline) else obj


def _initial_noise(n: int, shape: tuple[int, ...], generator: Any, seed: int | None) -> torch.Tensor:
    """``[n, *shape]`` float32 noise: from one generator (drawn at once, on its device), one generator per image,
    or a seed (a CPU generator)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ConfigError(f"generator: got a list of {len(generator)} generators for {n} images; pass one "
                              "generator per image (prompts x num_images_per_prompt) or a single generator.")
        return torch.stack([torch.randn(*shape, generator=g, device=g.device).cpu() for g in generator])
    if generator is None:
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        generator = torch.Generator().manual_seed(seed)
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}.")
    return torch.randn(n, *shape, generator=generator, device=generator.device).cpu()


#: What a pipeline samples with when a call does not say (``save_pretrained`` stores them per model).
SAMPLING_DEFAULTS: dict[str, Any] = {"guidance": "multi_reward_cfg", "guidance_scale": 7.0, "num_inference_steps": 50,
                                     "solver": "euler", "time_shift": 1.0, "drop_text_in_negative": False}

#: Named sampling settings (``pipe.use_sampling(name)``, ``miro sample --sampling NAME``): ``paper``: eq. 3 of the
#: paper (the negative branch keeps the caption); ``official``: the official pipeline (empty-text negative branch,
#: the model's stored empty-text embedding when it has one); both w = 7 and 50 Euler steps.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {**SAMPLING_DEFAULTS},
    "official": {**SAMPLING_DEFAULTS, "guidance": "multi_reward_cfg_text_drop"},
}

_OUTPUT_TYPES = ("pil", "pt", "np", "latent")


class MiroPipeline:
    """Text + reward targets -> images, with multi-reward classifier-free guidance (diffusers-style API).

    ``pipe(prompt, reward_targets={"aesthetic": 1.0}, guidance_scale=7.0)``; unspecified positive targets
    default to 1.0, negative ones to 0.0. ``MiroPipeline.from_pretrained(dir_or_hub_id)`` loads our pretrained
    format, an official MIRO release directory, or a training checkpoint; ``save_pretrained(dir)`` writes ours.

    ``negative_text``: the text of the negative branch when it drops the caption (an official release stores the
    empty-caption embedding; otherwise the text encoder encodes ``""``). ``defaults``: sampling settings used when
    a call does not give them (:data:`SAMPLING_DEFAULTS`, overridden per model).
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
        negative_text: Cond | None = None,
        defaults: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
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
        self.negative_text = negative_text
        unknown = set(defaults or {}) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise ConfigError(f"Unknown sampling defaults {sorted(unknown)}; known: {sorted(SAMPLING_DEFAULTS)}.")
        self.defaults = {**SAMPLING_DEFAULTS, **dict(defaults or {})}
        #: the ModelConfig (unstructured) the model was built from; save_pretrained needs it
        self.model_config = dict(model_config) if model_config is not None else None
        self._empty: Cond | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> MiroPipeline:
        """Rebuild everything from a checkpoint directory (or a training output dir: its latest checkpoint)."""
        from .training.checkpoint import load_for_inference

        return load_for_inference(path, device=device, use_ema=use_ema)

    @classmethod
    def from_pretrained(cls, pretrained: str | Path, *, revision: str | None = None, text_encoder: Any = None,
                        vae: Any = None, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, variant: str | None = None) -> MiroPipeline:
        """Load a pretrained directory or Hub repo: our format (``save_pretrained``), an official MIRO release
        (``config.json`` with ``network`` / ``preconditioning``, ``model.safetensors``, ``uncond_embedding.npy``), or
        a training checkpoint. ``text_encoder`` / ``vae``: a local directory (or a built encoder / autoencoder)
        replacing the one the config names, so that it runs offline. ``variant``: a subfolder holding one model
        (the official ablations repository). See :mod:`miro_core.pretrained`."""
        from .pretrained import load_pretrained

        return load_pretrained(pretrained, revision=revision, text_encoder=text_encoder, vae=vae,
                               torch_dtype=torch_dtype, device=device, variant=variant)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (the weights this pipeline samples with) atomically."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory)

    def use_sampling(self, name: str) -> MiroPipeline:
        """Replace ``self.defaults`` by the named settings of :data:`SAMPLING_PRESETS` (``paper`` / ``official``)."""
        if name not in SAMPLING_PRESETS:
            raise ConfigError(f"Unknown sampling preset {name!r}.{did_you_mean(name, SAMPLING_PRESETS)} "
                              f"Available: {', '.join(SAMPLING_PRESETS)}.")
        self.defaults = dict(SAMPLING_PRESETS[name])
        return self

    # -- helpers ---------------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens, mask = self.text_encoder.encode(list(prompts))
        return tokens.to(self.device, torch.float32), mask.to(self.device, torch.bool)

    def empty_text(self) -> Cond:
        """The negative branch's text when it drops the caption: the stored embedding, else ``encode([""])``."""
        if self._empty is None:
            if self.negative_text is not None:
                self._empty = self.negative_text.to(self.device)
            else:
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
        prompt: str | Sequence[str],
        reward_targets: Mapping[str, float] | None = None,
        negative_reward_targets: Mapping[str, float] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        *,
        guidance: str | None = None,
        solver: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
        drop_text_in_negative: bool | None = None,
        time_shift: float | None = None,
        seed: int | None = None,
        batch_size: int = 16,
    ) -> Any:
        """Generate ``num_images_per_prompt`` images per prompt.

        ``latents``: the initial noise ``[n, C, h, w]`` (else drawn from ``generator``: one generator, or one per
        image; else from ``seed``). The noise of every image is drawn before sampling, so the images do not
        depend on ``batch_size`` (prompts are sampled ``batch_size`` at a time to bound memory).
        ``output_type``: ``pil`` (list of PIL images), ``pt`` (float ``[n,3,H,W]`` in [0, 1] on CPU), ``np``
        (float ``[n,H,W,3]``) or ``latent`` (the final latents ``[n,C,h,w]``, before the autoencoder).
        Unset sampling settings come from ``self.defaults``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ConfigError("No prompts given: pass at least one prompt.")
        if output_type not in _OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(_OUTPUT_TYPES)} (got {output_type!r}).")
        if num_images_per_prompt < 1 or batch_size < 1:
            raise ConfigError("num_images_per_prompt and batch_size must be >= 1.")
        d = self.defaults
        steps = int(num_inference_steps if num_inference_steps is not None else d["num_inference_steps"])
        scale = float(guidance_scale if guidance_scale is not None else d["guidance_scale"])
        strategy = self.guidance_strategy(guidance or d["guidance"], scale, guidance_interval)
        solver = solver or d["solver"]
        shift = float(time_shift if time_shift is not None else d["time_shift"])
        drop_text = bool(d["drop_text_in_negative"] if drop_text_in_negative is None else drop_text_in_negative)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(prompts)
        # validate the targets once, before any work
        self.levels(reward_targets, 1.0, 1, "positive target")
        self.levels(negative_reward_targets, 0.0, 1, "negative target")
        if latents is not None:
            if tuple(latents.shape) != (n, *self.latent_shape):
                raise ConfigError(f"latents must have shape {(n, *self.latent_shape)} (images x latent shape), got "
                                  f"{tuple(latents.shape)}.")
            noise = latents.detach().float().cpu()
        else:
            noise = _initial_noise(n, self.latent_shape, generator, seed)
        outs = []
        for start in range(0, n, batch_size):
            chunk = prompts[start:start + batch_size]
            x0 = self._sample(chunk, noise[start:start + batch_size], reward_targets, negative_reward_targets,
                              strategy, steps, solver, shift, drop_text)
            outs.append(x0 if output_type == "latent" else self._decode(x0))
        out = torch.cat(outs)
        if output_type in ("pt", "latent"):
            return out
        arr = out.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]

    def _sample(self, prompts, noise, reward_targets, negative_reward_targets, strategy, steps, solver, shift,
                drop_text) -> torch.Tensor:
        n = len(prompts)
        tokens, mask = self.encode_text(prompts)
        positive = Cond(tokens, mask, self.levels(reward_targets, 1.0, n, "positive target"))
        negative = Cond(tokens, mask, self.levels(negative_reward_targets, 0.0, n, "negative target"))
        prepare = getattr(strategy, "prepare_negative", None)
        if drop_text:
            negative = negative.with_text(self.empty_text())
        elif callable(prepare):
            negative = prepare(negative, self.empty_text)
        model_fn = _ModelFn(self.model, self.device)
        self.last_model_fn = model_fn
        if hasattr(self.model, "reset_state"):
            self.model.reset_state()

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return strategy(model_fn, x, t, positive, negative)

        with torch.no_grad():
            x0 = integrate(velocity, noise.to(self.device), num_steps=steps, solver=solver, shift=shift)
        return x0.float().cpu()

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            images = self.autoencoder.decode(x0.to(self.device))
        return images.float().clamp(0.0, 1.0).cpu()

    def generate(self, prompts: Sequence[str], num_steps: int | None = None, **kwargs: Any) -> torch.Tensor:
        """Evaluator-facing: ``[B,3,H,W]`` float images in [0, 1] (``num_steps`` = ``num_inference_steps``)."""
        kwargs.setdefault("output_type", "pt")
        return self(prompts, num_inference_steps=num_steps, **kwargs)

    def to(self, device: str | torch.device) -> MiroPipeline:
        self.device = torch.device(device)
        self.model.to(self.device)
        self._empty = None
        return self
