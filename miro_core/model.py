"""The MIRO model: reward conditioning (text + reward tokens) followed by any registered backbone."""

from __future__ import annotations

__all__ = ["ComponentSpec", "ModelConfig", "MiroModel", "LogVarWeighting", "build_model", "conditioning_class",
           "DEFAULT_CONDITIONING"]

import importlib
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
from torch import nn

from ._config import config, structure
from ._errors import ConfigError
from ._plugins import registry


@config
class ComponentSpec:
    """A registered component by name plus its options (validated by the component's ``Config``)."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


@config
class ModelConfig:
    """What to build: backbone, text encoder, autoencoder (registry names + options) and conditioning options.

    ``conditioning`` holds options of the conditioning module's ``Config`` except ``rewards`` and
    ``text_dim``, which come from the data. ``conditioning_impl`` (``module:Class``) chooses the conditioning
    module; empty = the backbone's ``default_conditioning`` (``rin``: the official release's
    :class:`miro_core.cad_conditioning.CADConditioning`), else
    :class:`miro_core.conditioning.RewardConditioning`. ``loss_weighting``: ``none`` (plain MSE) or ``learned``
    (EDM2-style learned log-variance per time, :class:`LogVarWeighting`; the official recipe).
    """

    backbone: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="rin"))
    text_encoder: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="minilm"))
    autoencoder: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="pixel"))
    conditioning: dict[str, Any] = attrs.field(factory=dict)
    conditioning_impl: str = ""
    loss_weighting: Literal["none", "learned"] = "none"
    logvar_channels: int = 128


#: The conditioning of backbones that name none.
DEFAULT_CONDITIONING = "miro_core.conditioning:RewardConditioning"


def conditioning_class(impl: str) -> type:
    """Import ``module:Class``."""
    module_name, _, attr = impl.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Cannot import the conditioning class {impl!r} ({exc}); model.conditioning_impl must be "
            "'module:Class', default 'miro_core.conditioning:RewardConditioning'."
        ) from exc


class LogVarWeighting(nn.Module):
    """Learned loss weighting (Karras et al. 2024, EDM2), as the official MIRO recipe trains it.

    ``logvar(t) = Linear(FourierFeatures(1 - t))`` (the features see the data fraction ``1 - t``, the release's
    ``gamma``); the per-element loss ``l`` becomes ``l / exp(logvar) + logvar``, so the network learns how much
    each time's loss is worth. Used in training only; kept in checkpoints so that fine-tuning continues it.
    """

    def __init__(self, channels: int = 128):
        super().__init__()
        from .nn import FourierFeatures

        self.fourier = FourierFeatures(channels)
        self.fc = nn.Linear(channels, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B]`` -> ``logvar [B]``."""
        return self.fc(self.fourier(1.0 - t.reshape(-1).float()).to(self.fc.weight.dtype)).reshape(-1)

    def weight(self, per_element_loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``l / exp(logvar(t)) + logvar(t)`` broadcast over the non-batch axes."""
        logvar = self(t).float().reshape(-1, *([1] * (per_element_loss.ndim - 1)))
        return per_element_loss / logvar.exp() + logvar


class MiroModel(nn.Module):
    """``forward(x_t, t, text_tokens, text_mask, levels, **backbone_kwargs) -> v``: conditioning then backbone.

    ``loss_weighting`` (optional :class:`LogVarWeighting`) is trained with the model but not used to sample.
    """

    def __init__(self, backbone: nn.Module, conditioning: nn.Module, loss_weighting: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.conditioning = conditioning
        self.loss_weighting = loss_weighting

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        levels: torch.Tensor,
        **backbone_kwargs: Any,
    ) -> torch.Tensor:
        context, mask = self.conditioning(text_tokens, text_mask, levels)
        return self.backbone(x_t, t, context, mask, **backbone_kwargs)

    @property
    def train_uniforms(self) -> tuple[str, ...]:
        """Per-sample uniforms the backbone wants from the training loop (see :class:`miro_core.Backbone`)."""
        return tuple(getattr(self.backbone, "train_uniforms", ()))

    @property
    def stateful(self) -> bool:
        """True when the backbone keeps sampling state (self-conditioning) and needs ``reset_state``."""
        return callable(getattr(self.backbone, "reset_state", None))

    def reset_state(self) -> None:
        fn = getattr(self.backbone, "reset_state", None)
        if callable(fn):
            fn()


def build_model(
    model_config: ModelConfig | dict[str, Any],
    rewards: Sequence[str],
    text_dim: int,
    in_channels: int,
    image_size: int,
) -> MiroModel:
    """Build conditioning + backbone; fills ``in_channels``, ``image_size`` and ``context_dim`` of the backbone."""
    cfg = structure(model_config, ModelConfig, path="model")
    backbone_cls = registry("backbones").get(cfg.backbone.name).cls
    cond_cls = conditioning_class(cfg.conditioning_impl or getattr(backbone_cls, "default_conditioning", "")
                                  or DEFAULT_CONDITIONING)
    reserved = {"rewards", "text_dim"} & set(cfg.conditioning)
    if reserved:
        raise ConfigError(
            f"model.conditioning must not set {', '.join(sorted(reserved))}: they come from data.rewards and "
            "the text encoder."
        )
    cond_cfg = structure(
        {**cfg.conditioning, "rewards": tuple(rewards), "text_dim": int(text_dim)},
        cond_cls.Config,
        path="model.conditioning",
    )
    conditioning = cond_cls(cond_cfg)
    options = {
        **cfg.backbone.options,
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "context_dim": int(cond_cfg.dim),
    }
    backbone = registry("backbones").create(cfg.backbone.name, options)
    if cfg.loss_weighting not in ("none", "learned"):
        raise ConfigError(f"model.loss_weighting must be 'none' or 'learned' (got {cfg.loss_weighting!r}).")
    weighting = LogVarWeighting(cfg.logvar_channels) if cfg.loss_weighting == "learned" else None
    return MiroModel(backbone, conditioning, weighting)
