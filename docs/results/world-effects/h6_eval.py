"""Hypothesis 6: evaluate one miro-run out folder (another backbone size or budget) with the same evaluation as the
other experiments (``_we.measure``), at w = 3: the baseline under text CFG, MIRO under the official negative branch
(the preset's main setting), under text CFG of MIRO (s- = s+ = 1, empty caption, the best setting of experiment 4)
and under eq. 3 with the caption kept. ``pooled_*``: the text-encoder probe, the same models sampled with every
caption's token states replaced by their masked mean (one pooled token, in both branches), to show whether the
backbone reads the token sequence. Results are added to OUT.json if it exists.

    .venv/bin/python docs/results/world-effects/h6_eval.py /tmp/we/c64 docs/results/world-effects/h6_c64.json \
        --settings text_cfg,eq3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _we import REWARDS, dump, fmt, measure, pipe  # noqa: E402

from miro_core.sampling import MiroPipeline  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("out")
ap.add_argument("--w", type=float, default=3.0)
ap.add_argument("--settings", default="baseline,official,text_cfg",
                help="comma list of baseline, official, text_cfg, eq3, pooled_baseline, pooled_official")
args = ap.parse_args()
chosen = args.settings.split(",")

ones = {r: 1.0 for r in REWARDS}
official = dict(guidance="multi_reward_cfg", drop_text_in_negative=True)
settings = {  # key: (label, model, sampling kwargs, pooled caption?)
    "baseline": ("baseline (text CFG)", "baseline", official, False),
    "official": ("miro official (empty caption, s-=0)", "miro", official, False),
    "text_cfg": ("miro text CFG of MIRO (s-=s+=1, empty caption)", "miro", {**official, "negative_reward_targets": ones},
                 False),
    "eq3": ("miro eq3 (caption kept, s-=0)", "miro", dict(guidance="multi_reward_cfg"), False),
    "pooled_baseline": ("baseline (text CFG), pooled caption", "baseline", official, True),
    "pooled_official": ("miro official (empty caption, s-=0), pooled caption", "miro", official, True),
}
unknown = set(chosen) - set(settings)
if unknown:
    raise SystemExit(f"unknown settings {sorted(unknown)}; known: {', '.join(settings)}")
res: dict = {"run": args.run, "w": args.w}
metrics = Path(args.run) / "metrics.json"
if metrics.exists():
    m = json.loads(metrics.read_text())
    res["run_main_table"] = m.get("models")
    res["run_convergence_speedup"] = {k: v.get("speedup") for k, v in m.get("convergence", {}).get("speedup", {}).items()}
    res["run_timings"] = m.get("timings")


def pooled_pipe(model: str) -> MiroPipeline:
    p = MiroPipeline.from_checkpoint(Path(args.run) / "models" / model, device="cpu", use_ema=True)
    enc = p.encode_text

    def encode_pooled(prompts):
        tok, mask = enc(prompts)
        m = mask.float()[..., None]
        mean = (tok * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
        return mean, torch.ones(mean.shape[0], 1, dtype=torch.bool, device=mean.device)

    p.encode_text = encode_pooled  # type: ignore[method-assign]
    p.negative_text, p._empty = None, None  # the empty caption of the negative branch is pooled too
    return p


out_path = Path(args.out)
if out_path.exists():  # add to an earlier evaluation of the same run
    res = {**json.loads(out_path.read_text()), **res}
for key in chosen:
    label, model, kw, pooled = settings[key]
    t = time.time()
    r = measure(pooled_pipe(model) if pooled else pipe(args.run, model), guidance_scale=args.w, **kw)
    res[label] = r
    print(f"{label} w={args.w}: {fmt(r)}  [{time.time() - t:.0f}s]", flush=True)
    dump(args.out, res)
