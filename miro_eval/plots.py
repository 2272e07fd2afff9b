"""Matplotlib (Agg) figures written to PNG: curves, radars, sweeps, test-time scaling, bars, image grids."""

from __future__ import annotations

__all__ = ["plot_curves", "plot_radar", "plot_sweep", "plot_test_time_scaling", "plot_bars", "save_grid"]

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_MARKERS = {"baseline": "x", "miro": "D"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return max(1, math.ceil(n / max(cols, 1))), max(cols, 1)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def plot_curves(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], metrics: Sequence[str], path: str | Path,
                *, title: str = "reward vs training step", xlabel: str = "step") -> Path:
    """``curves[model][metric] = {"steps": [...], "values": [...]}`` (``steps`` = the x values); one panel per metric."""
    plt = _plt()
    rows, cols = _grid(len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for model, cs in curves.items():
            if metric in cs:
                ax.plot(cs[metric]["steps"], cs[metric]["values"], marker=_MARKERS.get(model, "o"), label=model, ms=4)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_radar(metrics_by_model: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | Path,
               *, reference: str = "miro") -> Path:
    """One radar per other model, ``reference`` vs it (paper Figure 4). Each axis is scaled to the min..max
    of that metric over all models, consistently across panels."""
    plt = _plt()
    others = [m for m in metrics_by_model if m != reference] or [reference]
    vals = np.array([[float(metrics_by_model[m].get(k, np.nan)) for k in metrics] for m in metrics_by_model])
    lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)

    def norm(model):
        v = np.array([float(metrics_by_model[model].get(k, np.nan)) for k in metrics])
        return np.nan_to_num(0.15 + 0.85 * (v - lo) / span, nan=0.0)

    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False).tolist()
    rows, cols = _grid(len(others))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), subplot_kw={"polar": True}, squeeze=False)
    for ax, other in zip(axes.flat, others):
        for model, color in ((other, "tab:blue"), (reference, "tab:orange")):
            if model not in metrics_by_model:
                continue
            v = norm(model).tolist()
            ax.plot(angles + angles[:1], v + v[:1], color=color, label=model)
            ax.fill(angles + angles[:1], v + v[:1], color=color, alpha=0.15)
        ax.set_xticks(angles)
        ax.set_xticklabels([f"{m.replace('/mean', '')}\n[{lo[i]:.3g}, {hi[i]:.3g}]" for i, m in enumerate(metrics)], fontsize=6)
        ax.set_yticklabels([])
        ax.set_ylim(0, 1)
        ax.set_title(f"{reference} vs {other}", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(others):]:
        ax.axis("off")
    return _save(fig, path)


def plot_sweep(xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | Path, *, xlabel: str, title: str) -> Path:
    """Each series against ``xs`` in its own panel."""
    plt = _plt()
    names = list(series)
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.plot(list(xs), list(series[name]), marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_test_time_scaling(results: Mapping[str, Mapping[int, Mapping[str, float]]], metrics: Sequence[str], path: str | Path,
                           *, title: str = "best-of-N") -> Path:
    """``results[model][N][metric]``; x axis log2 N (paper Figure 8)."""
    plt = _plt()
    rows, cols = _grid(len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for model, by_n in results.items():
            ns = sorted(int(n) for n in by_n)
            ax.plot([math.log2(n) for n in ns], [by_n[n].get(metric, np.nan) for n in ns], marker=_MARKERS.get(model, "o"), label=model)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("log2 N")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_bars(metrics_by_model: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Grouped bars, one panel per metric."""
    plt = _plt()
    models = list(metrics_by_model)
    rows, cols = _grid(len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        ax.bar(range(len(models)), [float(metrics_by_model[m].get(metric, np.nan)) for m in models],
               color=["tab:orange" if m == "miro" else "tab:blue" for m in models])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def save_grid(images: Any, path: str | Path, *, nrow: int = 8, padding: int = 2) -> Path:
    """Save ``[B,3,H,W]`` images in [0,1] as one PNG grid."""
    import torch
    from PIL import Image

    imgs = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
    b, c, h, w = imgs.shape
    ncol = max(1, min(nrow, b))
    nrows = max(1, math.ceil(b / ncol))
    canvas = torch.ones(3, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for i in range(b):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, y : y + h, x : x + w] = imgs[i, :3] if c >= 3 else imgs[i, :1].expand(3, h, w)
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path
