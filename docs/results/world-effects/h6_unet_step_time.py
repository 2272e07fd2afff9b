"""Hypothesis 6: training-step time of the default `unet` vs a wider one (base_channels 64), to give the wider model
the same backbone compute as the default preset's 2000 steps. 1 torch thread, batch 32, 3x32x32, a 20-token
context, forward + backward + AdamW, min over 4 interleaved rounds of 3 steps.

    OMP_NUM_THREADS=1 .venv/bin/python docs/results/world-effects/h6_unet_step_time.py
"""
import time

import torch

torch.set_num_threads(1)
from miro_models.backbones.unet import UNet  # noqa: E402

cfgs = {"default": {}, "c64": {"base_channels": 64}, "c48b2": {"base_channels": 48, "num_res_blocks": 2}}
models = {k: UNet(UNet.Config(**v)) for k, v in cfgs.items()}
for k, m in models.items():
    print(k, sum(p.numel() for p in m.parameters()) / 1e6, "M")
x = torch.randn(32, 3, 32, 32)
t = torch.rand(32)
ctx = torch.randn(32, 20, 256)
mask = torch.ones(32, 20, dtype=torch.bool)
times = {k: [] for k in models}
for r in range(4):
    for k, m in models.items():
        opt = torch.optim.AdamW(m.parameters())
        t0 = time.perf_counter()
        for _ in range(3):
            loss = m(x, t, ctx, mask).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        times[k].append((time.perf_counter() - t0) / 3)
for k, v in times.items():
    print(k, "min ms/step", round(min(v) * 1000, 1))
