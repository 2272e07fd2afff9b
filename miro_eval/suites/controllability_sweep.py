"""``controllability_sweep``: ``miro-run``'s controllability experiment (paper Figures 12/13) on a MIRO model.

For each reward of ``experiments.controllability_rewards`` (empty: the model's first reward) the positive target
sweeps ``experiments.controllability_levels`` on ``experiments.controllability_prompts`` held-out prompts (other
positive targets 1, negatives 0, same seeds per level) with :func:`miro_eval.controllability_sweep`; per-level
means of every evaluation reward, Spearman target vs measured; one plot per swept reward. Each reward's sweep is
cached in ``experiments/controllability_<reward>.json``. (The ``controllability`` suite is the same sweep of one
target on any prompt file.) Alone::

    miro eval --suite controllability_sweep --checkpoint OUT/models/miro --set run_dir=OUT
"""

from __future__ import annotations

__all__ = ["ControllabilitySweepSuite"]

from typing import Any

from miro_core import hookimpl

from ..report import format_value
from ._experiment import ExperimentSuite, eval_key, own_targets


class ControllabilitySweepSuite(ExperimentSuite):
    """miro-run's controllability experiment: each listed reward's positive target swept on a MIRO model."""

    name = "controllability_sweep"
    key = "controllability"
    needs = ("miro",)

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return "miro" in models and run.cfg.experiments.controllability

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..controllability import controllability_sweep
        from ..plots import plot_sweep

        rewards = models["miro"]
        ex, e = run.cfg.experiments, run.cfg.eval
        targets = list(ex.controllability_rewards) or [rewards[0]]
        prompts = run.prompts("controllability", ex.controllability_prompts)
        out: dict[str, Any] = {}
        bar = run.progress.bar(len(targets), "controllability sweep")
        for r in targets:
            key = {"ckpt": run.checkpoint_id("miro"), "r": r, "levels": list(ex.controllability_levels), "n": len(prompts),
                   "eval": eval_key(e), "rewards": run.eval_reward_names}

            def compute(r=r):
                pipe = run.pipeline("miro")
                return controllability_sweep(pipe, pipe.reward_names, r, prompts, run.reward_models,
                                             levels=ex.controllability_levels, batch_size=e.batch_size, seed=e.seed,
                                             **own_targets(run.sampling_kwargs(pipe)))

            res = run._cached(f"experiments/controllability_{r}.json", key, compute)
            res["plot"] = str(plot_sweep(res["levels"], res["means"], run.path("plots", f"controllability_{r}.png"),
                                         xlabel=f"positive target of {r}", title=f"controllability of {r} (Spearman {res['spearman']:.3f})"
                                         if res.get("spearman") is not None else f"controllability of {r}"))
            out[r] = res
            bar.update(1)
        bar.close()
        run.metrics["controllability"] = out

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        out = {}
        for r, v in result.items():
            out.update({f"{r}/spearman": v["spearman"], f"{r}/p_value": v["p_value"], f"{r}/spearman_means": v["spearman_means"]})
        return out

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        ctrl = metrics["controllability"]
        rep.heading("Controllability")
        rep.text("The positive target of one reward is swept (other positive targets 1, negative targets 0); Spearman "
                 "correlation between target and the measured reward over all images.")
        rep.table(["reward", "levels", "measured means", "Spearman", "p-value", "Spearman (means)"],
                  [[r, ", ".join(format_value(x, 3) for x in v["levels"]),
                    ", ".join(format_value(x, 3) for x in v["means"][r]), v["spearman"], v["p_value"], v["spearman_means"]]
                   for r, v in ctrl.items()])
        for r, v in ctrl.items():
            rep.image(v["plot"], f"controllability {r}")


@hookimpl
def miro_register_suites(register):
    register(ControllabilitySweepSuite)
