"""Built-in backbones: ``rin`` (TextRIN) and ``dit`` (DiT with cross-attention)."""

from __future__ import annotations

__all__ = ["RIN", "DiT"]


def __getattr__(name: str):
    if name == "RIN":
        from .rin import RIN

        return RIN
    if name == "DiT":
        from .dit import DiT

        return DiT
    raise AttributeError(f"module 'miro_models.backbones' has no attribute {name!r}")
