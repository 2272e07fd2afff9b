"""Hypothesis 4 (and 3 at sampling time): MIRO and the baseline of one miro-run out folder over the same w grid,
for every negative branch: eq. 3 (caption kept, s- = 0), the official release's (empty caption, s- = 0), plain text
CFG of the reward model (s- = s+ = 1, empty caption), and eq. 3 with targets nearer the data (s+[vividness] < 1).

    .venv/bin/python docs/results/world-effects/h4_guidance_grid.py /tmp/we/d0 docs/results/world-effects/h4_d0.json
"""
from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _we import REWARDS, dump, fmt, measure, pipe  # noqa: E402

run, out = sys.argv[1], sys.argv[2]
ws = [float(x) for x in (sys.argv[3].split(",") if len(sys.argv) > 3 else "0,1,2,3,5".split(","))]
miro, base = pipe(run, "miro"), pipe(run, "baseline")
ones = {r: 1.0 for r in REWARDS}
variants = {
    "eq3 (caption kept, s-=0)": dict(guidance="multi_reward_cfg"),
    "official (empty caption, s-=0)": dict(guidance="multi_reward_cfg", drop_text_in_negative=True),
    "text CFG of MIRO (s-=s+=1, empty caption)": dict(guidance="multi_reward_cfg", drop_text_in_negative=True,
                                                      negative_reward_targets=ones),
    "official, s+[vividness]=0.5": dict(guidance="multi_reward_cfg", drop_text_in_negative=True,
                                       reward_targets={**ones, "world_vividness": 0.5}),
}
res = {}
for w in ws:
    t = time.time()
    m = measure(base, guidance="multi_reward_cfg", drop_text_in_negative=True, guidance_scale=w)
    res[f"baseline (text CFG)|{w}"] = m
    print(f"baseline text CFG w={w}: {fmt(m)}  [{time.time() - t:.0f}s]", flush=True)
    for name, kw in variants.items():
        if w == 0 and name != "eq3 (caption kept, s-=0)" and "vividness" not in name:
            continue  # w = 0 is the positive branch alone: the same for every negative branch
        m = measure(miro, guidance_scale=w, **kw)
        res[f"miro {name}|{w}"] = m
        print(f"miro {name} w={w}: {fmt(m)}", flush=True)
    dump(out, res)
