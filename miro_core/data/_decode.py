"""Image decoding: anything a :class:`~miro_core.Sample` may carry -> float32 ``[3, H, W]`` in [0, 1].

Hostile input is converted or refused with a reason, never decoded blindly: the pixel count is checked from the
header before any pixel is decoded (:data:`MAX_PIXELS`, ``MIRO_MAX_IMAGE_PIXELS``: decompression bombs), EXIF
orientation is applied, every mode becomes RGB (alpha on white; 16-bit and 32-bit integer and float greys
rescaled to 8 bits; CMYK, palette, bilevel converted), animated images give their first frame, and truncated,
corrupt or empty files raise :class:`ImageDecodeError` (a per-sample failure in the scoring pipeline).
"""

from __future__ import annotations

__all__ = ["to_tensor", "ImageDecodeError", "decode_raw", "stack_images", "image_size"]

import io
import os
import warnings
from typing import Any

import numpy as np
import torch

from .._errors import MiroError


class ImageDecodeError(MiroError, ValueError):
    """An image could not be read or decoded (the scoring pipeline records it as a per-sample failure)."""


#: largest image (width x height) decoded; larger ones are refused from their header (decompression bombs)
DEFAULT_MAX_PIXELS = 8192 * 8192


def max_pixels() -> int:
    """The pixel limit: ``MIRO_MAX_IMAGE_PIXELS`` if set (a positive integer), else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get("MIRO_MAX_IMAGE_PIXELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise MiroError(f"MIRO_MAX_IMAGE_PIXELS={raw!r} is not a positive integer (pixels, e.g. {DEFAULT_MAX_PIXELS}).")
    return value


def _check_size(img, what: str) -> None:
    w, h = img.size
    limit = max_pixels()
    if w * h > limit:
        raise ImageDecodeError(
            f"Image {what} is {w}x{h} = {w * h} pixels, over the limit of {limit} (a decompression bomb guard); "
            "raise MIRO_MAX_IMAGE_PIXELS if such images are expected."
        )
    if w < 1 or h < 1:
        raise ImageDecodeError(f"Image {what} has no pixels ({w}x{h}).")


def _deep_to_u8(img) -> np.ndarray | None:
    """16/32-bit integer and float single-channel modes -> uint8 ``[H, W]`` (None for other modes)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        a = a.astype(np.int64, copy=False)
        if mode == "I" and a.size and a.max() <= 255 and a.min() >= 0:
            return a.astype(np.uint8)  # 8-bit values in a 32-bit container
        return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)  # 16-bit range
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and float(a.max()) <= 1.0 else 1.0  # [0, 1] floats, else [0, 255]
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return None


def _pil_u8(img) -> np.ndarray:
    """A PIL image (any mode) -> uint8 ``[H, W, 3]`` RGB; alpha is composited on white."""
    from PIL import Image

    deep = _deep_to_u8(img)
    if deep is not None:
        return np.ascontiguousarray(np.repeat(deep[..., None], 3, axis=2))
    if img.mode in ("RGBa", "La"):  # premultiplied alpha
        img = img.convert("RGBA" if img.mode == "RGBa" else "LA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white rather than dropping alpha to black
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)  # one copy (tobytes); read-only


def _decode_bytes(data: bytes, what: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"Cannot decode image {what}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says it clearly
            with Image.open(io.BytesIO(data)) as img:
                _check_size(img, what)  # from the header, before any pixel is decoded
                img.seek(0)  # animated: the first frame
                img.load()
                img = ImageOps.exif_transpose(img)  # EXIF orientation (a camera's rotated JPEG)
                return _pil_u8(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"Cannot decode image {what}: {exc} (raise MIRO_MAX_IMAGE_PIXELS if expected)") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"Cannot decode image {what}: not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError, TypeError, ZeroDivisionError) as exc:
        # what PIL's plugins raise on truncated or malformed files
        raise ImageDecodeError(f"Cannot decode image {what}: {type(exc).__name__}: {exc}") from exc


def _u8_to_float(arr: np.ndarray) -> torch.Tensor:
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def decode_raw(image: Any) -> np.ndarray | torch.Tensor:
    """Decode ``image`` without the float conversion: uint8 ``[H, W, 3]`` RGB array for encoded bytes, paths,
    PIL images and uint8 arrays; float32 ``[3, H, W]`` tensor in [0, 1] for float inputs.

    ``to_tensor(x)`` equals ``stack_images([decode_raw(x)])[0]``; the scoring workers decode with this and
    convert a whole same-size group to float at once (:func:`stack_images`)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(image), f"({len(image)} bytes)")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            if "://" in path:
                import fsspec

                with fsspec.open(path, "rb") as f:
                    data = f.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except (OSError, ValueError) as exc:
            raise ImageDecodeError(f"Cannot read image file {path}: {exc}") from exc
        return _decode_bytes(data, path)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            _check_size(image, f"({type(image).__name__} {image.mode})")
            try:
                return _pil_u8(image)
            except (OSError, ValueError) as exc:
                raise ImageDecodeError(f"Cannot convert PIL image of mode {image.mode!r}: {exc}") from exc
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
                raise ImageDecodeError(f"uint8 image arrays must be HWC with 1, 3 or 4 channels, got shape {image.shape}.")
            if image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            return image[..., :3]
        image = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if t.ndim != 3 or t.shape[0] != 3:
            raise ImageDecodeError(f"Float image tensors must be CHW with 3 channels, got shape {tuple(t.shape)}.")
        if not torch.isfinite(t).all():
            raise ImageDecodeError("Image tensor contains NaN or inf values.")
        return t.clamp(0.0, 1.0).contiguous()
    if image is None:
        raise ImageDecodeError("Sample has no image (None).")
    raise ImageDecodeError(
        f"Unsupported image type {type(image).__name__}; pass bytes, a path, a PIL image, a uint8 HWC array or "
        "a float CHW tensor in [0, 1]."
    )


def image_size(raw: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of a :func:`decode_raw` result."""
    return (int(raw.shape[0]), int(raw.shape[1])) if isinstance(raw, np.ndarray) else (int(raw.shape[1]), int(raw.shape[2]))


def stack_images(raws: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Same-size :func:`decode_raw` results -> one contiguous float32 ``[B, 3, H, W]`` batch in [0, 1].

    uint8 images are stacked as uint8 and converted in one operation (bit-identical to :func:`to_tensor`)."""
    h, w = image_size(raws[0])
    if all(isinstance(r, np.ndarray) for r in raws):
        u8 = np.empty((len(raws), 3, h, w), np.uint8)  # HWC -> CHW while still 1 byte per value
        for i, r in enumerate(raws):
            u8[i] = r.transpose(2, 0, 1)
        return torch.from_numpy(u8).float().div_(255.0)
    out = torch.empty((len(raws), 3, h, w), dtype=torch.float32)
    for i, r in enumerate(raws):
        out[i] = _u8_to_float(r) if isinstance(r, np.ndarray) else r
    return out


def to_tensor(image: Any) -> torch.Tensor:
    """Decode ``image`` to a float32 tensor ``[3, H, W]`` in [0, 1] (RGB).

    Accepts encoded bytes (PNG/JPEG/WebP/...), a local path or fsspec URL (``str`` / ``os.PathLike``), a PIL
    image (any mode; alpha is composited on white), a uint8 ``HWC`` / ``HW`` numpy array, or a float ``CHW``
    tensor/array in [0, 1]. Raises :class:`ImageDecodeError` for anything unreadable.
    """
    raw = decode_raw(image)
    return _u8_to_float(raw) if isinstance(raw, np.ndarray) else raw
