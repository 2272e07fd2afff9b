"""Tests of ``jpeg_blockiness``: MIRO's reward contract, a pixel-by-pixel reference, and real JPEG files."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from miro_core import registry
from miro_core.testing import RewardContract


class TestJpegBlockinessRewardContract(RewardContract):
    reward_name = "jpeg_blockiness"


def _reference(img: np.ndarray, block: int = 8, eps: float = 1.0) -> float:
    """Straight transcription of the docstring on an HxWx3 array in [0, 1], pixel pair by pixel pair."""
    h, w, _ = img.shape
    y = [[255.0 * (0.299 * img[i, j, 0] + 0.587 * img[i, j, 1] + 0.114 * img[i, j, 2]) for j in range(w)]
         for i in range(h)]
    on, off = [], []
    for i in range(h):
        for j in range(w - 1):
            (on if (j + 1) % block == 0 else off).append(abs(y[i][j + 1] - y[i][j]))
    for i in range(h - 1):
        for j in range(w):
            (on if (i + 1) % block == 0 else off).append(abs(y[i + 1][j] - y[i][j]))
    return -math.log((sum(on) / len(on) + eps) / (sum(off) / len(off) + eps))


def _to_tensor(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return _to_tensor(Image.open(io.BytesIO(buf.getvalue())))


def _smooth_scene(size: int = 64) -> torch.Tensor:
    """Smooth gradients plus a soft disc: natural-looking content with no 8x8 structure of its own."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = torch.sigmoid(12 * (0.3 - ((xx - 0.55) ** 2 + (yy - 0.45) ** 2).sqrt()))
    return torch.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * disc, 0.8 - 0.6 * yy]).clamp(0, 1)


def test_matches_reference():
    reward = registry("rewards").create("jpeg_blockiness")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 19, 26, generator=g)
    imgs[1] = _jpeg(_smooth_scene(32)[:, :19, :26].contiguous(), 15)
    got = reward.score(imgs, ["", ""])
    for i in range(2):
        assert got[i].item() == pytest.approx(_reference(imgs[i].permute(1, 2, 0).double().numpy()), rel=1e-5, abs=1e-5)
    assert reward.uses_text is False


def test_orders_real_jpeg_qualities():
    reward = registry("rewards").create("jpeg_blockiness")
    clean = _smooth_scene()
    batch = torch.stack([clean, _jpeg(clean, 95), _jpeg(clean, 30), _jpeg(clean, 5)])
    s = reward.score(batch, [""] * 4).tolist()
    assert abs(s[0]) < 0.05  # no grid in the original
    assert s[0] >= s[1] - 0.05 and s[1] > s[2] > s[3]
    assert s[3] < -0.5  # quality 5 is visibly blocky


def test_grid_alignment_matters():
    reward = registry("rewards").create("jpeg_blockiness")
    blocky = _jpeg(_smooth_scene(72), 5)
    aligned = blocky[:, :64, :64]
    shifted = blocky[:, 4:68, 4:68]  # the 8x8 grid now falls mid-block
    s_aligned, s_shifted = reward.score(torch.stack([aligned, shifted]), ["", ""]).tolist()
    assert s_aligned < -0.5 and s_shifted > s_aligned + 0.5


def test_flat_tiny_and_options():
    reward = registry("rewards").create("jpeg_blockiness")
    flat = torch.full((1, 3, 16, 16), 0.4)
    tiny = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert reward.score(flat, [""]).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(reward.score(tiny, [""]).item())  # 8x8: no interior border to measure
    # a 16-pixel grid sees the 16-aligned borders only
    checker = torch.zeros(1, 3, 32, 32)
    checker[..., 16:, :] = 1.0
    b8 = reward.score(checker, [""]).item()
    b16 = registry("rewards").create("jpeg_blockiness", {"block_size": 16}).score(checker, [""]).item()
    assert b8 < 0 and b16 < b8
