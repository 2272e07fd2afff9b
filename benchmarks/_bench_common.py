"""Shared helpers of the training / sampling benchmarks (timing, a RIN model of a chosen size)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, warmup: int = 2, iters: int = 5) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def interleaved(fns: dict, device: torch.device, rounds: int = 5, warmup: int = 1) -> dict:
    """Minimum seconds per call of each function, measured in alternating rounds.

    On a shared, loaded machine the minimum over interleaved rounds is the most stable estimate of the
    uncontended time, and interleaving exposes every function to the same load drift.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync(device)
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, iters: int = 5) -> float:
    """Measured FLOP/s of a square matmul (this machine's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = interleaved({"mm": lambda: a @ b}, device, rounds=iters, warmup=2)["mm"]
    return 2 * n**3 / s


RIN_SIZES = {
    "small": dict(interface_dim=128, latent_dim=192, num_latents=64, num_blocks=2, layers_per_block=2, heads=4,
                  interface_heads=4),
    "base": dict(interface_dim=256, latent_dim=512, num_latents=128, num_blocks=4, layers_per_block=4, heads=8,
                 interface_heads=8),
}


def build_rin_model(size: str, rewards, text_dim: int, in_channels: int, image_size: int, cond_dim: int):
    from miro_core.model import build_model

    return build_model(
        {"backbone": {"name": "rin", "options": dict(RIN_SIZES[size])}, "conditioning": {"dim": cond_dim}},
        rewards, text_dim, in_channels, image_size,
    )
