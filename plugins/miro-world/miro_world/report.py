"""Measurements of the world: rendering speed, reward correlations, rewards per degradation / corruption.

``python -m miro_world.report [--n 5000] [--seed 0]`` prints a JSON report (numbers quoted in docs/world.md).
``python -m miro_world.report --store OUT/store.zarr [--binner quantile]`` prints what the bottom and top bins of
each reward of a scored world table are made of (ground truth regenerated from the store's own data config).
"""

from __future__ import annotations

__all__ = ["measure", "detector_accuracy", "vividness_hacks", "bin_composition"]

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .source import WorldSource

REWARDS = ("world_sharpness", "world_cleanliness", "world_vividness", "world_alignment")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def measure(n: int = 5000, seed: int = 0, image_size: int = 32) -> dict[str, Any]:
    from miro_core import registry

    src = WorldSource(WorldSource.Config(num_samples=n, seed=seed, image_size=image_size))
    t0 = time.perf_counter()
    samples = list(src)
    gen_s = time.perf_counter() - t0
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    captions = [s.caption for s in samples]
    scores: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    for name in REWARDS:
        reward = registry("rewards").create(name)
        reward.setup("cpu")
        t = time.perf_counter()
        scores[name] = torch.cat([reward.score(images[i : i + 512], captions[i : i + 512]) for i in range(0, n, 512)]).numpy()
        timing[name] = n / (time.perf_counter() - t)
    corr = {f"{a} ~ {b}": _spearman(scores[a], scores[b]) for i, a in enumerate(REWARDS) for b in REWARDS[i + 1 :]}
    groups: dict[str, list[int]] = defaultdict(list)
    for k, s in enumerate(samples):
        degs = list(s.meta["degradations"])
        groups["clean image" if not degs else "degraded image"].append(k)
        for d in degs:
            groups[f"deg:{d}"].append(k)
        c = s.meta["caption_corruption"]
        groups[f"caption:{c['type'] if c else 'true'}"].append(k)
        if s.meta["scene"]["backdrop"]:
            groups["backdrop"].append(k)
    by_group = {g: {"n": len(ix), **{r: float(np.mean(scores[r][ix])) for r in REWARDS}} for g, ix in sorted(groups.items())}
    return {"n": n, "samples_per_second": n / gen_s, "reward_images_per_second": timing,
            "spearman": corr, "mean_by_group": by_group}


def detector_accuracy(n: int = 500, seed: int = 11) -> dict[str, float]:
    """Fraction of scenes whose detected multiset of (shape, colour) equals the truth, per condition."""
    from .degrade import apply_degradations, sample_degradations
    from .detector import detect
    from .scene import render, sample_scene, scene_rng

    mild = {"blur": {"sigma": 0.7}, "noise": {"std": 0.03}, "low_contrast": {"amount": 0.3, "gray": 0.5},
            "jpeg": {"quality": 50}, "clutter": None}
    conditions = ["clean@32", "clean@64", *(f"mild {k}" for k in mild), "source mix (any degradation, full strength)"]
    hits: dict[str, list[bool]] = {c: [] for c in conditions}
    probs = {"blur": 0.25, "noise": 0.25, "low_contrast": 0.2, "clutter": 0.1, "jpeg": 0.1}
    for i in range(n):
        rng = scene_rng(seed, i, 5)
        scene = sample_scene(rng, backdrop_prob=0.1)
        truth = sorted((o.shape, o.color) for o in scene.objects)
        base = render(scene, 32, chw=True).transpose(1, 2, 0)

        def ok(img) -> bool:
            return sorted((str(d.shape), d.color) for d in detect(img)) == truth

        hits["clean@32"].append(ok(base))
        if i < n // 3:
            hits["clean@64"].append(ok(render(scene, 64, chw=True)))
        for k, p in mild.items():
            if k == "clutter":
                p = sample_degradations(rng, {"clutter": 1.0})["clutter"]
            elif k == "noise":
                p = {**p, "seed": i}
            hits[f"mild {k}"].append(ok(apply_degradations(base, {k: p})))
        deg = {}
        while not deg:
            deg = sample_degradations(rng, probs)
        hits["source mix (any degradation, full strength)"].append(ok(apply_degradations(base, deg)))
    return {c: float(np.mean(v)) for c, v in hits.items()}


def vividness_hacks(n: int = 400, seed: int = 12) -> dict[str, dict[str, float]]:
    """What raising vividness the cheap way does to alignment: each hack edits clean scenes, and we report
    mean vividness, mean alignment of the (unchanged) true caption, and the fraction of images whose
    detected objects still equal the caption's objects."""
    import attrs

    from miro_core import registry

    from .captions import phrase, spec_from_scene
    from .detector import detect
    from .scene import COLORS, PALETTE, render, sample_scene, scene_rng

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(scene_rng(seed, i, 6)) for i in range(n)]
    captions = [phrase(spec_from_scene(s), None) for s in scenes]

    def backdrop(s):
        free = [c for c in COLORS if c != "white" and c not in {o.color for o in s.objects}]
        c = free[int(rng.integers(len(free)))]
        return attrs.evolve(s, background=tuple(float(v) * 0.8 for v in PALETTE[c]))

    def inflate(s):
        return attrs.evolve(s, objects=tuple(attrs.evolve(o, r=o.r * 2.0) for o in s.objects))

    def recolor(s):
        sat = [c for c in COLORS if c != "white"]
        objs = []
        for o in s.objects:
            c = sat[int(rng.integers(len(sat)))] if o.color == "white" else o.color
            objs.append(attrs.evolve(o, color=c, rgb=PALETTE[c]))
        return attrs.evolve(s, objects=tuple(objs))

    def blobs(s):
        extra = []
        for _ in range(2):
            c = COLORS[int(rng.integers(5))]
            extra.append(attrs.evolve(s.objects[0], shape="circle", color=c, rgb=PALETTE[c], r=0.3,
                                      cx=float(rng.uniform(0, 1)), cy=float(rng.uniform(0, 1))))
        return attrs.evolve(s, objects=tuple(extra) + s.objects)

    viv = registry("rewards").create("world_vividness")
    ali = registry("rewards").create("world_alignment")
    ali.setup("cpu")
    out = {}
    for name, fn in (("none", lambda s: s), ("saturated backdrop", backdrop), ("objects x2 size", inflate),
                     ("white -> saturated colours", recolor), ("two big extra blobs", blobs)):
        edited = [fn(s) for s in scenes]
        x = torch.stack([torch.from_numpy(render(s, 32, chw=True)) for s in edited])
        correct = [sorted((str(d.shape), d.color) for d in detect(img)) == sorted((o.shape, o.color) for o in s.objects)
                   for img, s in zip(x, scenes)]
        out[name] = {"vividness": float(viv.score(x, captions).mean()), "alignment": float(ali.score(x, captions).mean()),
                     "objects_as_captioned": float(np.mean(correct))}
    return out


def bin_composition(store_url: str, binner: str = "quantile") -> dict[str, Any]:
    """Per reward of a scored ``world`` table: for its bottom and top bin (and all rows), the share of
    saturated backdrops, the caption corruption types, and the mean number of degradations.

    The ground truth is regenerated from the store's recorded world config (``data_config``), row by row from
    the ids ``world-<seed>-<index>``."""
    from miro_core import ConfigError
    from miro_core.store import RewardStore

    from .source import make_sample

    store = RewardStore.open(store_url)
    conf = store.attrs.get("config")
    if not isinstance(conf, dict) or conf.get("data_source") != "world":
        raise ConfigError(f"{store_url} was not scored from the `world` data source: no ground truth to compare bins with.")
    cfg = WorldSource.Config(**conf["data_config"])
    binned = store.binnings().get(binner, [])
    if not binned:
        raise ConfigError(f"{store_url} has no `{binner}` bins; known binnings: {sorted(store.binnings()) or 'none'} "
                          f"(run `miro bin`).")
    truth = []
    for sid in store.ids():
        _, seed, index = str(sid).rsplit("-", 2)
        meta = make_sample(int(seed), int(index), cfg).meta
        corr = meta["caption_corruption"]
        truth.append((meta["scene"]["backdrop"] is not None, corr["type"] if corr else "none", len(meta["degradations"])))
    backdrop = np.array([t[0] for t in truth])
    corruption = np.array([t[1] for t in truth])
    n_deg = np.array([t[2] for t in truth], dtype=float)

    def describe(mask: np.ndarray) -> dict[str, Any]:
        if not mask.any():  # an empty bin (possible with e.g. the uniform binner)
            return {"rows": 0, "backdrop": None, "caption": {}, "degradations_mean": None}
        kinds, counts = np.unique(corruption[mask], return_counts=True)
        return {"rows": int(mask.sum()), "backdrop": float(backdrop[mask].mean()),
                "caption": {str(k): float(c / mask.sum()) for k, c in zip(kinds, counts)},
                "degradations_mean": float(n_deg[mask].mean())}

    out: dict[str, Any] = {"store": store_url, "binner": binner, "all": describe(np.ones(len(truth), bool)), "rewards": {}}
    for r in binned:
        b = np.asarray(store.bins(binner, r))
        nb = int(store.bin_attrs(binner, r)["num_bins"])
        out["rewards"][r] = {"num_bins": nb, "bottom_bin": describe(b == 0), "top_bin": describe(b == nb - 1)}
    return out


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--store", help="a scored world table: print its bin composition instead")
    ap.add_argument("--binner", default="quantile")
    a = ap.parse_args()
    if a.store:
        print(json.dumps(bin_composition(a.store, a.binner), indent=2))
        raise SystemExit(0)
    torch.set_num_threads(1)
    ap_detector = a.n // 5
    print(json.dumps({**measure(a.n, a.seed, a.image_size), "detector_accuracy": detector_accuracy(ap_detector),
                      "vividness_hacks": vividness_hacks()}, indent=2))
