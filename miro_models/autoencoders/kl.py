"""``kl``: a diffusers ``AutoencoderKL`` (default ``stabilityai/sdxl-vae``, as in the reference recipe) with
per-channel latent normalisation.

``encode``: images in [0,1] -> [-1,1] -> VAE encoder -> posterior; the latent is the posterior *mode* (its
mean, deterministic) by default, or a *sample* ``mean + std * eps`` with ``posterior = "sample"`` (uses the
torch global RNG). Then ``latent = (z - shift) / scale`` per channel. ``decode`` inverts that and maps the
VAE output from [-1,1] back to [0,1] (clamped).

Normalisation: ``shift`` / ``scale`` tuples (one value per latent channel) when given; otherwise the VAE's
own ``shift_factor`` (0 if absent) and ``1 / scaling_factor`` for every channel. :meth:`KL.fit_normalisation`
computes per-channel mean / std from a batch of raw latents and stores them in ``self.config`` (so they are
saved with the checkpoint config).
"""

from __future__ import annotations

__all__ = ["KL"]

import logging
from typing import Any

import attrs
import torch

from miro_core import Autoencoder, ConfigError, MiroError, config, hookimpl

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _looks_like_path(source: str) -> bool:
    from pathlib import Path

    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists() or source.count("/") > 1


class KL(Autoencoder):
    """diffusers AutoencoderKL (SDXL-VAE by default) with per-channel latent normalisation."""

    name = "kl"

    @config
    class Config:
        model: str = "stabilityai/sdxl-vae"
        revision: str | None = None
        subfolder: str | None = None
        dtype: str = "float32"
        local_files_only: bool = False
        #: "mode" (posterior mean, deterministic) or "sample".
        posterior: str = "mode"
        #: Per-channel normalisation ``latent = (z - shift) / scale``; None = from the VAE config.
        shift: tuple[float, ...] | None = None
        scale: tuple[float, ...] | None = None

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if c.posterior not in ("mode", "sample"):
            raise ConfigError(f"kl: posterior must be 'mode' or 'sample', got {c.posterior!r}.")
        if c.dtype not in _DTYPES:
            raise ConfigError(f"kl: dtype must be one of {sorted(_DTYPES)}, got {c.dtype!r}.")
        if (c.shift is None) != (c.scale is None):
            raise ConfigError("kl: give both shift and scale (one value per latent channel) or neither.")
        if c.scale is not None and any(s <= 0 for s in c.scale):
            raise ConfigError(f"kl: scale values must be > 0, got {c.scale}.")
        self._vae = None
        self._vae_config: dict[str, Any] | None = None
        self._device = torch.device("cpu")

    # -- loading ------------------------------------------------------------------------------------
    def _how_to_get(self) -> str:
        rev = f" --revision {self.config.revision}" if self.config.revision else ""
        return (f"Download it with `huggingface-cli download {self.config.model}{rev}`, or set model to a local "
                "directory saved with AutoencoderKL.save_pretrained (config.json + weights).")

    def _kw(self) -> tuple[str, dict[str, Any]]:
        from pathlib import Path

        source = self.config.model
        local = _looks_like_path(source)
        if local:
            p = Path(source).expanduser()
            if not p.exists():
                raise MiroError(f"autoencoder 'kl': model path {str(p)!r} does not exist. {self._how_to_get()}")
            source = str(p)
        kw: dict[str, Any] = {"local_files_only": local or self.config.local_files_only}
        if self.config.subfolder:
            kw["subfolder"] = self.config.subfolder
        if self.config.revision and not local:
            kw["revision"] = self.config.revision
        return source, kw

    def _error(self, exc: Exception) -> MiroError:
        return MiroError(f"Could not load autoencoder 'kl' from {self.config.model!r}: {type(exc).__name__}: {exc}. "
                         f"{self._how_to_get()}")

    def vae_config(self) -> dict[str, Any]:
        """The AutoencoderKL config (read from disk without loading weights when not set up)."""
        if self._vae is not None:
            return dict(self._vae.config)
        if self._vae_config is None:
            from diffusers import AutoencoderKL

            source, kw = self._kw()
            try:
                self._vae_config = dict(AutoencoderKL.load_config(source, **kw))
            except (OSError, ValueError) as exc:
                raise self._error(exc) from exc
        return self._vae_config

    def setup(self, device: str | torch.device = "cpu") -> None:
        self._device = torch.device(device)
        if self._vae is None:
            from diffusers import AutoencoderKL

            source, kw = self._kw()
            try:
                vae = AutoencoderKL.from_pretrained(source, **kw)
            except (OSError, ValueError) as exc:
                raise self._error(exc) from exc
            self._vae = vae.to(dtype=_DTYPES[self.config.dtype]).eval().requires_grad_(False)
            self._check_channels(self.config.shift)
            log.info("loaded autoencoder kl from %s", self.config.model)
        self._vae.to(self._device)

    def _check_channels(self, values) -> None:
        if values is not None:
            ch = int(self.vae_config()["latent_channels"])
            if len(values) != ch:
                raise ConfigError(f"kl: shift/scale need {ch} values (one per latent channel), got {len(values)}.")

    # -- normalisation ------------------------------------------------------------------------------
    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(shift, scale)`` as float32 tensors ``[C]``."""
        cfg = self.vae_config()
        ch = int(cfg["latent_channels"])
        if self.config.shift is not None:
            return (torch.tensor(self.config.shift, dtype=torch.float32),
                    torch.tensor(self.config.scale, dtype=torch.float32))
        shift = float(cfg.get("shift_factor") or 0.0)
        scale = 1.0 / float(cfg.get("scaling_factor") or 1.0)
        return torch.full((ch,), shift), torch.full((ch,), scale)

    def fit_normalisation(self, raw_latents: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Set ``shift``/``scale`` to the per-channel mean / std of raw (unnormalised) latents ``[N,C,h,w]``.

        Returns ``(shift, scale)`` and updates ``self.config`` (use :meth:`encode_raw` to get raw latents).
        """
        x = raw_latents.detach().float().transpose(0, 1).reshape(raw_latents.shape[1], -1)
        shift = tuple(float(v) for v in x.mean(dim=1))
        scale = tuple(max(float(v), 1e-6) for v in x.std(dim=1))
        self._check_channels(shift)
        self.config = attrs.evolve(self.config, shift=shift, scale=scale)
        return shift, scale

    # -- encode / decode ----------------------------------------------------------------------------
    def _ready(self):
        if self._vae is None:
            self.setup(self._device)
        return self._vae

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised VAE latents of images in [0,1]."""
        vae = self._ready()
        x = (images.to(self._device, dtype=vae.dtype) * 2.0 - 1.0)
        dist = vae.encode(x).latent_dist
        z = dist.mode() if self.config.posterior == "mode" else dist.sample()
        return z.float()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encode_raw(images)
        shift, scale = (v.to(z.device)[None, :, None, None] for v in self.normalisation())
        return (z - shift) / scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._ready()
        shift, scale = (v.to(latents.device)[None, :, None, None] for v in self.normalisation())
        z = latents.float() * scale + shift
        out = vae.decode(z.to(self._device, dtype=vae.dtype)).sample
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        cfg = self.vae_config()
        factor = 2 ** (len(cfg["block_out_channels"]) - 1)
        if image_size % factor:
            raise ConfigError(f"kl: image_size {image_size} is not divisible by the VAE downsampling factor {factor}.")
        side = image_size // factor
        return (int(cfg["latent_channels"]), side, side)


@hookimpl
def miro_register_autoencoders(register):
    register(KL)
