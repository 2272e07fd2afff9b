"""Web-like image degradations of random strength: blur, noise, low contrast, clutter specks, JPEG blocks.

:func:`sample_degradations` draws which degradations a sample gets and their strengths (a JSON-able dict
kept in ``Sample.meta["degradations"]``); :func:`apply_degradations` applies such a dict to a float image.
Strengths are in units of a 32-pixel image and scale with the image size, so a 64-pixel render looks
like the 32-pixel one upsampled.
"""

from __future__ import annotations

__all__ = ["DEGRADATIONS", "sample_degradations", "apply_degradations"]

import io
from typing import Any

import numpy as np

from .scene import COLORS, PALETTE

#: Degradation names, in the order they are applied.
DEGRADATIONS = ("clutter", "blur", "low_contrast", "noise", "jpeg")


def sample_degradations(rng: np.random.Generator, probs: dict[str, float]) -> dict[str, Any]:
    """Draw degradations: each name in ``probs`` is applied with its probability and a random strength."""
    out: dict[str, Any] = {}
    for name in DEGRADATIONS:
        p = float(probs.get(name, 0.0))
        if p <= 0 or rng.random() >= p:
            continue
        if name == "blur":
            out[name] = {"sigma": float(rng.uniform(0.5, 2.0))}
        elif name == "noise":
            out[name] = {"std": float(rng.uniform(0.02, 0.15))}
        elif name == "low_contrast":
            out[name] = {"amount": float(rng.uniform(0.3, 0.8)), "gray": float(rng.uniform(0.35, 0.65))}
        elif name == "clutter":
            k = int(rng.integers(5, 30))
            out[name] = {"xy": rng.uniform(0, 1, size=(k, 2)).round(4).tolist(),
                         "colors": [COLORS[int(i)] for i in rng.integers(len(COLORS), size=k)],
                         "alpha": rng.uniform(0.5, 1.0, size=k).round(3).tolist()}
        elif name == "jpeg":
            out[name] = {"quality": int(rng.integers(10, 50))}
    if "noise" in out:
        out["noise"]["seed"] = int(rng.integers(2**31))
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")


def apply_degradations(img: np.ndarray, degradations: dict[str, Any]) -> np.ndarray:
    """Apply ``degradations`` to a float32 HWC image in [0, 1]; returns a new float32 HWC image."""
    img = np.asarray(img, dtype=np.float32).copy()
    size = img.shape[0]
    scale = size / 32.0
    for name in DEGRADATIONS:
        if name not in degradations:
            continue
        p = degradations[name]
        if name == "clutter":
            speck = max(1, int(round(scale)))
            for (x, y), c, a in zip(p["xy"], p["colors"], p["alpha"]):
                i, j = min(int(y * size), size - speck), min(int(x * size), size - speck)
                img[i : i + speck, j : j + speck] = (1 - a) * img[i : i + speck, j : j + speck] + a * np.asarray(PALETTE[c])
        elif name == "blur":
            img = _blur(img, p["sigma"] * scale)
        elif name == "low_contrast":
            lum = img.mean(axis=2, keepdims=True)
            desat = 0.5 * img + 0.5 * lum  # washed-out colours
            img = (1 - p["amount"]) * desat + p["amount"] * p["gray"]
        elif name == "noise":
            g = np.random.default_rng(p["seed"])
            img = img + g.normal(0.0, p["std"], size=img.shape).astype(np.float32)
        elif name == "jpeg":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=p["quality"])
            buf.seek(0)
            img = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        img = np.clip(img, 0.0, 1.0)
    return img
