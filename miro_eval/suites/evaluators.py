"""``evaluators``: registered evaluators (``reward_scores``, ``world_geneval``, a plugin's own...) run on a model.

The suite for "evaluators + a small TOML file": the file names the evaluators with their options and the
sampling settings; each evaluator's ``evaluate(generate, seed=..., **sampling)`` runs on a generator whose calls
are cached on disk (float32 safetensors per call), so a killed evaluation resumes with identical images. Metrics
are ``<evaluator>/<metric>``.

.. code-block:: toml

    suite = "evaluators"
    name = "my-eval"
    [options.evaluators.reward_scores]
    rewards = ["world_sharpness"]
    prompts = ["a red circle", "a blue square"]
    [options.sampling]
    num_steps = 10
"""

from __future__ import annotations

__all__ = ["EvaluatorsSuite"]

import time
from pathlib import Path
from typing import Any

import attrs

from miro_core import ConfigError, Suite, config, hookimpl, unstructure

from ._base import SamplingOptions, suite_source
from ._generation import CachedGenerate


class EvaluatorsSuite(Suite):
    """Registered evaluators (with options) on a model; metrics ``<evaluator>/<metric>``; resumable generation."""

    name = "evaluators"
    accepts_images = False

    @config
    class Config:
        #: evaluator name -> its options (``miro plugins --kind evaluators``)
        evaluators: dict[str, dict[str, Any]] = attrs.field(factory=dict)
        sampling: SamplingOptions = attrs.field(factory=SamplingOptions)
        #: passed as ``seed=`` to every evaluator (None: each evaluator's own default)
        seed: int | None = None

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        from miro_core import registry

        from ..report import Report, write_json

        if images is not None or pipeline is None:
            raise ConfigError("The evaluators suite generates with a model: give --checkpoint or --pretrained.")
        if not self.config.evaluators:
            raise ConfigError("The evaluators suite has no evaluators: set [options.evaluators.<name>] in its TOML file "
                              "(see `miro plugins --kind evaluators`).")
        evaluators = {n: registry("evaluators").create(n, dict(o)) for n, o in self.config.evaluators.items()}
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        kwargs = self.config.sampling.kwargs()
        if self.config.seed is not None:
            kwargs["seed"] = int(self.config.seed)
        gen = CachedGenerate(pipeline, out / "cache", stamp={"evaluators": unstructure(self.config)})
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {}
        bar = progress(len(evaluators), "evaluators") if progress else None
        for name, ev in evaluators.items():
            for k, v in ev.evaluate(gen, **kwargs).items():
                metrics[f"{name}/{k}"] = v
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        data = {"suite": self.name, "label": out.name, "source": suite_source(pipeline, None),
                "config": unstructure(self.config), "metrics": metrics, "cache": {"hits": gen.hits, "generated": gen.misses},
                "timings": {"total_s": time.perf_counter() - t0}}
        write_json(out / "metrics.json", data)
        rep = Report(f"miro eval: {self.name}", out)
        rep.table(["metric", "value"], [[k, v] for k, v in metrics.items()])
        rep.write(out / "report.md")
        return data


@hookimpl
def miro_register_suites(register):
    register(EvaluatorsSuite)
