"""Shared helpers of the issue-13 experiments: evaluate a trained miro-run out folder's checkpoints at any sampling
setting with the same prompts, seeds, rewards and compositional evaluator as ``miro-run``'s main evaluation
(64 held-out prompts, world seed + 10007, eval seed 1234, 16 Euler steps, 64 images per GenEval category).
Uses only stable public pieces (MiroPipeline, miro_eval._common, the registered evaluators)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from miro_core import registry  # noqa: E402
from miro_core.sampling import MiroPipeline  # noqa: E402
from miro_eval._common import generate_batched, load_rewards, score_images  # noqa: E402

REWARDS = ("world_sharpness", "world_cleanliness", "world_vividness", "world_alignment")
_cache: dict = {}


def pipe(run_dir: str, model: str) -> MiroPipeline:
    key = (run_dir, model)
    if key not in _cache:
        _cache[key] = MiroPipeline.from_checkpoint(Path(run_dir) / "models" / model, device="cpu", use_ema=True)
    return _cache[key]


def prompts(n: int = 64, seed: int = 0) -> list[str]:
    from miro_world.source import WorldSource

    src = WorldSource(WorldSource.Config(num_samples=n, seed=seed + 10_007, image_size=32))
    return [src[i].caption for i in range(n)]


def rewards():
    if "rewards" not in _cache:
        _cache["rewards"] = load_rewards(REWARDS)
    return _cache["rewards"]


def measure(p, *, geneval: bool = True, n_prompts: int = 64, images_per_category: int = 64, seed: int = 1234,
            num_steps: int = 16, per_image: bool = False, prompt_list=None, **kw) -> dict:
    """Reward means ± SE on the eval prompts (+ GenEval overall ± SE). ``kw``: MiroPipeline sampling args."""
    kw = {"num_steps": num_steps, "solver": "euler", **kw}
    pr = prompt_list or prompts(n_prompts)
    imgs = generate_batched(p, pr, batch_size=32, seed=seed, **kw)
    sc = score_images(rewards(), imgs, pr)
    out = {}
    for r, v in sc.items():
        v = np.asarray(v, float)
        out[r] = float(v.mean())
        out[r + "_se"] = float(v.std(ddof=1) / math.sqrt(len(v)))
        if per_image:
            out[r + "_values"] = v.tolist()
    if geneval:
        ev = registry("evaluators").create("world_geneval", {"images_per_category": images_per_category})
        g = ev.evaluate(p, seed=seed, **kw)
        out["geneval"] = float(g["overall"])
        out["geneval_se"] = float(g["overall_stderr"])
    return out


def fmt(m: dict) -> str:
    parts = []
    for r in (*REWARDS, "geneval"):
        if r in m:
            parts.append(f"{r.replace('world_', '')} {m[r]:.3f}±{m[r + '_se']:.3f}")
    return "  ".join(parts)


def dump(path, obj):
    Path(path).write_text(json.dumps(obj, indent=1))
