"""Hypothesis 5: does each reward token reach the backbone, and does the alignment dial work?

    .venv/bin/python docs/results/world-effects/h5_dial.py RUN_DIR MODEL OUT.json

1. sensitivity: relative change of the predicted velocity when one reward's level goes 0 -> 1 (others at 1), on
   256 held-out world images (true captions) noised at t ~ U(0.05, 0.95), vs the change from dropping the caption;
2. gradient norm of each reward's token MLP (w1/b1/w2/b2 slice) on one batch of training-like data with its levels;
3. ablation: the alignment token replaced by zeros in the context (relative change of v);
4. the alignment dial (32 held-out prompts x 5 levels, per-image Spearman and level means) under: no guidance
   (w = 0), the paper-mini setting (eq. 3, others s+ = 1, s- = 0, w = 3), isolated alignment guidance
   (s+ = [1..1, a], s- = [1..1, 0], w = 3), and the official negative (empty caption, s- = 0, w = 3); levels 0, .25,
   .5, .75, 1 and the same on the bin grid (k/15).
"""
from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _we import dump, measure, pipe, prompts  # noqa: E402

from miro_eval.controllability import spearman  # noqa: E402

run, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
p = pipe(run, model)
names = list(p.reward_names)
net = p.model
res = {"rewards": names}
g = torch.Generator().manual_seed(0)

from miro_world.source import WorldSource  # noqa: E402

src = WorldSource(WorldSource.Config(num_samples=256, seed=777, image_size=32))
ss = [src[i] for i in range(256)]
x0 = torch.from_numpy(np.stack([s.image for s in ss])).permute(0, 3, 1, 2).float() / 255.0
x0 = p.autoencoder.encode(x0)  # images in [0, 1] -> latents
tok, mask = p.encode_text([s.meta["true_caption"] for s in ss])
etok, emask = p.encode_text([""] * 256)
eps = torch.randn(x0.shape, generator=g)
t = 0.05 + 0.9 * torch.rand(256, generator=g)
xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps


def v(levels, tk=tok, mk=mask):
    with torch.no_grad():
        return net(xt, t, tk, mk, levels)


n = len(names)
ones = torch.ones(256, n)
v1 = v(ones)
base = v1.pow(2).mean().sqrt()
sens = {}
for j, r in enumerate(names):
    lv = ones.clone()
    lv[:, j] = 0
    sens[r] = float((v1 - v(lv)).pow(2).mean().sqrt() / base)
L = max(tok.shape[1], etok.shape[1])
pad = lambda a, m: (torch.nn.functional.pad(a, (0, 0, 0, L - a.shape[1])), torch.nn.functional.pad(m, (0, L - m.shape[1])))  # noqa: E731
te, me = pad(etok, emask)
tk2, mk2 = pad(tok, mask)
sens["caption dropped"] = float((v(ones, tk2, mk2) - v(ones, te, me)).pow(2).mean().sqrt() / base)
res["relative_velocity_change_level_1_to_0"] = sens
print("sensitivity", sens, flush=True)

# 3. ablation: zero the alignment token
if "world_alignment" in names:
    cond = net.conditioning
    ja = names.index("world_alignment")
    orig = cond.reward_tokens

    def zeroed(levels):
        tkn = orig(levels).clone()
        tkn[:, ja] = 0
        return tkn

    cond.reward_tokens = zeroed
    vz = v(ones)
    cond.reward_tokens = orig
    res["relative_velocity_change_alignment_token_zeroed"] = float((v1 - vz).pow(2).mean().sqrt() / base)
    print("zeroed", res["relative_velocity_change_alignment_token_zeroed"], flush=True)

# 2. gradient norms per reward token MLP on training-like levels (the store's bins of these rows are not known
# here: use random bin levels k/15, the same for every reward, so the comparison between rewards is fair)
net.train()
lv = torch.randint(0, 16, (256, n), generator=g).float() / 15
vv = net(xt, t, tok, mask, lv)
loss = (vv - (eps - x0)).pow(2).mean()
net.zero_grad()
loss.backward()
c = net.conditioning
gn = {}
for j, r in enumerate(names):
    gn[r] = float(torch.sqrt(sum(x.grad[j].pow(2).sum() for x in (c.w1, c.b1, c.w2, c.b2))))
gn["text_proj"] = float(torch.sqrt(sum(x.grad.pow(2).sum() for x in c.text_proj.parameters())))
res["grad_norm_token_mlp"] = gn
net.eval()
net.zero_grad()
print("grad norms", gn, flush=True)

# 4. the dial
if "world_alignment" in names:
    pr = prompts(32)
    grid = {"0,.25,.5,.75,1": [0, .25, .5, .75, 1], "bin grid 0,4,8,11,15 /15": [0, 4 / 15, 8 / 15, 11 / 15, 1]}
    settings = {
        "w=0 (no guidance)": lambda a: dict(guidance="none", reward_targets={**{r: 1.0 for r in names}, "world_alignment": a}),
        "eq3 w=3 (others s+=1, s-=0)": lambda a: dict(guidance="multi_reward_cfg", guidance_scale=3.0,
                                                      reward_targets={**{r: 1.0 for r in names}, "world_alignment": a}),
        "isolated w=3 (s-=[1..,0])": lambda a: dict(guidance="multi_reward_cfg", guidance_scale=3.0,
                                                    reward_targets={**{r: 1.0 for r in names}, "world_alignment": a},
                                                    negative_reward_targets={**{r: 1.0 for r in names}, "world_alignment": 0.0}),
        "official w=3 (empty caption, s-=0)": lambda a: dict(guidance="multi_reward_cfg", guidance_scale=3.0,
                                                             drop_text_in_negative=True,
                                                             reward_targets={**{r: 1.0 for r in names}, "world_alignment": a}),
    }
    dial = {}
    for gname, levels in grid.items():
        for sname, mk in settings.items():
            xs, ys, means, ses = [], [], [], []
            for a in levels:
                m = measure(p, geneval=False, prompt_list=pr, per_image=True, **mk(float(a)))
                vals = m["world_alignment_values"]
                xs += [a] * len(vals)
                ys += vals
                means.append(m["world_alignment"])
                ses.append(m["world_alignment_se"])
            rho, pv = spearman(xs, ys)
            rho_m, _ = spearman(levels, means)
            dial[f"{sname} | {gname}"] = {"levels": levels, "alignment_means": means, "se": ses,
                                          "spearman_per_image": rho, "p": pv, "spearman_means": rho_m}
            print(sname, gname, np.round(means, 3), "rho %.3f" % rho, "rho_means %.2f" % rho_m, flush=True)
            dump(out, {**res, "dial": dial})
    res["dial"] = dial
dump(out, res)
