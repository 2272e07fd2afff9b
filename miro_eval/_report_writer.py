"""Writes ``report.md`` and ``metrics.json`` of a ``miro-run`` out folder."""

from __future__ import annotations

__all__ = ["write_report", "reward_table_stats"]

import math
from pathlib import Path
from typing import Any

import numpy as np

from miro_core import unstructure

from ._experiments import main_metrics
from .report import Report, format_value, write_json


def reward_table_stats(store_url: str, binner: str) -> dict[str, Any]:
    """Per reward: rows, scored, failed, mean / std / min / max of the raw scores, bin occupancy."""
    from miro_core.store import RewardStore

    store = RewardStore.open(store_url)
    out: dict[str, Any] = {"rows": int(store.num_rows), "rewards": {}}
    binned = store.binnings().get(binner, [])
    for r in store.rewards():
        s = np.asarray(store.scores(r), dtype=np.float64)
        fin = s[np.isfinite(s)]
        row: dict[str, Any] = {
            "scored": int(fin.size),
            "missing": int(s.size - fin.size),
            "failures": len(store.failures(r)),
            "mean": float(fin.mean()) if fin.size else math.nan,
            "std": float(fin.std()) if fin.size else math.nan,
            "min": float(fin.min()) if fin.size else math.nan,
            "max": float(fin.max()) if fin.size else math.nan,
        }
        if r in binned:
            b = np.asarray(store.bins(binner, r))
            nb = int(store.bin_attrs(binner, r)["num_bins"])
            counts = np.bincount(b[b >= 0], minlength=nb)
            row.update({"num_bins": nb, "bin_min_count": int(counts.min()), "bin_max_count": int(counts.max())})
        out["rewards"][r] = row
    return out


def _headline(run: Any) -> str:
    models = run.metrics.get("models", {})
    if "miro" not in models or "baseline" not in models:
        return ""
    parts = []
    for k in main_metrics(run):
        a, b = (_with_stderr(run, models[m], k) for m in ("miro", "baseline"))
        parts.append(f"{k.replace('/mean', '')} {a} vs {b}")
    return "MIRO vs baseline (± standard error): " + "; ".join(parts)


def _stderr(run: Any, metrics: dict[str, Any], key: str) -> float | None:
    """Standard error of a main metric: reward std / sqrt(images), or the compositional evaluator's own."""
    if key.endswith("/mean"):
        std = metrics.get(key[: -len("/mean")] + "/std")
        n = run.cfg.eval.num_prompts
        return float(std) / math.sqrt(n) if std is not None and n > 0 else None
    se = metrics.get(f"{key}_stderr")
    return float(se) if se is not None else None


def _with_stderr(run: Any, metrics: dict[str, Any], key: str) -> str:
    se = _stderr(run, metrics, key)
    text = format_value(metrics.get(key), 3)
    return f"{text} ± {format_value(se, 2)}" if se is not None and math.isfinite(se) else text


def write_report(run: Any, models: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    cfg, out = run.cfg, run.out
    metrics = run.metrics
    metrics["config"] = unstructure(cfg)
    metrics["preset"] = cfg.preset
    metrics["data"] = {"spec": run.data_spec()}
    if cfg.rewards:
        metrics["reward_table"] = reward_table_stats(run.store_url, cfg.binner)
    metrics["model_rewards"] = {m: list(r) for m, r in models.items()}
    metrics["checkpoints"] = {m: run.checkpoint(m) for m in models}
    metrics["timings"] = dict(run.timings)
    metrics["headline"] = _headline(run)
    mm = main_metrics(run)

    rep = Report(f"MIRO run ({cfg.preset})", out)
    rep.text(
        f"Data `{run.data_spec()}`; rewards {', '.join(f'`{r}`' for r in cfg.rewards) or '(none)'}; binner "
        f"`{cfg.binner}` with {cfg.bins} bins; backbone `{cfg.backbone}`; {cfg.steps} training steps at batch "
        f"{cfg.batch_size}, seed {cfg.seed}, device `{cfg.device}`. Sampling: {cfg.eval.num_steps} {cfg.eval.solver} "
        f"steps, guidance scale {cfg.eval.guidance_scale} (`{cfg.eval.guidance}`: s+ = 1, s- = 0 for every reward; the "
        f"unconditioned baseline {'uses text CFG (empty caption in the negative branch)' if cfg.eval.baseline_text_cfg else 'is sampled without guidance'}). "
        f"Evaluation on {cfg.eval.num_prompts} held-out prompts. Resolved config: `config.json`; every number: `metrics.json`."
    )
    if metrics["headline"]:
        rep.text(f"**{metrics['headline']}**")

    if "reward_table" in metrics:
        rt = metrics["reward_table"]
        rep.heading("Reward table")
        rep.text(f"{rt['rows']} rows in `store.zarr`.")
        rep.table(["reward", "scored", "missing", "failures", "mean", "std", "min", "max", "bins", "min/max bin count"],
                  [[r, v["scored"], v["missing"], v["failures"], v["mean"], v["std"], v["min"], v["max"], v.get("num_bins"),
                    f"{v.get('bin_min_count', 'n/a')}/{v.get('bin_max_count', 'n/a')}"] for r, v in rt["rewards"].items()])

    rep.heading("Models")
    rep.text("Mean of each reward on the evaluation prompts (higher is better)"
             + (" and the compositional score (`geneval/overall`, exact GenEval-style check of the world)." if "geneval/overall" in mm else "."))
    header = ["model", "conditioned on", *[m.replace("/mean", "") for m in mm]]
    rep.table(header, [[m, ", ".join(models[m]) or "(none)", *[metrics["models"][m].get(k) for k in mm]] for m in models])
    gen_keys = sorted({k for m in models for k in metrics["models"][m] if k.startswith("geneval/") and k not in ("geneval/overall", "geneval/num_images", "geneval/overall_stderr")})
    if gen_keys:
        n_img = {format_value(metrics["models"][m].get("geneval/num_images")) for m in models}
        rep.text(f"Compositional score per category ({' / '.join(sorted(n_img))} images per model; `overall` is the mean "
                 "over categories, with its standard error):")
        rep.table(["model", *[k.removeprefix("geneval/") for k in gen_keys], "overall", "± SE"],
                  [[m, *[metrics["models"][m].get(k) for k in gen_keys], metrics["models"][m].get("geneval/overall"),
                    metrics["models"][m].get("geneval/overall_stderr")] for m in models])
    comp = metrics.get("comparison", {})
    if comp.get("reference_wins"):
        rep.text("Metrics on which MIRO is at least as good as each other model: "
                 + ", ".join(f"{m}: {w}" for m, w in comp["reference_wins"].items()) + ".")
    plots = metrics.get("plots", {})
    for key, alt in (("models", "reward means per model"), ("radar", "MIRO vs each model")):
        if key in plots:
            rep.image(plots[key], alt)

    rep.heading("Samples")
    rep.text("Same prompts and seeds for every model (`samples/prompts.txt`).")
    for m in models:
        p = out / "samples" / f"{m}.png"
        if p.exists():
            rep.text(f"**{m}**")
            rep.image(p, m)

    conv = metrics.get("convergence")
    if conv:
        rep.heading("Convergence")
        rep.text("Reward vs training step (evaluated during training). Speedup = steps the baseline needs to reach its "
                 "final value / steps MIRO needs to reach it (linear interpolation between evaluation points; n/a = "
                 "MIRO never reached it).")
        rep.table(["metric", "baseline final", "MIRO final", "baseline steps", "MIRO steps", "speedup"],
                  [[k, v.get("target"), v.get("miro_final"), v.get("steps_baseline"), v.get("steps_miro"), v.get("speedup")]
                   for k, v in conv["speedup"].items()])
        if "convergence" in plots:
            rep.image(plots["convergence"], "reward vs step")

    ctrl = metrics.get("controllability")
    if ctrl:
        rep.heading("Controllability")
        rep.text("The positive target of one reward is swept (other positive targets 1, negative targets 0); Spearman "
                 "correlation between target and the measured reward over all images.")
        rep.table(["reward", "levels", "measured means", "Spearman", "p-value", "Spearman (means)"],
                  [[r, ", ".join(format_value(x, 3) for x in v["levels"]),
                    ", ".join(format_value(x, 3) for x in v["means"][r]), v["spearman"], v["p_value"], v["spearman_means"]]
                   for r, v in ctrl.items()])
        for r, v in ctrl.items():
            rep.image(v["plot"], f"controllability {r}")

    loo = metrics.get("leave_one_out")
    if loo:
        rep.heading("Leave one reward out")
        rep.text("Change of each metric when one reward is removed from MIRO's conditioning (negative = worse).")
        rep.table(["removed", *[m.replace("/mean", "") for m in loo["metrics"]], "own reward change"],
                  [[r, *[d[m] for m in loo["metrics"]], loo["own_delta"][r]] for r, d in loo["deltas"].items()])
        if "leave_one_out" in plots:
            rep.image(plots["leave_one_out"], "leave one out")

    tts = metrics.get("test_time_scaling")
    if tts:
        rep.heading("Test-time scaling")
        rep.text(f"Best-of-N (N = 1..{tts['ns'][-1]}) selected by `{tts['selection_reward']}` on {tts['num_prompts']} prompts.")
        cols = sorted({k for by_n in tts["results"].values() for d in by_n.values() for k in d})
        rows = []
        for m, by_n in tts["results"].items():
            for n in sorted(by_n, key=int):
                rows.append([m, n, *[by_n[n].get(k) for k in cols]])
        rep.table(["model", "N", *cols], rows)
        rep.image(tts["plot"], "test-time scaling")

    tr = metrics.get("tradeoff")
    if tr:
        rep.heading("Trade-off")
        rep.text(f"Pairwise interpolation between `{tr['a']}` and `{tr['b']}`: s+ = 1; s-[{tr['a']}] = t, s-[{tr['b']}] = 1 - t, other s- = 1.")
        rep.table(["t", *tr["means"]], [[t, *[tr["means"][k][i] for k in tr["means"]]] for i, t in enumerate(tr["t"])])
        rep.image(tr["plot"], "trade-off")

    gs = metrics.get("guidance_sweep")
    if gs:
        rep.heading("Guidance scale")
        rep.text(f"Every metric of the main evaluation ({gs['num_prompts']} prompts, same seeds) at each guidance scale w, "
                 "from the same checkpoints. MIRO variants: `multi_reward_cfg` = paper eq. 3 (s+ = 1, s- = 0, caption in "
                 "both branches); `multi_reward_cfg_text_drop` = eq. 3 with the caption also dropped in the negative "
                 "branch; `text_cfg` = s- = s+ = 1 with the caption dropped in the negative branch (plain text CFG of the "
                 "reward-conditioned model). w = 0 is the positive branch alone.")
        rep.table(["model (guidance)", "w", *[m.replace("/mean", "") for m in gs["metrics"]]],
                  [[label, w, *[vals[k][i] for k in gs["metrics"]]]
                   for label, vals in gs["series"].items() for i, w in enumerate(gs["scales"])])
        rep.image(gs["plot"], "metric vs guidance scale")

    rep.heading("Artifacts and timings")
    rep.table(["model", "checkpoint", "TensorBoard logs"],
              [[m, Path(c).relative_to(out.resolve()) if Path(c).is_relative_to(out.resolve()) else c, f"models/{m}"]
               for m, c in metrics["checkpoints"].items()])
    rep.table(["phase", "seconds"], [[k, v] for k, v in run.timings.items()])
    write_json(out / "metrics.json", metrics)
    rep.write(out / "report.md")
    return metrics
