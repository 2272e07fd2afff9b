"""Sampling overhead of MiroPipeline with multi-reward CFG.

ratio_2B = guided sampling time / (steps x bare model forward at batch 2B)   (guidance runs ONE 2B forward per step)
ratio_B  = guided sampling time / (2 x steps x bare model forward at batch B) (the issue's definition; target <= 1.10)
The bare forward is ``MiroModel.forward`` (conditioning + backbone) under no_grad on fixed inputs. The pipeline time
includes text encoding, noise, guidance combination, the Euler loop and decoding (pixel autoencoder).

    python benchmarks/bench_sampling.py [--size small|base] [--batch 8] [--steps 20] [--image 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import build_rin_model, interleaved  # noqa: E402


class _TextEncoder:
    """Cheap deterministic encoder (random fixed tokens of length 16) so the benchmark measures sampling."""

    dim = 384

    def encode(self, captions):
        g = torch.Generator().manual_seed(len(captions))
        return torch.randn(len(captions), 16, self.dim, generator=g), torch.ones(len(captions), 16, dtype=torch.bool)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=3, help="interleaved rounds (min is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args(argv)

    from miro_core import registry
    from miro_core.sampling import MiroPipeline, _autocast

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    rewards = ("aesthetic", "pick", "hpsv2", "image_reward")
    s, b = args.image, args.batch
    model = build_rin_model(args.size, rewards, 384, 3, s, cond_dim=256).to(device).eval()
    ae = registry("autoencoders").create("pixel")
    pipe = MiroPipeline(model, _TextEncoder(), ae, reward_names=rewards, image_size=s, latent_shape=(3, s, s),
                        device=device)
    prompts = [f"prompt {i}" for i in range(b)]

    def guided():
        pipe(prompts, num_inference_steps=args.steps, seed=0, output_type="pt")

    def bare(n):
        x = torch.randn(n, 3, s, s, device=device)
        t = torch.full((n,), 0.5, device=device)
        tok, msk = (v.to(device) for v in _TextEncoder().encode(["p"] * n))
        lev = torch.rand(n, len(rewards), device=device)

        def f():  # `steps` consecutive forwards, so it is timed like the sampling loop
            with torch.no_grad(), _autocast(device):
                for _ in range(args.steps):
                    model(x, t, tok, msk, lev)
        return f

    fb, f2b = bare(b), bare(2 * b)
    times = interleaved({"guided": guided, "fwd_B": fb, "fwd_2B": f2b}, device, rounds=args.iters, warmup=1)
    t_g, t_b, t_2b = times["guided"], times["fwd_B"], times["fwd_2B"]
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "size": args.size, "batch": b, "steps": args.steps, "image": s,
        "guided_ms": round(t_g * 1e3, 1), "fwd_B_ms": round(t_b / args.steps * 1e3, 2),
        "fwd_2B_ms": round(t_2b / args.steps * 1e3, 2),
        "ratio_vs_steps_x_fwd_2B": round(t_g / t_2b, 3),
        "ratio_vs_2_x_steps_x_fwd_B": round(t_g / (2 * t_b), 3),
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
