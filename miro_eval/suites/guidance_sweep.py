"""``guidance_sweep``: every main metric at each guidance scale, MIRO under each guidance variant and the baseline
under its own guidance (no retraining), as in ``miro-run``.

Scales ``experiments.guidance_sweep_scales``, MIRO variants ``experiments.guidance_sweep_variants``
(``multi_reward_cfg`` = paper eq. 3, ``multi_reward_cfg_text_drop``, ``text_cfg`` = s- = s+ = 1, or any registered
guidance). Each point is the main evaluation (:meth:`RunContext.measure`) of that sampler setting, cached in
``experiments/guidance_sweep/``; scale 0 is the positive branch alone, computed once per model. Alone::

    miro eval --suite guidance_sweep --checkpoint OUT/models/miro --set run_dir=OUT \\
        --set models.baseline=OUT/models/baseline
"""

from __future__ import annotations

__all__ = ["GuidanceSweepSuite", "sweep_kwargs"]

from typing import Any

from miro_core import hookimpl

from ._experiment import ExperimentSuite, eval_key, main_metrics


def sweep_kwargs(run: Any, pipe: Any, variant: str, scale: float) -> dict[str, Any]:
    """Sampling kwargs of one point of the guidance sweep (``variant`` is ignored for the baseline; ``unguided``
    keeps the evaluation's own guidance, at scale 0 it is the positive branch alone)."""
    kw = run.sampling_kwargs(pipe)
    kw["guidance_scale"] = float(scale)
    names = tuple(getattr(pipe, "reward_names", ()))
    if not names or variant == "unguided":  # the baseline: its own evaluation mode (text CFG or none)
        return kw
    kw.pop("drop_text_in_negative", None)
    if variant == "text_cfg":  # rewards held at s+ in both branches: only the caption is contrasted
        pos = kw.get("reward_targets", {})
        kw.update(guidance="multi_reward_cfg", drop_text_in_negative=True,
                  negative_reward_targets={r: float(pos.get(r, 1.0)) for r in names})
    else:
        kw["guidance"] = variant
    return kw


class GuidanceSweepSuite(ExperimentSuite):
    """Every main metric vs guidance scale: MIRO per guidance variant, the baseline under its own guidance."""

    name = "guidance_sweep"
    key = "guidance_sweep"

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return run.cfg.experiments.guidance_sweep and ("miro" in models or "baseline" in models)

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..plots import plot_curves

        names = [m for m in ("miro", "baseline") if m in models]
        if not names:
            return
        ex, e = run.cfg.experiments, run.cfg.eval
        scales = sorted({float(w) for w in ex.guidance_sweep_scales})
        metrics = main_metrics(run)
        series: dict[str, tuple[str, str]] = {}
        for m in names:
            if m == "baseline":
                series["baseline (text CFG)" if e.baseline_text_cfg else "baseline"] = (m, "baseline")
            else:
                for v in ex.guidance_sweep_variants:
                    series[f"{m} ({v})"] = (m, v)

        def point(m: str, v: str, w: float) -> tuple[str, str, float]:
            return (m, v if w > 0 else "unguided", w)  # w = 0: the positive branch alone, whatever the variant

        todo = dict.fromkeys(point(m, v, w) for m, v in series.values() for w in scales)
        points: dict[tuple[str, str, float], dict[str, float]] = {}
        bar = run.progress.bar(len(todo), "guidance sweep")
        for m, vkey, w in todo:
            key = {"ckpt": run.checkpoint_id(m), "variant": vkey, "scale": w, "eval": eval_key(e),
                   "rewards": run.eval_reward_names, "prompts": e.num_prompts}

            def compute(m=m, vkey=vkey, w=w):
                pipe = run.pipeline(m)
                out = run.measure(pipe, sweep_kwargs(run, pipe, vkey, w))
                return {k: float(x) for k, x in out.items() if k in metrics}

            safe = f"{m}_{vkey}_{w:g}".replace("/", "_")
            points[(m, vkey, w)] = run._cached(f"experiments/guidance_sweep/{safe}.json", key, compute)
            bar.update(1)
        bar.close()
        table = {label: {k: [float(points[point(m, v, w)].get(k, float("nan"))) for w in scales] for k in metrics}
                 for label, (m, v) in series.items()}
        curves = {label: {k: {"steps": scales, "values": vals} for k, vals in by_metric.items()} for label, by_metric in table.items()}
        plot = plot_curves(curves, metrics, run.path("plots", "guidance_sweep.png"), title="metric vs guidance scale w",
                           xlabel="guidance scale w")
        run.metrics["guidance_sweep"] = {"scales": scales, "metrics": metrics, "series": table,
                                         "num_prompts": e.num_prompts, "plot": str(plot)}

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        return {f"{label}/{k}@w={w:g}": vals[k][i] for label, vals in result["series"].items()
                for k in result["metrics"] for i, w in enumerate(result["scales"])}

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        gs = metrics["guidance_sweep"]
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


@hookimpl
def miro_register_suites(register):
    register(GuidanceSweepSuite)
