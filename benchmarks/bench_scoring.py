"""Scoring pipeline overhead: wall time of the full ``score_dataset`` path / bare reward forward time.

The full path = reading the ids (rows pass), creating the store, streaming + decoding the PNG files and
reading the caption files (in ``workers`` DataLoader processes, or in the main process for ``0``), batching,
scoring, buffering and chunk writes, final attrs. The bare time is the reward's ``score`` on the same batches
of already-decoded tensors (no decoding, no store): like with like. Target: ratio <= 1.15.

The machine this runs on is shared and noisy, so every configuration (bare, and the full path once per
``--workers`` value) runs ``--repeats`` times in rotating order (bare, w0, w1 / w0, w1, bare / ...) and the
minimum wall time of each is used. The main-process CPU time (``time.process_time``, decode workers not
included) is printed too: it shows what the pipeline costs the process that runs the reward, independent of
how busy the other cores are. One-time imports (zarr, DataLoader) are paid by a warm-up run before timing,
as the bare side's model construction is.

    .venv/bin/python benchmarks/bench_scoring.py --n 2000 --workers 0,1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,1", help="comma-separated worker counts to measure (e.g. 0,1,2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the reward")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=16, help="channels of the tiny CNN reward (cost knob)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    torch.set_num_threads(args.threads)
    import miro_core._builtins as builtins

    miro_core.reset_plugins(miro_core.PluginHost(load_entrypoints=False,
                                                 extra_plugins=[(builtins, "miro_core"), (_Plugin(), "bench")]))
    from miro_core.data import resolve_data, to_tensor
    from miro_core.scoring import score_dataset
    from miro_core.store import RewardStore

    opts = {"bench_tiny_conv": {"width": args.width}}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_images(data, args.n, args.size)
        source = resolve_data(data)
        reward = miro_core.registry("rewards").create("bench_tiny_conv", {"width": args.width})
        reward.setup("cpu")
        samples = list(source)
        t = time.perf_counter()
        images = [to_tensor(s.image) for s in samples]
        batches = [torch.stack(images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
        decode_s = time.perf_counter() - t
        prompts = [[s.caption for s in samples[i : i + args.batch_size]] for i in range(0, len(samples), args.batch_size)]
        ref = torch.cat([reward.score(b, pr) for b, pr in zip(batches, prompts)]).numpy()  # also the warm-up

        def bare():
            for b, pr in zip(batches, prompts):
                with torch.inference_mode():
                    reward.score(b, pr)

        def full(w, tag):
            url = os.path.join(tmp, f"store-{tag}")
            out = score_dataset(data, opts, url, batch_size=args.batch_size, workers=w, progress=False)
            return url, out

        for w in workers:  # warm-up: one-time imports, worker start machinery
            score_dataset(data, opts, os.path.join(tmp, "store-warm"), batch_size=args.batch_size, workers=w,
                          progress=False, limit=2 * args.batch_size)
            shutil.rmtree(os.path.join(tmp, "store-warm"))
        configs = ["bare"] + [f"w{w}" for w in workers]
        wall: dict[str, list[float]] = {c: [] for c in configs}
        cpu: dict[str, list[float]] = {c: [] for c in configs}
        for rep in range(args.repeats):
            order = configs[rep % len(configs):] + configs[: rep % len(configs)]
            for c in order:
                t, tc = time.perf_counter(), time.process_time()
                if c == "bare":
                    bare()
                    url = None
                else:
                    url, out = full(int(c[1:]), f"{c}-{rep}")
                wall[c].append(time.perf_counter() - t)
                cpu[c].append(time.process_time() - tc)
                if url is not None:
                    assert out["rewards"]["bench_tiny_conv"]["scored"] == args.n, out
                    np.testing.assert_allclose(RewardStore.open(url).scores("bench_tiny_conv"), ref, rtol=1e-4, atol=1e-6)
                    shutil.rmtree(url)
    b, bc = min(wall["bare"]), min(cpu["bare"])
    print(f"images={args.n} size={args.size} batch={args.batch_size} threads={args.threads} width={args.width} "
          f"repeats={args.repeats} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    print(f"decode alone (main process, to_tensor + stack): {decode_s:.2f}s ({decode_s / args.n * 1e3:.3f} ms/img)")
    print(f"bare reward forward: wall {b:.2f}s  cpu {bc:.2f}s  ({b / args.n * 1e3:.3f} ms/img)  all: "
          + " ".join(f"{x:.2f}" for x in wall["bare"]))
    result = {"n": args.n, "width": args.width, "bare_s": b, "decode_s": decode_s, "workers": {}}
    for w in workers:
        f, fc = min(wall[f"w{w}"]), min(cpu[f"w{w}"])
        print(f"workers={w}: full wall {f:.2f}s ({args.n / f:.0f} img/s)  ratio {f / b:.3f} (target <= 1.15)   "
              f"main-process cpu {fc:.2f}s  cpu ratio {fc / bc:.3f}   all: " + " ".join(f"{x:.2f}" for x in wall[f"w{w}"]))
        result["workers"][w] = {"full_s": f, "ratio": f / b, "cpu_s": fc, "cpu_ratio": fc / bc}
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
