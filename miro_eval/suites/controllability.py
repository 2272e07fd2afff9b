"""``controllability``: sweep one reward's positive target on a reward-conditioned model (paper Figures 12/13).

The same sweep as ``miro-run``'s controllability experiment (:func:`miro_eval.controllability_sweep`): the
positive target of ``target`` takes each of ``levels`` (others 1.0, negatives ``negative``), the same seeds at
every level; every reward in ``rewards`` (default: ``target`` itself) is measured on the samples; Spearman's rank
correlation of target vs measured score over all images and over the level means. Generation goes through the
disk cache of :class:`~miro_eval.suites.CachedGenerate`, so a killed sweep resumes with identical images.
"""

from __future__ import annotations

__all__ = ["ControllabilitySuite"]

import time
from pathlib import Path
from typing import Any

import attrs

from miro_core import ConfigError, Suite, config, hookimpl, unstructure

from .._common import load_rewards
from ..controllability import DEFAULT_LEVELS, controllability_sweep
from ._base import SamplingOptions, _device, suite_source
from ._generation import CachedGenerate
from ._prompts import read_prompt_file


class ControllabilitySuite(Suite):
    """Sweep one reward's positive target; per-level reward means and Spearman target-vs-measured (Figs. 12/13)."""

    name = "controllability"
    accepts_images = False

    @config
    class Config:
        #: the conditioning reward whose positive target is swept (one of the model's rewards)
        target: str = ""
        levels: tuple[float, ...] = DEFAULT_LEVELS
        #: the negative target of every reward
        negative: float = 0.0
        #: rewards measured on the samples (registered names; default: ``target``)
        rewards: tuple[str, ...] = ()
        reward_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
        prompts: tuple[str, ...] = ()
        prompt_file: str | None = None
        sampling: SamplingOptions = attrs.field(factory=SamplingOptions)
        seed: int = 0
        batch_size: int = 16
        device: str = "auto"

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        from ..plots import plot_sweep
        from ..report import Report, write_json

        c = self.config
        if images is not None or pipeline is None:
            raise ConfigError("The controllability suite generates with a model: give --checkpoint or --pretrained.")
        names = tuple(getattr(pipeline, "reward_names", ()))
        if not c.target:
            raise ConfigError(f"controllability needs target=<reward>; the model's rewards: {', '.join(names) or 'none'}.")
        if c.target not in names:
            raise ConfigError(f"controllability target {c.target!r} is not one of the model's rewards "
                              f"({', '.join(names) or 'none: an unconditioned model'}).")
        if len(c.levels) < 5:
            raise ConfigError(f"controllability needs at least 5 levels (got {list(c.levels)}).")
        if c.prompts and c.prompt_file:
            raise ConfigError("controllability: give `prompts` or `prompt_file`, not both.")
        if c.prompts:
            prompts = list(c.prompts)
        elif c.prompt_file:
            prompts = [r["prompt"] for r in read_prompt_file(c.prompt_file)]
        else:
            prompts = []
        if not prompts:
            raise ConfigError("controllability has no prompts: --set prompt_file=PATH_OR_URL (or prompts=[...]).")
        measured = list(dict.fromkeys([c.target, *c.rewards]))
        rewards = load_rewards(measured, c.reward_options, _device(c.device))
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        kwargs = c.sampling.kwargs()
        kwargs.pop("reward_targets", None)
        kwargs.pop("negative_reward_targets", None)
        gen = CachedGenerate(pipeline, out / "cache", stamp={"sampling": kwargs, "seed": c.seed})
        t0 = time.perf_counter()
        bar = progress(1, f"controllability of {c.target}") if progress else None
        res = controllability_sweep(gen, names, c.target, prompts, rewards, levels=c.levels, negative=c.negative,
                                    batch_size=c.batch_size, seed=c.seed, **kwargs)
        if bar is not None:
            bar.update(1)
            bar.close()
        metrics = {"spearman": res["spearman"], "p_value": res["p_value"], "spearman_means": res["spearman_means"]}
        for r in measured:
            for level, m in zip(res["levels"], res["means"][r]):
                metrics[f"{r}/mean@{level:g}"] = m
        plot = plot_sweep(res["levels"], res["means"], out / "plots" / "controllability.png",
                          xlabel=f"positive target of {c.target}", title=f"controllability of {c.target}")
        data = {"suite": self.name, "label": out.name, "source": suite_source(pipeline, None), "config": unstructure(c),
                "num_prompts": len(prompts), "metrics": metrics, "sweep": res, "plot": str(plot),
                "cache": {"hits": gen.hits, "generated": gen.misses}, "timings": {"total_s": time.perf_counter() - t0}}
        write_json(out / "metrics.json", data)
        rep = Report(f"miro eval: controllability of {c.target}", out)
        rep.text(f"{len(prompts)} prompts per level; other positive targets 1.0, negatives {c.negative:g}. Spearman "
                 f"(all images) {res['spearman']:.4f} (p = {res['p_value']:.3g}); over the level means "
                 f"{res['spearman_means']:.4f}.")
        rep.table(["target level", *measured], [[lv, *[res["means"][r][i] for r in measured]]
                                                for i, lv in enumerate(res["levels"])])
        rep.image(plot, "controllability")
        rep.write(out / "report.md")
        return data


@hookimpl
def miro_register_suites(register):
    register(ControllabilitySuite)
