"""``test_time_scaling``: ``miro-run``'s best-of-N experiment, MIRO vs the baseline (paper Figure 8).

Best-of-2^k (k = 0..``experiments.tts_max_log2``) on ``experiments.tts_prompts`` held-out prompts, selected by
``experiments.tts_selection`` (default: the first reward), every evaluation reward (and the compositional score
of the kept images) reported per N, through the ``test_time_scaling`` evaluator; each model's curve cached in
``experiments/tts_<model>.json``. The **sample-efficiency factor**: how many baseline samples match MIRO's
best-of-1 on each metric (:func:`miro_eval.suites.best_of_n.samples_to_match`, log2-interpolated; ``null`` when
not reached by the largest N). (The ``best_of_n`` suite is best-of-N on any image suite.) Alone::

    miro eval --suite test_time_scaling --checkpoint OUT/models/miro --set run_dir=OUT \\
        --set models.baseline=OUT/models/baseline
"""

from __future__ import annotations

__all__ = ["TestTimeScalingSuite", "sample_efficiency"]

from typing import Any

from miro_core import hookimpl

from ._experiment import ExperimentSuite, eval_key


def sample_efficiency(results: dict[str, dict[int, dict[str, float]]], metrics: list[str], ns: list[int],
                      model: str = "baseline", reference: str = "miro") -> dict[str, Any]:
    """Per metric: ``reference``'s best-of-1 and how many samples ``model`` needs to match it."""
    from .best_of_n import samples_to_match

    out: dict[str, Any] = {}
    if model not in results or reference not in results:
        return out
    for k in metrics:
        target = results[reference].get(1, {}).get(k)
        if target is None:
            continue
        curve = [results[model].get(n, {}).get(k) for n in ns]
        out[k] = {"reference_best_of_1": float(target), "samples_to_match": samples_to_match(ns, curve, float(target))}
    return out


class TestTimeScalingSuite(ExperimentSuite):
    """Best-of-N of MIRO and the baseline selected by one reward, every metric per N, sample-efficiency factor."""

    __test__ = False  # not a pytest class
    name = "test_time_scaling"
    key = "test_time_scaling"
    needs = ("miro",)

    @classmethod
    def wanted(cls, run, models, histories) -> bool:
        return "miro" in models and run.cfg.experiments.test_time_scaling

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from ..plots import plot_test_time_scaling
        from ..test_time_scaling import TestTimeScaling

        names = [m for m in ("miro", "baseline") if m in models]
        ex, e = run.cfg.experiments, run.cfg.eval
        selection = ex.tts_selection or run.cfg.rewards[0]
        prompts = run.prompts("tts", ex.tts_prompts)
        comp = run.cfg.eval.geneval_evaluator if run.geneval_enabled() else None
        results: dict[str, Any] = {}
        bar = run.progress.bar(len(names), f"best-of-N (selected by {selection})")
        for m in names:
            key = {"ckpt": run.checkpoint_id(m), "sel": selection, "k": ex.tts_max_log2, "n": len(prompts), "eval": eval_key(e),
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
        ns = [2**k for k in range(ex.tts_max_log2 + 1)]
        run.metrics["test_time_scaling"] = {
            "selection_reward": selection, "ns": ns, "results": by_model, "num_prompts": len(prompts), "plot": str(plot),
            "sample_efficiency": sample_efficiency(by_model, tts_metrics, ns)}

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        out = {f"{m}/best_of_{n}/{k}": v for m, by_n in result["results"].items() for n, d in by_n.items()
               for k, v in d.items()}
        out.update({f"baseline_samples_to_match_miro/{k}": v["samples_to_match"]
                    for k, v in result.get("sample_efficiency", {}).items()})
        return out

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        tts = metrics["test_time_scaling"]
        rep.heading("Test-time scaling")
        rep.text(f"Best-of-N (N = 1..{tts['ns'][-1]}) selected by `{tts['selection_reward']}` on {tts['num_prompts']} prompts.")
        cols = sorted({k for by_n in tts["results"].values() for d in by_n.values() for k in d})
        rows = []
        for m, by_n in tts["results"].items():
            for n in sorted(by_n, key=int):
                rows.append([m, n, *[by_n[n].get(k) for k in cols]])
        rep.table(["model", "N", *cols], rows)
        rep.image(tts["plot"], "test-time scaling")
        se = tts.get("sample_efficiency")
        if se:
            rep.text(f"Sample efficiency: baseline samples needed to match MIRO's best-of-1 (log2-interpolated; n/a: "
                     f"not reached by N = {tts['ns'][-1]}).")
            rep.table(["metric", "MIRO best-of-1", "baseline samples to match"],
                      [[k, v["reference_best_of_1"], v["samples_to_match"]] for k, v in se.items()])


@hookimpl
def miro_register_suites(register):
    register(TestTimeScalingSuite)
