"""Training-step overhead and achieved FLOP/s of a ``rin`` training step.

overhead = full train step (batch assembly, conditioning, backbone fwd+bwd, loss, clipping, AdamW, LR schedule,
EMA) / bare backbone forward+backward on the same batch (context precomputed). Target <= 1.15.
FLOP/s: FlopCounterMode counts one full step's forward+backward FLOPs; divided by the measured step time and
compared with this machine's measured matmul peak (fp32 on CPU, bf16 on CUDA).

    python benchmarks/bench_train_step.py [--size small|base] [--batch 32] [--image 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import build_rin_model, interleaved, matmul_peak, sync  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image", type=int, default=32, help="latent side (pixel model: image side)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=8, help="interleaved rounds (min is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args(argv)

    from miro_core import structure
    from miro_core.training.config import TrainConfig
    from miro_core.training.data import TrainingData
    from miro_core.training.distributed import DistInfo
    from miro_core.training.ema import EMA
    from miro_core.training.loop import Batcher, _autocast, lr_factor, make_optimizer, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    rewards = ("aesthetic", "pick", "hpsv2", "image_reward")
    b, c, s, text_len, text_dim = args.batch, args.channels, args.image, 16, 384
    n = 4 * b
    data = TrainingData(
        ids=[str(i) for i in range(n)], captions=["x"] * n, latents=torch.randn(n, c, s, s),
        text_tokens=torch.randn(n, text_len, text_dim), text_mask=torch.ones(n, text_len, dtype=torch.bool),
        levels=torch.rand(n, len(rewards)), empty_tokens=torch.randn(1, 2, text_dim),
        empty_mask=torch.ones(1, 2, dtype=torch.bool), reward_names=rewards, binner_states={}, image_size=s,
    )
    cfg = structure({"batch_size": b, "device": str(device.type), "data": {"rewards": list(rewards)}}, TrainConfig)
    model = build_rin_model(args.size, rewards, text_dim, c, s, cond_dim=256).to(device).train()
    ema = EMA(model, 0.9999)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, 1000, 10, "cosine", 0.0))
    batcher = Batcher(data, cfg, DistInfo(), device, uniforms=model.train_uniforms)
    gen = torch.Generator().manual_seed(0)
    step = [0]

    def full():
        batches = batcher(step[0], gen)
        loss, gn = train_step(model, batches, opt, sched, ema, cfg, device, ddp=False)
        step[0] += 1
        return loss

    # bare: backbone forward + backward on one fixed batch, context precomputed, no optimizer
    fixed = batcher(0, torch.Generator().manual_seed(1))[0]
    with torch.no_grad():
        ctx, cmask = model.conditioning(fixed["tokens"], fixed["mask"], fixed["levels"])
    x_t = (1 - fixed["t"][:, None, None, None]) * fixed["x"] + fixed["t"][:, None, None, None] * fixed["eps"]

    def bare():
        with _autocast(device, cfg.precision):
            v = model.backbone(x_t, fixed["t"], ctx, cmask)
        v.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    times = interleaved({"full": full, "bare": bare}, device, rounds=args.iters, warmup=2)
    t_full, t_bare = times["full"], times["bare"]

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        full()
    sync(device)
    flops = fc.get_total_flops()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype, n=4096 if device.type == "cuda" else 1024)
    achieved = flops / t_full
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "size": args.size, "batch": b, "latent": [c, s, s],
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "full_step_ms": round(t_full * 1e3, 2), "bare_fwd_bwd_ms": round(t_bare * 1e3, 2),
        "overhead_ratio": round(t_full / t_bare, 3),
        "step_GFLOP": round(flops / 1e9, 2), "achieved_TFLOPs": round(achieved / 1e12, 4),
        "matmul_peak_TFLOPs": round(peak / 1e12, 4), "fraction_of_peak": round(achieved / peak, 3),
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
