"""Built-in backbones: ``rin`` (TextRIN), ``dit`` (DiT with cross-attention) and ``unet`` (conv U-Net)."""

from __future__ import annotations

__all__ = ["RIN", "DiT", "UNet"]

_MODULES = {"RIN": ".rin", "DiT": ".dit", "UNet": ".unet"}


def __getattr__(name: str):
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module 'miro_models.backbones' has no attribute {name!r}")
