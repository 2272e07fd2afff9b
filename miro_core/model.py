"""The MIRO model: reward conditioning (text + reward tokens) followed by any registered backbone."""

from __future__ import annotations

__all__ = ["ComponentSpec", "ModelConfig", "MiroModel", "build_model", "conditioning_class"]

import importlib
from collections.abc import Sequence
from typing import Any

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

    ``conditioning`` holds options of :class:`miro_core.conditioning.RewardConditioning.Config` except
    ``rewards`` and ``text_dim``, which come from the data. ``conditioning_impl`` (``module:Class``) lets a
    plugin swap the conditioning module; it is stored in every checkpoint.
    """

    backbone: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="rin"))
    text_encoder: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="minilm"))
    autoencoder: ComponentSpec = attrs.field(factory=lambda: ComponentSpec(name="pixel"))
    conditioning: dict[str, Any] = attrs.field(factory=dict)
    conditioning_impl: str = "miro_core.conditioning:RewardConditioning"


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


class MiroModel(nn.Module):
    """``forward(x_t, t, text_tokens, text_mask, levels) -> v``: conditioning then backbone."""

    def __init__(self, backbone: nn.Module, conditioning: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.conditioning = conditioning

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        levels: torch.Tensor,
    ) -> torch.Tensor:
        context, mask = self.conditioning(text_tokens, text_mask, levels)
        return self.backbone(x_t, t, context, mask)

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
    cond_cls = conditioning_class(cfg.conditioning_impl)
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
    return MiroModel(backbone, conditioning)
