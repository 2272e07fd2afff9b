"""Scoring pipeline overhead: wall time of the full ``score_dataset`` path / bare reward forward time.

The full path = reading the ids (rows pass), creating the store, streaming + decoding the PNG files
(in ``--workers`` processes), batching, scoring, buffering and chunk writes, final attrs. The bare time is
the reward's ``score`` on the same batches of already-decoded tensors. Target: ratio <= 1.15.

    .venv/bin/python benchmarks/bench_scoring.py --n 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

import miro_core
from miro_core import Reward, config, hookimpl


class TinyConv(Reward):
    """A cheap image reward: a fixed random 3-layer CNN, mean of its output (ignores text)."""

    name = "bench_tiny_conv"
    uses_text = False

    @config
    class Config:
        width: int = 32

    def setup(self, device="cpu"):
        torch.manual_seed(0)
        w = self.config.width
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(w, w, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(w, w, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
        ).eval().to(device)

    def score(self, images, prompts):
        with torch.inference_mode():
            return self.net(images).mean(dim=(1, 2, 3))


class _Plugin:
    @hookimpl
    def miro_register_rewards(self, register):
        register(TinyConv)


def write_images(root: str, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(root, f"{i:06d}.png"))
        with open(os.path.join(root, f"{i:06d}.txt"), "w") as f:
            f.write(f"sample {i}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the reward")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--width", type=int, default=16, help="channels of the tiny CNN reward (cost knob)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import miro_core._builtins as builtins

    miro_core.reset_plugins(miro_core.PluginHost(load_entrypoints=False,
                                                 extra_plugins=[(builtins, "miro_core"), (_Plugin(), "bench")]))
    from miro_core.data import resolve_data, to_tensor
    from miro_core.scoring import score_dataset
    from miro_core.store import RewardStore

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_images(data, args.n, args.size)
        source = resolve_data(data)
        reward = miro_core.registry("rewards").create("bench_tiny_conv", {"width": args.width})
        reward.setup("cpu")
        samples = list(source)
        images = [to_tensor(s.image) for s in samples]
        batches = [torch.stack(images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
        reward.score(batches[0], [""] * len(batches[0]))  # warm-up
        bare, full = [], []
        for rep in range(args.repeats):
            t = time.perf_counter()
            for b in batches:
                reward.score(b, [""] * len(b))
            bare.append(time.perf_counter() - t)
            url = os.path.join(tmp, f"store{rep}")
            t = time.perf_counter()
            out = score_dataset(data, {"bench_tiny_conv": {"width": args.width}}, url, batch_size=args.batch_size, workers=args.workers,
                                progress=False)
            full.append(time.perf_counter() - t)
            assert out["rewards"]["bench_tiny_conv"]["scored"] == args.n
        ref = torch.cat([reward.score(b, [""] * len(b)) for b in batches]).numpy()
        np.testing.assert_allclose(RewardStore.open(url).scores("bench_tiny_conv"), ref, rtol=1e-4, atol=1e-6)
    b, f = min(bare), min(full)
    print(f"images={args.n} size={args.size} batch={args.batch_size} workers={args.workers} threads={args.threads} "
          f"width={args.width}")
    print(f"bare reward forward: {b:.2f}s  full score_dataset: {f:.2f}s  ({args.n / f:.0f} img/s)")
    print(f"overhead ratio: {f / b:.3f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
