"""Object detector for world images: colour segmentation + connected components + shape templates.

1. If the image is noisy (robust noise estimate above ``denoise_above``), a 3x3 median filter per channel.
2. Background colour = per-channel median of the one-pixel border; foreground = pixels farther than
   ``fg_threshold`` (RGB distance) from it.
3. Each foreground pixel gets a colour name: "white" when unsaturated and brighter than the background,
   otherwise the palette colour of nearest hue (unsaturated, dark pixels get none).
4. Connected components (8-connectivity) per colour; inside each, the mask is refined at half the
   component's peak contrast (the half-maximum contour is the true boundary under blur and washed-out
   colours) and re-labelled, which also separates same-coloured neighbours joined by anti-aliasing.
5. Components smaller than ``min_area`` (in 32x32 pixel units) are specks and are dropped. The shape is
   the template (circle / square / triangle fitted to the component's bounding box) of highest IoU with
   the mask; below ``min_iou`` the component is kept with ``shape=None`` (not an object of any class).
"""

from __future__ import annotations

__all__ = ["Detection", "DetectorConfig", "detect", "color_name_of_hue"]

from typing import Any

import attrs
import numpy as np

from miro_core import config

from .scene import COLORS, PALETTE, SHAPES, shape_coverage


@attrs.frozen
class Detection:
    shape: str | None
    color: str
    #: ``(x0, y0, x1, y1)`` normalised to [0, 1] (y down)
    box: tuple[float, float, float, float]
    #: mask centroid ``(x, y)``, normalised
    centroid: tuple[float, float]
    #: area in pixels of the image as given
    area: int
    #: IoU of the mask with the best shape template
    iou: float

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@config
class DetectorConfig:
    fg_threshold: float = 0.15
    min_saturation: float = 0.25
    min_area: float = 8.0
    min_iou: float = 0.6
    denoise_above: float = 0.015


def _hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    delta = mx - mn
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    safe = np.where(delta > 1e-8, delta, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    s = np.where(mx > 1e-8, delta / np.maximum(mx, 1e-8), 0.0)
    return h, s, mx


_CHROMATIC = [c for c in COLORS if c != "white"]
_HUES = np.array([_hsv(np.asarray(PALETTE[c], dtype=np.float64))[0] for c in _CHROMATIC], dtype=np.float64)


def color_name_of_hue(hue: np.ndarray) -> np.ndarray:
    """Index into the chromatic colours (all colours but white) of the nearest palette hue."""
    d = np.abs(np.asarray(hue, dtype=np.float64)[..., None] - _HUES)
    d = np.minimum(d, 360.0 - d)
    return d.argmin(axis=-1)


def _noise_sigma(img: np.ndarray) -> float:
    from scipy.ndimage import convolve

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    resp = [np.abs(convolve(img[..., c].astype(np.float64), mask, mode="nearest"))[1:-1, 1:-1] for c in range(3)]
    return float(np.median(np.stack(resp))) / (0.6745 * 6.0)


def _to_hwc(image: Any) -> np.ndarray:
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (HWC or CHW), got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _blur_sigma(soft: np.ndarray) -> float:
    """Edge blur (gaussian sigma, pixels) of one object from its soft mask (contrast / peak contrast):
    the 10-90% transition band of a blurred edge is ~2.56 sigma wide, so band area / perimeter gives it
    (anti-aliasing alone accounts for ~``_AA_BAND`` pixels)."""
    from scipy.ndimage import binary_erosion

    half = soft >= 0.5
    perimeter = int((half & ~binary_erosion(half)).sum())
    band = int(((soft > 0.1) & (soft < 0.9)).sum())
    return max(band / max(perimeter, 1) - _AA_BAND, 0.0) / 2.56


_AA_BAND = 0.95


def _classify(soft: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], scale: float) -> tuple[str | None, float]:
    """Best shape and its IoU. Each template is fitted to the box (a triangle may also grow at the top:
    the half-maximum contour of a blurred triangle loses its apex), blurred like the object's edges and
    thresholded at half its maximum, so blurred shapes are compared with equally blurred templates."""
    from scipy.ndimage import gaussian_filter

    x0, y0, x1, y1 = box
    pad = int(np.ceil(2 * scale))
    h, w = mask.shape
    rx0, ry0, rx1, ry1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)
    sub = mask[ry0:ry1, rx0:rx1]
    soft_sub = soft[ry0:ry1, rx0:rx1]
    sigma = _blur_sigma(soft_sub)
    bx0, by0, bx1, by1 = x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0
    best, best_iou = None, 0.0
    for shape in SHAPES:
        grows = (0.0, 0.5, 1.0, 1.5, 2.0) if shape == "triangle" else (0.0,)
        for grow in grows:
            g = grow * max(sigma, 0.5)
            cov = shape_coverage(shape, sub.shape[0], sub.shape[1], (bx0 - g / 2, by0 - g, bx1 + g / 2, by1))
            c = gaussian_filter(cov, sigma, mode="constant") if sigma > 0.3 else cov
            c = c / max(float(c.max()), 1e-6)
            # soft IoU of the normalised contrast map with the template keeps sub-pixel evidence
            union = np.maximum(c, soft_sub).sum()
            iou = float(np.minimum(c, soft_sub).sum() / union) if union > 0 else 0.0
            if iou > best_iou + 1e-9:
                best, best_iou = shape, iou
    return best, best_iou


def detect(image: Any, cfg: DetectorConfig | None = None) -> list[Detection]:
    """Detect the objects of a world image (uint8 HWC, float HWC or float CHW in [0, 1])."""
    from scipy import ndimage

    cfg = cfg or DetectorConfig()
    img = _to_hwc(image)
    h, w, _ = img.shape
    scale = (h * w) / (32.0 * 32.0)
    if _noise_sigma(img) > cfg.denoise_above:
        img = ndimage.median_filter(img, size=(3, 3, 1), mode="nearest")
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    fg = dist > cfg.fg_threshold
    hue, sat, val = _hsv(img.astype(np.float64))
    _, _, bg_val = _hsv(bg.astype(np.float64))
    labels = np.full((h, w), -1, dtype=np.int64)
    chromatic = fg & (sat >= cfg.min_saturation)
    labels[chromatic] = color_name_of_hue(hue[chromatic])
    white = fg & (sat < cfg.min_saturation) & (val > float(bg_val) + 0.2)
    labels[white] = len(_CHROMATIC)
    names = [*_CHROMATIC, "white"]
    structure = np.ones((3, 3), dtype=bool)
    out: list[Detection] = []
    for k, cname in enumerate(names):
        comp, n = ndimage.label(labels == k, structure=structure)
        for j in range(1, n + 1):
            cmask = comp == j
            peak = float(np.percentile(dist[cmask], 90))
            refined, m = ndimage.label(cmask & (dist >= 0.5 * peak), structure=structure)
            for q in range(1, m + 1):
                mask = refined == q
                area = int(mask.sum())
                if area < cfg.min_area * scale:
                    continue
                if not ndimage.binary_erosion(mask, structure=structure).any():
                    continue  # a line of anti-aliasing fringe, not an object
                ys, xs = np.nonzero(mask)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                soft = np.clip(dist / max(peak, 1e-6), 0, 1) * ndimage.binary_dilation(mask, iterations=3)
                best, best_iou = _classify(soft, mask, (x0, y0, x1, y1), scale ** 0.5)
                out.append(Detection(
                    shape=best if best_iou >= cfg.min_iou else None, color=cname,
                    box=(x0 / w, y0 / h, x1 / w, y1 / h), centroid=(float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h),
                    area=area, iou=best_iou))
    out.sort(key=lambda d: -d.area)
    return out
