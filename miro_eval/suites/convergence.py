"""``convergence``: reward vs training step and the speedup of MIRO over the baseline (paper Figure 5).

The one experiment that is measured during training: :func:`curve_eval_fn` is the ``eval_fn`` ``miro-run`` gives
``train`` (every ``eval.eval_every`` steps, on ``eval.curve_prompts`` prompts with ``eval.curve_num_steps``
sampling steps; rows appended to ``models/<name>/curve.jsonl``), :func:`curve_key` is what those rows depend on
(part of a model's training key), and the experiment turns the curves of ``miro``, ``baseline`` and the
``only_<reward>`` models into the speedup table (:func:`miro_eval.convergence_suite`). It needs training
histories, so it is not a suite ``miro eval`` runs on a checkpoint.
"""

from __future__ import annotations

__all__ = ["ConvergenceExperiment", "curve_key", "curve_eval_fn", "curve_metrics"]

from typing import Any

from ._experiment import ExperimentSuite


def curve_key(run: Any) -> dict[str, Any]:
    """What the curve rows depend on (a change retrains: it is part of each model's key)."""
    e = run.cfg.eval
    return {"every": e.eval_every, "n": e.curve_prompts, "steps": e.curve_num_steps, "geneval": e.curve_geneval,
            "rewards": run.eval_reward_names, "scale": e.guidance_scale, "seed": e.seed, "guidance": e.guidance,
            "baseline_text_cfg": e.baseline_text_cfg, "solver": e.solver,
            # only when set, so that the keys (and models) of runs without targets stay what they were
            **{f: dict(getattr(e, f)) for f in ("positive_targets", "negative_targets") if getattr(e, f)}}


def curve_eval_fn(run: Any):
    """``eval_fn(pipeline, step) -> {metric: value}``: reward means (and, with ``curve_geneval``, the compositional
    score) on the curve prompts."""
    ev = run._reward_evaluator()
    prompts = run.prompts("curve", run.cfg.eval.curve_prompts)
    geneval = run._geneval() if (run.cfg.eval.curve_geneval and run.geneval_enabled()) else None

    def eval_fn(pipeline: Any, step: int) -> dict[str, float]:
        kw = run.sampling_kwargs(pipeline, run.cfg.eval.curve_num_steps)
        out = {k: v for k, v in ev.evaluate(pipeline, prompts=prompts, seed=run.cfg.eval.seed, **kw).items() if k.endswith("/mean")}
        if geneval is not None:
            out.update({f"geneval/{k}": float(v) for k, v in geneval.evaluate(pipeline, seed=run.cfg.eval.seed, **kw).items()})
        return out

    return eval_fn


def curve_metrics(run: Any) -> list[str]:
    metrics = [f"{r}/mean" for r in run.eval_reward_names]
    if run.cfg.eval.curve_geneval and run.geneval_enabled():
        metrics.append("geneval/overall")
    return metrics


class ConvergenceExperiment(ExperimentSuite):
    """Reward-vs-step curves and MIRO's speedup over the baseline (Figure 5); needs training histories."""

    name = "convergence"
    key = "convergence"

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return run.cfg.eval.eval_every > 0 and any(histories.values())

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..convergence import convergence_suite
        from ..plots import plot_curves

        metrics = curve_metrics(run)
        curves_models = {m: h for m, h in histories.items() if m in ("miro", "baseline") or m.startswith("only_")}
        conv = convergence_suite(curves_models, metrics, baseline="baseline", miro="miro")
        run.metrics["convergence"] = conv
        run.metrics.setdefault("plots", {})["convergence"] = str(plot_curves(conv["curves"], metrics,
                                                                              run.path("plots", "convergence.png")))

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        conv = metrics["convergence"]
        rep.heading("Convergence")
        rep.text("Reward vs training step (evaluated during training). Speedup = steps the baseline needs to reach its "
                 "final value / steps MIRO needs to reach it (linear interpolation between evaluation points; n/a = "
                 "MIRO never reached it).")
        rep.table(["metric", "baseline final", "MIRO final", "baseline steps", "MIRO steps", "speedup"],
                  [[k, v.get("target"), v.get("miro_final"), v.get("steps_baseline"), v.get("steps_miro"), v.get("speedup")]
                   for k, v in conv["speedup"].items()])
        plots = metrics.get("plots", {})
        if "convergence" in plots:
            rep.image(plots["convergence"], "reward vs step")

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        from miro_core import ConfigError

        raise ConfigError("convergence is measured during training (miro-run with eval.eval_every > 0); it does not "
                          "run on a checkpoint.")
