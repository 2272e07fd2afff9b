"""Writes ``report.md`` and ``metrics.json`` of a ``miro-run`` out folder."""

from __future__ import annotations

__all__ = ["write_report", "reward_table_stats"]

import math
from pathlib import Path
from typing import Any

import numpy as np

from miro_core import unstructure

from ._experiments import REPORT_ORDER, main_metrics
from .report import Report, format_value, write_json
from .suites.comparison import ComparisonSuite


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


def _targets_text(e: Any) -> str:
    """The reward targets of the main evaluation in words (``eval.positive_targets`` / ``negative_targets``)."""
    def part(sign: str, targets: dict[str, float], default: float) -> str:
        if not targets:
            return f"s{sign} = {default:g} for every reward"
        named = ", ".join(f"{r} {float(v):g}" for r, v in targets.items())
        return f"s{sign}: {named}, {default:g} for the others"

    if not e.positive_targets and not e.negative_targets:
        return "s+ = 1, s- = 0 for every reward"
    return f"{part('+', dict(e.positive_targets), 1.0)}; {part('-', dict(e.negative_targets), 0.0)}"


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

    rep = Report(f"MIRO run ({cfg.preset})", out)
    rep.text(
        f"Data `{run.data_spec()}`; rewards {', '.join(f'`{r}`' for r in cfg.rewards) or '(none)'}; binner "
        f"`{cfg.binner}` with {cfg.bins} bins; backbone `{cfg.backbone}`; {cfg.steps} training steps at batch "
        f"{cfg.batch_size}, seed {cfg.seed}, device `{cfg.device}`. Sampling: {cfg.eval.num_steps} {cfg.eval.solver} "
        f"steps, guidance scale {cfg.eval.guidance_scale} (`{cfg.eval.guidance}`: {_targets_text(cfg.eval)}; the "
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

    ComparisonSuite.report_section(rep, run, metrics, models)

    rep.heading("Samples")
    rep.text("Same prompts and seeds for every model (`samples/prompts.txt`).")
    for m in models:
        p = out / "samples" / f"{m}.png"
        if p.exists():
            rep.text(f"**{m}**")
            rep.image(p, m)

    for exp in REPORT_ORDER:
        if metrics.get(exp.key):
            exp.report_section(rep, run, metrics, models)

    rep.heading("Artifacts and timings")
    rep.table(["model", "checkpoint", "TensorBoard logs"],
              [[m, Path(c).relative_to(out.resolve()) if Path(c).is_relative_to(out.resolve()) else c, f"models/{m}"]
               for m, c in metrics["checkpoints"].items()])
    rep.table(["phase", "seconds"], [[k, v] for k, v in run.timings.items()])
    write_json(out / "metrics.json", metrics)
    rep.write(out / "report.md")
    return metrics
