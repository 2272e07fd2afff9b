"""``pixel``: pixel-space "autoencoder": ``latent = 2 * image - 1``, ``image = clamp((latent + 1) / 2)``."""

from __future__ import annotations

__all__ = ["Pixel"]

import torch

from miro_core import Autoencoder, hookimpl


class Pixel(Autoencoder):
    """Identity autoencoder for pixel-space models: images in [0,1] <-> latents in [-1,1], shape (3, s, s)."""

    name = "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * 2.0 - 1.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (3, int(image_size), int(image_size))


@hookimpl
def miro_register_autoencoders(register):
    register(Pixel)
