"""Backbones at equal wall-clock on the built-in world: which one learns the world's shapes in a CPU budget?

For each backbone: measure its training-step time here (batch 32, 3x32x32, 4 world rewards), give it
``budget / step time`` steps (so every backbone trains for the same seconds), run ``miro-run`` (default preset
data: 3000 world samples, 16 quantile bins; MIRO only, no baseline, no sweep), then read the main metrics and
sample an 8-image grid of "a photo of two red circles" (30 Euler steps, w = 3, seed 0).

    python benchmarks/compare_backbones.py --out /tmp/bb [--budget 170] [--only rin_small,unet]

Prints one JSON line per backbone and a markdown table; grids go to ``OUT/<name>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

#: name -> (backbone, options). ``rin_small`` / ``dit_small``: the options miro-run uses (SMALL_BACKBONES).
CANDIDATES = {
    "unet": ("unet", {}),
    "dit_small": ("dit", {"patch_size": 4, "hidden_dim": 128, "depth": 4, "heads": 4}),
    "rin_small": ("rin", {"interface_dim": 64, "latent_dim": 96, "num_latents": 16, "num_blocks": 1,
                          "layers_per_block": 2, "heads": 2, "interface_heads": 2, "patch_size": 4}),
    "rin_patch2": ("rin", {"interface_dim": 96, "latent_dim": 192, "num_latents": 32, "num_blocks": 2,
                           "layers_per_block": 2, "heads": 6, "interface_heads": 4, "patch_size": 2}),
}
REWARDS = ("world_sharpness", "world_cleanliness", "world_vividness", "world_alignment")


def step_seconds(backbone: str, options: dict, reps: int = 6) -> float:
    from miro_core.model import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": {"name": backbone, "options": dict(options)}}, REWARDS, 384, 3, 32).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, t = torch.randn(32, 3, 32, 32), torch.rand(32)
    tok, mask, lv = torch.randn(32, 12, 384), torch.ones(32, 12, dtype=torch.bool), torch.rand(32, 4)
    kw = {name: torch.rand(32) for name in model.train_uniforms}
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x, t, tok, mask, lv, **kw).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return min(times[2:])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=170.0, help="training seconds per backbone (pure step time)")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(CANDIDATES))
    ap.add_argument("--step-ms", default="", help="NAME=MS,... step times measured earlier (skips re-measuring them)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.only.split(",") if args.only else CANDIDATES) if n]
    # all step times first, interleaved over rounds (the machine is shared: min over rounds per backbone)
    given = {k: float(v) / 1e3 for k, v in (x.split("=") for x in args.step_ms.split(",") if x)}
    secs = {n: given.get(n, float("inf")) for n in names}
    for _ in range(3):
        for n in names:
            if n not in given:
                secs[n] = min(secs[n], step_seconds(*CANDIDATES[n]))
    print(json.dumps({"step_ms": {n: round(v * 1e3, 1) for n, v in secs.items()}}), flush=True)
    rows = []
    for name in names:
        backbone, options = CANDIDATES[name]
        sec = secs[name]
        steps = max(50, int(args.budget / sec))
        run_dir = out / name
        cmd = [sys.executable, "-m", "miro_eval.run", "--out", str(run_dir), "--backbone", backbone, "--steps", str(steps),
               "--no-progress", "--set", "baseline=false", "--set", "experiments.guidance_sweep=false",
               "--set", "eval.eval_every=0", "--set", f"backbone_options={_toml_table(options)}",
               "--set", f"train.checkpoint_every={steps}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        grid = sample_grid(run_dir, out / f"{name}.png")
        row = {"name": name, "backbone": backbone, "options": options, "step_ms": round(sec * 1e3, 1),
               "steps": steps, "wall_s": round(wall, 1), "params_M": grid.pop("params_M"), **grid,
               "metrics": _main_metrics(metrics)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(_table(rows))


def sample_grid(run_dir: Path, png: Path) -> dict:
    from PIL import Image

    from miro_core.sampling import MiroPipeline, image_grid

    ckpt = json.loads((run_dir / "models" / "miro" / "result.json").read_text())["checkpoint_dir"]
    pipe = MiroPipeline.from_checkpoint(ckpt)
    images = pipe(["a photo of two red circles"] * 8, num_inference_steps=30, guidance_scale=3.0, seed=0,
                  output_type="pt")
    grid = image_grid(images, nrow=8)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).resize(
        (grid.shape[2] * 3, grid.shape[1] * 3), Image.NEAREST).save(png)
    return {"grid": str(png), "params_M": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 2)}


def _main_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics["models"]["miro"].items() if k.endswith("/mean") or k.startswith("geneval/")}


def _toml_table(options: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + "}"


def _table(rows) -> str:
    keys = ["world_sharpness/mean", "world_cleanliness/mean", "world_vividness/mean", "world_alignment/mean",
            "geneval/overall"]
    lines = ["| backbone | params | ms/step | steps | " + " | ".join(k.split("/")[0] for k in keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for r in rows:
        vals = [f"{r['metrics'].get(k, float('nan')):.3f}" for k in keys]
        lines.append(f"| {r['name']} | {r['params_M']} M | {r['step_ms']} | {r['steps']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
