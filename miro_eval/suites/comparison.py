"""``comparison``: MIRO vs the baseline vs the single-reward models (paper Figure 4), as in ``miro-run``.

Every model's main evaluation (:meth:`RunContext.evaluate_model`), the table of the best model per metric and of
the metrics on which MIRO is at least as good as each other model (:func:`miro_eval.comparison_table`), bar and
radar plots. In ``miro-run`` it always runs (the ``only_<reward>`` models exist with ``experiments.single_reward``);
the leave-one-out models are not part of it. Alone::

    miro eval --suite comparison --checkpoint OUT/models/miro --set run_dir=OUT \\
        --set models.baseline=OUT/models/baseline --set models.only_world_sharpness=OUT/models/only_world_sharpness
"""

from __future__ import annotations

__all__ = ["ComparisonSuite"]

from typing import Any

from miro_core import hookimpl

from ._experiment import ExperimentSuite, main_metrics


class ComparisonSuite(ExperimentSuite):
    """MIRO vs baseline vs single-reward models on every main metric (Figure 4: table, bars, radar)."""

    name = "comparison"
    key = "comparison"
    needs_main_eval = True

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return True

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..comparison import comparison_table
        from ..plots import plot_bars, plot_radar

        metrics = main_metrics(run)
        model_metrics = run.metrics["models"]
        plots = run.metrics.setdefault("plots", {})
        compared = {m: model_metrics[m] for m in models if not m.startswith("without_")}
        run.metrics["comparison"] = comparison_table(compared, metrics, reference="miro")
        if len(compared) >= 2:
            plots["models"] = str(plot_bars(compared, metrics, run.path("plots", "models.png"), title="reward means per model"))
            if len(metrics) >= 3:
                plots["radar"] = str(plot_radar(compared, metrics, run.path("plots", "radar.png"), reference="miro"))

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        return {f"miro_wins_vs_{m}": int(w) for m, w in result.get("reference_wins_count", {}).items()}

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        """The ``Models`` section of ``report.md``: every model's main metrics, the compositional breakdown, wins, plots."""
        mm = main_metrics(run)
        rep.heading("Models")
        rep.text("Mean of each reward on the evaluation prompts (higher is better)"
                 + (" and the compositional score (`geneval/overall`, exact GenEval-style check of the world)." if "geneval/overall" in mm else "."))
        header = ["model", "conditioned on", *[m.replace("/mean", "") for m in mm]]
        rep.table(header, [[m, ", ".join(models[m]) or "(none)", *[metrics["models"][m].get(k) for k in mm]] for m in models])
        gen_keys = sorted({k for m in models for k in metrics["models"][m] if k.startswith("geneval/") and k not in ("geneval/overall", "geneval/num_images", "geneval/overall_stderr")})
        if gen_keys:
            from ..report import format_value

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


@hookimpl
def miro_register_suites(register):
    register(ComparisonSuite)
