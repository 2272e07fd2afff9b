"""The experiments of ``miro-run`` after training: convergence, comparisons, controllability, leave-one-out,
test-time scaling and trade-offs. Each writes its numbers into ``run.metrics`` and its plots under
``plots/``; expensive ones are cached in ``experiments/*.json`` (reused on a re-run)."""

from __future__ import annotations

__all__ = ["run_experiments", "main_metrics"]

import logging
from typing import Any

from miro_core import unstructure

log = logging.getLogger("miro_eval.run")


def main_metrics(run: Any) -> list[str]:
    """The metrics every model is compared on: mean of each reward, then the compositional overall."""
    metrics = [f"{r}/mean" for r in run.eval_reward_names]
    if run.geneval_enabled():
        metrics.append("geneval/overall")
    return metrics


def run_experiments(run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
    from .comparison import comparison_table, leave_one_out_table
    from .convergence import convergence_suite
    from .plots import plot_bars, plot_curves, plot_radar

    cfg, ex = run.cfg, run.cfg.experiments
    metrics = main_metrics(run)
    model_metrics = run.metrics["models"]
    plots = run.metrics.setdefault("plots", {})

    # MIRO vs baseline vs single-reward models (Figure 4) ----------------------------------------------
    compared = {m: model_metrics[m] for m in models if not m.startswith("without_")}
    run.metrics["comparison"] = comparison_table(compared, metrics, reference="miro")
    if len(compared) >= 2:
        plots["models"] = str(plot_bars(compared, metrics, run.path("plots", "models.png"), title="reward means per model"))
        if len(metrics) >= 3:
            plots["radar"] = str(plot_radar(compared, metrics, run.path("plots", "radar.png"), reference="miro"))

    # convergence (Figure 5) -----------------------------------------------------------------------------
    curve_metrics = [f"{r}/mean" for r in run.eval_reward_names]
    if cfg.eval.curve_geneval and run.geneval_enabled():
        curve_metrics.append("geneval/overall")
    if cfg.eval.eval_every > 0 and any(histories.values()):
        curves_models = {m: h for m, h in histories.items() if m in ("miro", "baseline") or m.startswith("only_")}
        conv = convergence_suite(curves_models, curve_metrics, baseline="baseline", miro="miro")
        run.metrics["convergence"] = conv
        plots["convergence"] = str(plot_curves(conv["curves"], curve_metrics, run.path("plots", "convergence.png")))

    # leave-one-out (appendix C.1) -----------------------------------------------------------------------
    without = {m[len("without_"):]: model_metrics[m] for m in models if m.startswith("without_")}
    if without and "miro" in model_metrics:
        run.metrics["leave_one_out"] = leave_one_out_table(model_metrics["miro"], without, metrics)
        plots["leave_one_out"] = str(plot_bars({"miro": model_metrics["miro"], **{f"-{r}": v for r, v in without.items()}},
                                               metrics, run.path("plots", "leave_one_out.png"), title="leave one reward out"))

    if "miro" in models:
        if ex.controllability:
            run.metrics["controllability"] = _controllability(run, models["miro"])
        if ex.tradeoff and len(models["miro"]) >= 2:
            run.metrics["tradeoff"] = _tradeoff(run, models["miro"])
        if ex.test_time_scaling:
            run.metrics["test_time_scaling"] = _test_time_scaling(run, [m for m in ("miro", "baseline") if m in models])
    if ex.guidance_sweep and ("miro" in models or "baseline" in models):
        run.metrics["guidance_sweep"] = _guidance_sweep(run, [m for m in ("miro", "baseline") if m in models])


def _controllability(run: Any, rewards: tuple[str, ...]) -> dict[str, Any]:
    from .controllability import controllability_sweep
    from .plots import plot_sweep

    ex, e = run.cfg.experiments, run.cfg.eval
    targets = list(ex.controllability_rewards) or [rewards[0]]
    prompts = run.prompts("controllability", ex.controllability_prompts)
    out: dict[str, Any] = {}
    bar = run.progress.bar(len(targets), "controllability sweep")
    for r in targets:
        key = {"ckpt": run.checkpoint_id("miro"), "r": r, "levels": list(ex.controllability_levels), "n": len(prompts),
               "eval": unstructure(e), "rewards": run.eval_reward_names}

        def compute(r=r):
            pipe = run.pipeline("miro")
            return controllability_sweep(pipe, pipe.reward_names, r, prompts, run.reward_models,
                                         levels=ex.controllability_levels, batch_size=e.batch_size, seed=e.seed,
                                         **run.sampling_kwargs(pipe))

        res = run._cached(f"experiments/controllability_{r}.json", key, compute)
        res["plot"] = str(plot_sweep(res["levels"], res["means"], run.path("plots", f"controllability_{r}.png"),
                                     xlabel=f"positive target of {r}", title=f"controllability of {r} (Spearman {res['spearman']:.3f})"
                                     if res.get("spearman") is not None else f"controllability of {r}"))
        out[r] = res
        bar.update(1)
    bar.close()
    return out


def _tradeoff(run: Any, rewards: tuple[str, ...]) -> dict[str, Any]:
    from .plots import plot_sweep
    from .tradeoff import pairwise_sweep

    e = run.cfg.eval
    a, b = rewards[0], rewards[-1]
    prompts = run.prompts("controllability", run.cfg.experiments.controllability_prompts)
    key = {"ckpt": run.checkpoint_id("miro"), "a": a, "b": b, "n": len(prompts), "eval": unstructure(e), "rewards": run.eval_reward_names}

    def compute():
        pipe = run.pipeline("miro")
        return pairwise_sweep(pipe, pipe.reward_names, a, b, prompts, run.reward_models, batch_size=e.batch_size,
                              seed=e.seed, **run.sampling_kwargs(pipe))

    res = run._cached("experiments/tradeoff.json", key, compute)
    res["plot"] = str(plot_sweep(res["t"], res["means"], run.path("plots", "tradeoff.png"),
                                 xlabel=f"t (s-[{a}] = t, s-[{b}] = 1 - t)", title=f"trade-off {a} vs {b}"))
    return res


def _test_time_scaling(run: Any, models: list[str]) -> dict[str, Any]:
    from .plots import plot_test_time_scaling
    from .test_time_scaling import TestTimeScaling

    ex, e = run.cfg.experiments, run.cfg.eval
    selection = ex.tts_selection or run.cfg.rewards[0]
    prompts = run.prompts("tts", ex.tts_prompts)
    comp = run.cfg.eval.geneval_evaluator if run.geneval_enabled() else None
    results: dict[str, Any] = {}
    bar = run.progress.bar(len(models), f"best-of-N (selected by {selection})")
    for m in models:
        key = {"ckpt": run.checkpoint_id(m), "sel": selection, "k": ex.tts_max_log2, "n": len(prompts), "eval": unstructure(e),
               "rewards": run.eval_reward_names, "comp": comp}

        def compute(m=m):
            pipe = run.pipeline(m)
            ev = TestTimeScaling(TestTimeScaling.Config(
                selection_reward=selection, rewards=tuple(run.eval_reward_names), max_log2=ex.tts_max_log2,
                batch_size=e.batch_size, seed=e.seed, device=run.device, compositional=comp,
                compositional_options={"images_per_category": ex.tts_geneval_images_per_category}))
            ev._rewards = {selection: run.reward_models[selection], **run.reward_models}
            return ev.evaluate(pipe, prompts=prompts, seed=e.seed, **run.sampling_kwargs(pipe))

        results[m] = run._cached(f"experiments/tts_{m}.json", key, compute)
        bar.update(1)
    bar.close()
    by_model: dict[str, dict[int, dict[str, float]]] = {}
    for m, flat in results.items():
        for k, v in flat.items():
            head, _, metric = k.partition("/")
            if metric in ("num_images", "overall_stderr"):
                continue
            n = int(head.removeprefix("best_of_"))
            by_model.setdefault(m, {}).setdefault(n, {})[metric] = v
    tts_metrics = [r for r in run.eval_reward_names]
    if comp:
        tts_metrics.append("overall")
    plot = plot_test_time_scaling(by_model, tts_metrics, run.path("plots", "test_time_scaling.png"),
                                  title=f"best-of-N selected by {selection}")
    return {"selection_reward": selection, "ns": [2**k for k in range(ex.tts_max_log2 + 1)], "results": by_model,
            "num_prompts": len(prompts), "plot": str(plot)}


def _sweep_kwargs(run: Any, pipe: Any, variant: str, scale: float) -> dict[str, Any]:
    """Sampling kwargs of one point of the guidance sweep (``variant`` is ignored for the baseline; ``unguided``
    keeps the evaluation's own guidance, at scale 0 it is the positive branch alone)."""
    kw = run.sampling_kwargs(pipe)
    kw["guidance_scale"] = float(scale)
    names = tuple(getattr(pipe, "reward_names", ()))
    if not names or variant == "unguided":  # the baseline: its own evaluation mode (text CFG or none)
        return kw
    kw.pop("drop_text_in_negative", None)
    if variant == "text_cfg":  # rewards held at s+ in both branches: only the caption is contrasted
        kw.update(guidance="multi_reward_cfg", drop_text_in_negative=True,
                  negative_reward_targets={r: 1.0 for r in names})
    else:
        kw["guidance"] = variant
    return kw


def _guidance_sweep(run: Any, models: list[str]) -> dict[str, Any]:
    """Every main metric at each guidance scale: MIRO under each variant, the baseline under its own guidance.

    Scale 0 is the positive branch alone, so it is computed once per model and shared by its variants.
    Each point is cached in ``experiments/guidance_sweep/`` (keyed by checkpoint and evaluation config)."""
    from .plots import plot_curves

    ex, e = run.cfg.experiments, run.cfg.eval
    scales = sorted({float(w) for w in ex.guidance_sweep_scales})
    metrics = main_metrics(run)
    series: dict[str, tuple[str, str]] = {}
    for m in models:
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
        key = {"ckpt": run.checkpoint_id(m), "variant": vkey, "scale": w, "eval": unstructure(e),
               "rewards": run.eval_reward_names, "prompts": e.num_prompts}

        def compute(m=m, vkey=vkey, w=w):
            pipe = run.pipeline(m)
            out = run.measure(pipe, _sweep_kwargs(run, pipe, vkey, w))
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
    return {"scales": scales, "metrics": metrics, "series": table, "num_prompts": e.num_prompts, "plot": str(plot)}
