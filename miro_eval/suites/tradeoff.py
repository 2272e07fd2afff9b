"""``tradeoff``: the pairwise trade-off sweep between MIRO's first and last reward (paper section 3.6).

s+ = 1; s-[a] = t, s-[b] = 1 - t, other s- = 1 (:func:`miro_eval.pairwise_sweep`) on the controllability
prompts; the means of every evaluation reward per t, a plot; cached in ``experiments/tradeoff.json``. ``miro-run``
runs it with ``experiments.tradeoff`` on a model of at least two rewards. Alone::

    miro eval --suite tradeoff --checkpoint OUT/models/miro --set run_dir=OUT
"""

from __future__ import annotations

__all__ = ["TradeoffSuite"]

from typing import Any

from miro_core import hookimpl

from ._experiment import ExperimentSuite, eval_key, own_targets


class TradeoffSuite(ExperimentSuite):
    """Pairwise trade-off between MIRO's first and last reward (s-[a] = t, s-[b] = 1 - t)."""

    name = "tradeoff"
    key = "tradeoff"
    needs = ("miro",)

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return "miro" in models and run.cfg.experiments.tradeoff and len(models["miro"]) >= 2

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..plots import plot_sweep
        from ..tradeoff import pairwise_sweep

        rewards = models["miro"]
        if len(rewards) < 2:
            return
        e = run.cfg.eval
        a, b = rewards[0], rewards[-1]
        prompts = run.prompts("controllability", run.cfg.experiments.controllability_prompts)
        key = {"ckpt": run.checkpoint_id("miro"), "a": a, "b": b, "n": len(prompts), "eval": eval_key(e), "rewards": run.eval_reward_names}

        def compute():
            pipe = run.pipeline("miro")
            return pairwise_sweep(pipe, pipe.reward_names, a, b, prompts, run.reward_models, batch_size=e.batch_size,
                                  seed=e.seed, **own_targets(run.sampling_kwargs(pipe)))

        res = run._cached("experiments/tradeoff.json", key, compute)
        res["plot"] = str(plot_sweep(res["t"], res["means"], run.path("plots", "tradeoff.png"),
                                     xlabel=f"t (s-[{a}] = t, s-[{b}] = 1 - t)", title=f"trade-off {a} vs {b}"))
        run.metrics["tradeoff"] = res

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        return {f"{k}/mean@t={t:g}": vals[i] for k, vals in result["means"].items() for i, t in enumerate(result["t"])}

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        tr = metrics["tradeoff"]
        rep.heading("Trade-off")
        rep.text(f"Pairwise interpolation between `{tr['a']}` and `{tr['b']}`: s+ = 1; s-[{tr['a']}] = t, s-[{tr['b']}] = 1 - t, other s- = 1.")
        rep.table(["t", *tr["means"]], [[t, *[tr["means"][k][i] for k in tr["means"]]] for i, t in enumerate(tr["t"])])
        rep.image(tr["plot"], "trade-off")


@hookimpl
def miro_register_suites(register):
    register(TradeoffSuite)
