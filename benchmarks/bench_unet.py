"""Training throughput of the ``unet`` backbone vs a small ``rin``: bare backbone forward + backward (train mode).

Batch 32 of 3x32x32, context 24 x 256 (4 padded positions), interleaved rounds (min time per step, see
``_bench_common.interleaved``) at each torch thread count; prints parameters, samples/s and the ratio.

    python benchmarks/bench_unet.py [--threads 2 1] [--rounds 6] [--unet '{"base_channels": 32}'] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import interleaved

RIN_SMALL = {"interface_dim": 64, "latent_dim": 96, "num_latents": 16, "num_blocks": 1, "layers_per_block": 2,
             "heads": 2, "interface_heads": 2, "patch_size": 4}


def main(argv=None):
    from miro_core import registry
    from miro_models.backbones._layers import count_parameters

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--unet", default="{}", help="unet options (JSON)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    models = {"unet": registry("backbones").create("unet", json.loads(args.unet)).train(),
              "rin": registry("backbones").create("rin", dict(RIN_SMALL)).train()}
    g = torch.Generator().manual_seed(0)
    b = args.batch
    x, t = torch.randn(b, 3, 32, 32, generator=g), torch.rand(b, generator=g)
    ctx = torch.randn(b, 24, 256, generator=g)
    mask = torch.ones(b, 24, dtype=torch.bool)
    mask[:, 20:] = False

    def step(m):
        m.zero_grad(set_to_none=True)
        m(x, t, ctx, mask).pow(2).mean().backward()

    result = {"params": {k: count_parameters(m) for k, m in models.items()}, "samples_per_s": {}}
    for n in args.threads:
        torch.set_num_threads(n)
        best = interleaved({k: (lambda m=m: step(m)) for k, m in models.items()}, torch.device("cpu"),
                           rounds=args.rounds, warmup=1)
        sps = {k: b / s for k, s in best.items()}
        result["samples_per_s"][n] = {**{k: round(v, 1) for k, v in sps.items()},
                                      "unet/rin": round(sps["unet"] / sps["rin"], 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
