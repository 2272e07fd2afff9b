"""Pixel plumbing shared by the rewards: uint8 / float inputs, 8-bit PIL resizing, centre-crop rounding.

Rewards accept images ``[B, 3, H, W]`` either as float in [0, 1] (the :class:`miro_core.Reward` contract) or as
``uint8`` (what the scoring pipeline decodes; see ``accepts_uint8``). The reference implementations all start
from an 8-bit image, so:

* :func:`as_uint8_hwc` gives the 8-bit image: a uint8 input is used as is; a float input is quantised with
  ``round(x * 255)``, which is the exact inverse of the ``u8 / 255`` decoding (a float image that came from
  uint8 gets its original bytes back; any other float image gets what saving it as PNG would give);
* :func:`as_float` gives float32 in [0, 1]: ``u8 / 255`` in float32, bit-identical to torchvision ``ToTensor``
  and to transformers' ``rescale(1/255)`` for every byte value.

Centre-crop offsets follow one of two rules: ``"half_even"`` = torchvision ``CenterCrop``
(``int(round((H - h) / 2))``, Python rounds halves to even), ``"floor"`` = transformers ``CLIPImageProcessor``
(``(H - h) // 2``). They differ by one pixel when ``H - h`` leaves 3 modulo 4.
"""

from __future__ import annotations

__all__ = [
    "CROP_ROUNDINGS",
    "PIL_RESAMPLE",
    "as_uint8_hwc",
    "as_float",
    "u8_hwc_to_float",
    "crop_offset",
    "shortest_side_size",
    "longest_side_size",
    "pil_resize_batch",
    "to_pil_images",
]

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from miro_core import ConfigError, MiroError

CROP_ROUNDINGS = ("half_even", "floor")
#: interpolation name -> PIL resample filter id (``Image.Resampling`` values).
PIL_RESAMPLE = {"bicubic": 3, "bilinear": 2}

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="miro-pil")
        return _POOL


def as_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` uint8 or float in [0, 1] -> uint8 numpy ``[B, H, W, 3]`` on the CPU (see module doc)."""
    if images.dtype == torch.uint8:
        u8 = images.detach()
    elif images.is_floating_point():
        u8 = (images.detach().float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    else:
        raise MiroError(f"images must be uint8 or floating point, got {images.dtype}.")
    return np.ascontiguousarray(u8.permute(0, 2, 3, 1).cpu().numpy())


def as_float(images: torch.Tensor, device=None) -> torch.Tensor:
    """float32 ``[B, 3, H, W]`` in [0, 1] on ``device``: uint8 is divided by 255 (as ``ToTensor``)."""
    if images.dtype == torch.uint8:
        return images.to(device=device).float().div_(255.0)
    return images.to(device=device, dtype=torch.float32)


def u8_hwc_to_float(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` = ``u8 / 255`` (torchvision ``ToTensor``)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)


def crop_offset(size: int, crop: int, rounding: str) -> int:
    """Offset of a centred window of ``crop`` pixels in ``size`` pixels under ``rounding`` (module doc)."""
    if rounding == "half_even":
        return int(round((size - crop) / 2.0))
    if rounding == "floor":
        return (size - crop) // 2
    raise ConfigError(f"crop rounding {rounding!r} is not one of {', '.join(CROP_ROUNDINGS)}.")


def _resize_one(arr: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[:2] == tuple(hw):
        return arr
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), resample=resample))


def pil_resize_batch(arr: np.ndarray, hw: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """Resize each uint8 ``[H, W, 3]`` image of ``arr`` ``[B, H, W, 3]`` to ``hw`` with PIL in 8 bit.

    ``Image.fromarray(a).resize((w, h), BICUBIC)`` exactly as torchvision ``Resize`` on a PIL image and
    transformers' PIL image processors do (PIL antialiases when downscaling and rounds/clips to 8 bit). The
    images of a batch are resized in a small thread pool (PIL releases the GIL while resampling)."""
    try:
        resample = PIL_RESAMPLE[interpolation]
    except KeyError:
        raise ConfigError(f"interpolation {interpolation!r} is not supported; use bicubic or bilinear.") from None
    if arr.shape[1:3] == tuple(hw):
        return arr
    n = arr.shape[0]
    if n <= 1 or _threads() == 1:
        outs = [_resize_one(a, hw, resample) for a in arr]
    else:
        outs = list(_pool().map(lambda a: _resize_one(a, hw, resample), list(arr)))
    return np.stack(outs) if outs else np.zeros((0, hw[0], hw[1], 3), np.uint8)


def to_pil_images(images: torch.Tensor) -> list:
    """8-bit RGB PIL images of a ``[B, 3, H, W]`` uint8 / float batch (what a processor of the original gets)."""
    from PIL import Image

    return [Image.fromarray(a) for a in as_uint8_hwc(images)]


def shortest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output ``(H, W)`` of torchvision ``Resize(size)`` / transformers ``shortest_edge``: the short side becomes
    ``size``, the long side ``int(size * long / short)``."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def longest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output ``(H, W)`` of HPSv2's ``ResizeMaxSize``: ``round(dim * size / max(H, W))`` (Python rounding)."""
    scale = size / float(max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))

