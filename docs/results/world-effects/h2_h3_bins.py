"""Hypotheses 2 and 3 (issue 13), no training: what the world_alignment bins mean, and how populated the
joint top of the four world rewards is.

    .venv/bin/python docs/results/world-effects/h2_h3_bins.py --n 3000 --out docs/results/world-effects/h2_h3_3000.json
    .venv/bin/python docs/results/world-effects/h2_h3_bins.py --n 50000 --skip-pairs --out docs/results/world-effects/h2_h3_50000.json

Data: the default preset's world (seed 0, 32 px, default source config); bins: the project's `quantile` binner
(16 bins, fitted on these rows, as miro bin does). Pairs: held-out scenes (seed 1), each image scored with its
true caption and with a near-miss of each corruption kind, both mapped into the same training bins.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

torch.set_num_threads(1)

from miro_core import registry  # noqa: E402
from miro_world.captions import CORRUPTIONS, corrupt, phrase, spec_from_scene  # noqa: E402
from miro_world.source import WorldSource, make_sample  # noqa: E402

REWARDS = ("world_sharpness", "world_cleanliness", "world_vividness", "world_alignment")


def score(name, images, captions, bs=512):
    r = registry("rewards").create(name)
    r.setup("cpu")
    with torch.no_grad():
        return torch.cat([r.score(images[i:i + bs], captions[i:i + bs]) for i in range(0, len(captions), bs)]).numpy()


def to_t(imgs):
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


def se(p, n):
    return float(np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    src = WorldSource(WorldSource.Config(num_samples=a.n, seed=0, image_size=32))
    samples = [src[i] for i in range(a.n)]
    images = to_t([s.image for s in samples])
    caps = [s.caption for s in samples]
    scores = {r: score(r, images, caps) for r in REWARDS}
    binner = registry("binners").create("quantile", {"num_bins": a.bins})
    bins, states = {}, {}
    for r in REWARDS:
        bins[r], states[r] = binner.fit_transform(scores[r])
    out = {"n": a.n, "bins": a.bins}
    # ---- H2: composition of every alignment bin
    corr = np.array([(s.meta["caption_corruption"] or {"type": "true"})["type"] for s in samples])
    ndeg = np.array([len(s.meta["degradations"]) for s in samples], float)
    backdrop = np.array([s.meta["scene"]["backdrop"] is not None for s in samples])
    nobj = np.array([len(s.meta["scene"]["objects"]) for s in samples], float)
    kind = np.array([s.meta["scene"]["kind"] for s in samples])
    ba = bins["world_alignment"]
    per_bin = []
    for k in range(a.bins):
        m = ba == k
        n = int(m.sum())
        pt = float((corr[m] == "true").mean()) if n else float("nan")
        per_bin.append({"bin": k, "rows": n, "score_range": [float(scores["world_alignment"][m].min()),
                        float(scores["world_alignment"][m].max())] if n else None,
                        "true_caption": pt, "true_caption_se": se(pt, n),
                        "corruptions": {c: float((corr[m] == c).mean()) for c in sorted(set(corr)) if c != "true"},
                        "degradations_mean": float(ndeg[m].mean()), "backdrop": float(backdrop[m].mean()),
                        "objects_mean": float(nobj[m].mean()),
                        "kinds": {kd: float((kind[m] == kd).mean()) for kd in sorted(set(kind))}})
    out["alignment_bins"] = per_bin
    # what orders TRUE-caption rows among themselves (the top half of the bins is almost all true captions)
    from scipy.stats import spearmanr
    t = corr == "true"
    sa = scores["world_alignment"]
    out["true_caption_rows_spearman_alignment_vs"] = {
        "n_degradations": float(spearmanr(sa[t], ndeg[t]).statistic),
        "backdrop": float(spearmanr(sa[t], backdrop[t]).statistic),
        "n_objects": float(spearmanr(sa[t], nobj[t]).statistic),
        **{r: float(spearmanr(sa[t], scores[r][t]).statistic) for r in REWARDS[:3]},
    }
    out["true_caption_mean_bin_by_kind"] = {kd: float(ba[t & (kind == kd)].mean()) for kd in sorted(set(kind))}
    # ---- H3: joint extremes
    top = {r: bins[r] == a.bins - 1 for r in REWARDS}
    q4 = {r: bins[r] >= int(0.75 * a.bins) for r in REWARDS}
    out["pearson"] = {f"{x}~{y}": float(np.corrcoef(scores[x], scores[y])[0, 1]) for i, x in enumerate(REWARDS) for y in REWARDS[i + 1:]}
    out["rows_in_top_bin_of_all_four"] = int(np.logical_and.reduce([top[r] for r in REWARDS]).sum())
    out["rows_in_top_quarter_of_all_four"] = int(np.logical_and.reduce([q4[r] for r in REWARDS]).sum())
    three = [r for r in REWARDS if r != "world_cleanliness"]
    out["rows_in_top_bin_of_sharp_vivid_align"] = int(np.logical_and.reduce([top[r] for r in three]).sum())
    out["rows_in_top_bin"] = {r: int(top[r].sum()) for r in REWARDS}
    # density near candidate targets: rows within 1 bin (L_inf) of the target level vector
    lv = np.stack([bins[r] for r in REWARDS], 1) / (a.bins - 1)
    cands = {"all 1": [1, 1, 1, 1], "vividness 0.75, rest 1": [1, 1, 0.75, 1], "vividness 0.5, rest 1": [1, 1, 0.5, 1],
             "all 0.75": [0.75] * 4, "all 0": [0, 0, 0, 0], "sharp,clean,align 1; vivid 0": [1, 1, 0, 1]}
    out["rows_within_one_bin_of_target"] = {k: int((np.abs(lv - np.array(v)) <= 1.0 / (a.bins - 1) + 1e-6).all(1).sum())
                                            for k, v in cands.items()}
    # ---- H2b: true vs near-miss caption on the same image, mapped to the training bins
    if not a.skip_pairs:
        rng = np.random.default_rng(7)
        cfg = WorldSource.Config(num_samples=a.pairs, seed=1, image_size=32)
        imgs, caps_t, caps_w, kinds_w = [], [], [], []
        for i in range(a.pairs):
            s = make_sample(1, i, cfg)
            from miro_world.scene import Scene
            spec = spec_from_scene(Scene.from_dict(s.meta["scene"]))
            for kd in CORRUPTIONS:
                got = corrupt(spec, kd, rng)
                if got is None:
                    continue
                imgs.append(s.image)
                caps_t.append(phrase(spec, rng))
                caps_w.append(phrase(got[0], rng))
                kinds_w.append(kd)
        im = to_t(imgs)
        st = score("world_alignment", im, caps_t)
        sw = score("world_alignment", im, caps_w)
        bt = binner.transform(st, states["world_alignment"])
        bw = binner.transform(sw, states["world_alignment"])
        kinds_w = np.array(kinds_w)
        pairs = {}
        for kd in ["all", *CORRUPTIONS]:
            m = np.ones(len(kinds_w), bool) if kd == "all" else kinds_w == kd
            n = int(m.sum())
            gap = (bt[m] - bw[m]).astype(float)
            pairs[kd] = {"pairs": n, "P(score true > near-miss)": float((st[m] > sw[m]).mean()),
                         "mean bin of true": float(bt[m].mean()), "mean bin of near-miss": float(bw[m].mean()),
                         "mean bin gap": float(gap.mean()), "mean bin gap se": float(gap.std(ddof=1) / np.sqrt(n))}
        out["true_vs_near_miss"] = pairs
        # bin by bin: of the images whose TRUE caption lands in bin k, how often does a near-miss land lower
        bb = []
        for k in range(a.bins):
            m = bt == k
            n = int(m.sum())
            p = float((bw[m] < k).mean()) if n else float("nan")
            bb.append({"true_bin": k, "pairs": n, "P(near-miss bin < k)": p, "se": se(p, n),
                       "mean near-miss bin": float(bw[m].mean()) if n else None})
        out["by_true_bin"] = bb
        # true captions' bin distribution
        out["true_caption_bin_hist"] = np.bincount(bt, minlength=a.bins).tolist()
        out["near_miss_bin_hist"] = np.bincount(bw, minlength=a.bins).tolist()
    json.dump(out, open(a.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in out.items() if k not in ("alignment_bins", "by_true_bin")}, indent=1))
    for b in per_bin:
        print(b["bin"], b["rows"], "true %.3f" % b["true_caption"], "deg %.2f" % b["degradations_mean"],
              "bd %.2f" % b["backdrop"], "obj %.2f" % b["objects_mean"], "range %.3f..%.3f" % tuple(b["score_range"]))
    for b in out.get("by_true_bin", []):
        print(b)


if __name__ == "__main__":
    main()
