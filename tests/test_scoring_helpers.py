"""Shared helpers of the store / data / scoring tests: tiny real rewards, a tiny binner, data writers.

Also a CLI entry point (``python tests/test_scoring_helpers.py score ...``) that registers these test
plugins and runs ``miro``: used by the subprocess tests (kill -9 / resume, torchrun).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

import miro_core
from miro_core import Binner, Reward, config, hookimpl


class Brightness(Reward):
    """Mean brightness of the image (ignores the caption)."""

    name = "brightness"
    uses_text = False

    @config
    class Config:
        scale: float = 1.0
        sleep: float = 0.0  # seconds per batch (for kill/resume tests)

    def score(self, images, prompts):
        if self.config.sleep:
            time.sleep(self.config.sleep)
        return images.mean(dim=(1, 2, 3)) * self.config.scale


class Redness(Reward):
    """Mean of the red channel minus the others; text-aware with an 8-word limit (for truncation tests)."""

    name = "redness"
    max_text_tokens = 8

    @config
    class Config:
        fail_on_word: str = ""  # raise when a prompt contains this word (failure isolation)
        nan_on_word: str = ""   # return NaN for prompts with this word

    def text_fits(self, prompt):
        return len(prompt.split()) <= 8

    def score(self, images, prompts):
        if self.config.fail_on_word and any(self.config.fail_on_word in p for p in prompts):
            raise RuntimeError(f"cannot score prompts with {self.config.fail_on_word!r}")
        out = images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)) + 0.001 * torch.tensor(
            [float(len(p.split())) for p in prompts])
        if self.config.nan_on_word:
            bad = torch.tensor([self.config.nan_on_word in p for p in prompts])
            out = torch.where(bad, torch.full_like(out, float("nan")), out)
        return out


class Broken(Reward):
    """Always raises (a reward that is broken, not the data)."""

    name = "broken"
    uses_text = False

    def score(self, images, prompts):
        raise RuntimeError("weights not loaded")


class EqualWidth(Binner):
    """Tiny test binner: equal-width bins between min and max."""

    name = "equal_width_test"

    @config
    class Config:
        num_bins: int = 4

    def fit(self, scores):
        x = np.asarray(scores, dtype=np.float64)
        x = x[np.isfinite(x)]
        return {"lo": float(x.min()) if x.size else 0.0, "hi": float(x.max()) if x.size else 1.0}

    def transform(self, scores, state):
        x = np.asarray(scores, dtype=np.float64)
        width = max(state["hi"] - state["lo"], 1e-12)
        b = np.floor((x - state["lo"]) / width * self.num_bins)
        b = np.clip(np.nan_to_num(b, nan=0), 0, self.num_bins - 1).astype(np.int16)
        b[~np.isfinite(x)] = -1
        return b


class _TestPlugin:
    @hookimpl
    def miro_register_rewards(self, register):
        register(Brightness)
        register(Redness)
        register(Broken)

    @hookimpl
    def miro_register_binners(self, register):
        register(EqualWidth)


def install():
    """Process-wide host with only miro_core's built-ins (+ these test plugins): immune to other packages."""
    import miro_core._builtins as builtins

    host = miro_core.PluginHost(load_entrypoints=False,
                                extra_plugins=[(builtins, "miro_core"), (_TestPlugin(), "miro_test_plugin")])
    miro_core.reset_plugins(host)
    return host


# ---------------------------------------------------------------------------------------------------
# data writers
# ---------------------------------------------------------------------------------------------------
WORDS = ["red", "blue", "green", "circle", "square", "triangle", "big", "small", "left", "right"]


def make_images(n: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


def caption_for(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 4))


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root, n: int, size: int = 16, seed: int = 0, sub_every: int = 0) -> list[str]:
    """``n`` PNGs with ``.txt`` captions; ids ``img_0000``.. (``sub/img_...`` for every ``sub_every``-th)."""
    ids = []
    for i, arr in enumerate(make_images(n, size, seed)):
        rel = f"img_{i:04d}" if not (sub_every and i % sub_every == 0) else f"sub/img_{i:04d}"
        path = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".png", "wb") as f:
            f.write(png_bytes(arr))
        with open(path + ".txt", "w") as f:
            f.write(caption_for(i))
        ids.append(rel)
    return sorted(ids)


if __name__ == "__main__":
    install()
    from miro_core.cli import main

    sys.exit(main(sys.argv[1:]))
