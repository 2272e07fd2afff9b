"""Binning at the paper's scale: 16M rows x 7 rewards, fit on a 100k calibration subset, transform all.

    .venv/bin/python benchmarks/bench_binning.py                 # all built-in binners, 16M x 7
    .venv/bin/python benchmarks/bench_binning.py --rows 1000000 --binners quantile

Synthetic scores have the shapes real rewards have (skewed, heavy-tailed, bounded, discrete with ties,
clipped spikes, a few NaN / inf). Prints wall time per binner (fit and transform separately) and the
process peak RSS (``resource.getrusage``), plus the traced numpy peak of the binning step alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc

import numpy as np


def synthetic_scores(rows: int, rewards: int, seed: int = 0) -> np.ndarray:
    """``[rewards, rows]`` float32 scores of varied distributions (one column per reward)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rewards, rows), dtype=np.float32)
    kinds = ["normal", "lognormal", "beta", "discrete", "clipped", "student", "uniform"]
    for j in range(rewards):
        kind = kinds[j % len(kinds)]
        col = out[j]
        if kind == "normal":
            col[:] = rng.standard_normal(rows, dtype=np.float32) * 0.6 + 5.5  # aesthetic-like
        elif kind == "lognormal":
            col[:] = np.exp(rng.standard_normal(rows, dtype=np.float32) * 0.5)
        elif kind == "beta":
            col[:] = rng.beta(5.0, 2.0, size=rows)  # VQA probability-like
        elif kind == "discrete":
            col[:] = rng.integers(0, 10, size=rows)  # many ties
        elif kind == "clipped":
            col[:] = np.minimum(rng.standard_normal(rows, dtype=np.float32), 1.0)  # spike at the clip value
        elif kind == "student":
            col[:] = rng.standard_t(3, size=rows)
        else:
            col[:] = rng.random(rows, dtype=np.float32)
        col[rng.integers(0, rows, size=max(rows // 1000, 1))] = np.nan  # failed scores
        col[rng.integers(0, rows, size=max(rows // 100000, 1))] = np.inf
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16_000_000)
    p.add_argument("--rewards", type=int, default=7)
    p.add_argument("--num-bins", type=int, default=64)
    p.add_argument("--calibration", type=int, default=100_000)
    p.add_argument("--binners", default="quantile,uniform,refined_quantile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON line with all figures")
    args = p.parse_args(argv)

    import miro_core

    t0 = time.perf_counter()
    scores = synthetic_scores(args.rows, args.rewards, args.seed)
    gen_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    calib_idx = np.sort(rng.choice(args.rows, size=min(args.calibration, args.rows), replace=False))
    bins = np.empty(scores.shape, dtype=np.int16)
    results = {"rows": args.rows, "rewards": args.rewards, "num_bins": args.num_bins,
               "calibration": int(calib_idx.size), "generate_s": round(gen_s, 2), "binners": {}}
    for name in args.binners.split(","):
        binner = miro_core.registry("binners").create(name, {"num_bins": args.num_bins})
        tracemalloc.start()
        t0 = time.perf_counter()
        states = [binner.fit(scores[j][calib_idx]) for j in range(args.rewards)]
        t1 = time.perf_counter()
        for j in range(args.rewards):
            bins[j] = binner.transform(scores[j], states[j])
        t2 = time.perf_counter()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        counts = np.bincount(bins[0][bins[0] >= 0], minlength=args.num_bins)
        results["binners"][name] = {
            "fit_s": round(t1 - t0, 3),
            "transform_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2),
            "traced_peak_mb": round(traced_peak / 2**20, 1),
            "reward0_bin_share_min_max_pct": [round(float(100 * counts.min() / counts.sum()), 3),
                                               round(float(100 * counts.max() / counts.sum()), 3)],
        }
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["input_mb"] = round(scores.nbytes / 2**20, 1)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.rows:,} rows x {args.rewards} rewards, {args.num_bins} bins, calibration {calib_idx.size:,} "
          f"(scores {results['input_mb']} MB, generated in {gen_s:.1f} s)")
    for name, r in results["binners"].items():
        print(f"  {name:<17} fit {r['fit_s']:.3f} s  transform {r['transform_s']:.2f} s  total {r['total_s']:.2f} s  "
              f"traced peak {r['traced_peak_mb']} MB  reward0 bin share {r['reward0_bin_share_min_max_pct']} %")
    print(f"  peak RSS of the process: {results['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
