"""``leave_one_out``: MIRO without each reward in turn (paper appendix C.1), as in ``miro-run``.

The change of every main metric, and of the removed reward itself (``own_delta``), between MIRO and the model
trained without that reward (:func:`miro_eval.leave_one_out_table`); a bar plot. ``miro-run`` trains the
``without_<reward>`` models with ``experiments.leave_one_out``. Alone::

    miro eval --suite leave_one_out --checkpoint OUT/models/miro --set run_dir=OUT \\
        --set models.without_world_sharpness=OUT/models/without_world_sharpness
"""

from __future__ import annotations

__all__ = ["LeaveOneOutSuite"]

from typing import Any

from miro_core import hookimpl

from ._experiment import ExperimentSuite, main_metrics


class LeaveOneOutSuite(ExperimentSuite):
    """MIRO vs MIRO without each reward: the change of every metric (appendix C.1)."""

    name = "leave_one_out"
    key = "leave_one_out"
    needs = ("miro", "without_")
    needs_main_eval = True

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return any(m.startswith("without_") for m in models) and "miro" in run.metrics.get("models", {})

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..comparison import leave_one_out_table
        from ..plots import plot_bars

        metrics = main_metrics(run)
        model_metrics = run.metrics["models"]
        without = {m[len("without_"):]: model_metrics[m] for m in models if m.startswith("without_")}
        if not (without and "miro" in model_metrics):
            return
        run.metrics["leave_one_out"] = leave_one_out_table(model_metrics["miro"], without, metrics)
        run.metrics.setdefault("plots", {})["leave_one_out"] = str(plot_bars(
            {"miro": model_metrics["miro"], **{f"-{r}": v for r, v in without.items()}}, metrics,
            run.path("plots", "leave_one_out.png"), title="leave one reward out"))

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        out = {f"own_delta/{r}": v for r, v in result["own_delta"].items()}
        out.update({f"delta/{r}/{m}": v for r, d in result["deltas"].items() for m, v in d.items()})
        return out

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        loo = metrics["leave_one_out"]
        rep.heading("Leave one reward out")
        rep.text("Change of each metric when one reward is removed from MIRO's conditioning (negative = worse).")
        rep.table(["removed", *[m.replace("/mean", "") for m in loo["metrics"]], "own reward change"],
                  [[r, *[d[m] for m in loo["metrics"]], loo["own_delta"][r]] for r, d in loo["deltas"].items()])
        plots = metrics.get("plots", {})
        if "leave_one_out" in plots:
            rep.image(plots["leave_one_out"], "leave one out")


@hookimpl
def miro_register_suites(register):
    register(LeaveOneOutSuite)
