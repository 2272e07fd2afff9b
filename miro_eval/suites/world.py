"""``world``: ``miro-run``'s evaluation of a model on the built-in world, as a suite.

It is the same code as ``miro-run``'s main evaluation (:meth:`miro_eval.suites._experiment.RunContext.measure`, which ``miro_eval.run.MiroRun`` inherits: every reward on
held-out world captions, then ``world_geneval``), with the same settings: those of a ``miro-run`` out folder
(``run_dir``: its ``config.json``) or of a preset with overrides. So ``miro eval --suite world --checkpoint
OUT/models/miro --set run_dir=OUT`` reproduces the ``models.miro`` numbers of that run's ``metrics.json`` exactly.
Generation is in memory as in ``miro-run``, through a disk cache of each generate call (float32 safetensors), so a
killed evaluation resumes with bit-identical images.
"""

from __future__ import annotations

__all__ = ["WorldSuite", "world_run_config"]

import json
import time
from pathlib import Path
from typing import Any

import attrs

from miro_core import ConfigError, Suite, config, hookimpl, unstructure

from ._generation import CachedGenerate
from ._base import suite_source
from ._experiment import RunContext, eval_key, run_config


def world_run_config(run_dir: str | None, preset: str, overrides: dict[str, Any]):
    """The ``RunConfig`` of a ``miro-run`` out folder, or of a preset, with nested ``overrides`` merged in."""
    return run_config(run_dir, preset, overrides, what="world suite")


class WorldSuite(Suite):
    """miro-run's world evaluation (world rewards on held-out captions + world_geneval), same code, same numbers."""

    name = "world"
    accepts_images = False

    @config
    class Config:
        #: a miro-run --out folder whose config.json gives the evaluation settings (None: ``preset``)
        run_dir: str | None = None
        preset: str = "default"
        #: nested RunConfig overrides, e.g. ``{"eval": {"num_prompts": 16}}`` (``--set overrides.eval.num_prompts=16``)
        overrides: dict[str, Any] = attrs.field(factory=dict)

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        from ..report import Report, write_json

        if images is not None or pipeline is None:
            raise ConfigError("The world suite generates with a model: give --checkpoint or --pretrained (not --images).")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cfg = world_run_config(self.config.run_dir, self.config.preset, dict(self.config.overrides))
        if cfg.data.split(":", 1)[0] != "world":
            raise ConfigError(f"The world suite evaluates on the built-in world; this config's data is {cfg.data!r}.")
        t0 = time.perf_counter()
        run = RunContext(cfg, out, progress=False)
        kwargs = run.sampling_kwargs(pipeline)
        gen = CachedGenerate(pipeline, out / "cache", stamp={"eval": eval_key(cfg.eval), "data": run.data_spec(),
                                                             "sampling": kwargs})
        bar = progress(2 if run.geneval_enabled() else 1, "world") if progress else None
        metrics = run.measure(gen, kwargs, bar=bar)
        if bar is not None:
            bar.close()
        data = {"suite": self.name, "label": out.name, "source": suite_source(pipeline, None),
                "config": unstructure(self.config), "run_config": unstructure(cfg), "sampling": kwargs,
                "metrics": metrics, "cache": {"hits": gen.hits, "generated": gen.misses},
                "timings": {"total_s": time.perf_counter() - t0}}
        write_json(out / "metrics.json", data)
        rep = Report("miro eval: world", out)
        rep.text(f"miro-run's world evaluation ({cfg.eval.num_prompts} prompts; sampling {kwargs}).")
        rep.table(["metric", "value"], [[k, v] for k, v in metrics.items()])
        rep.write(out / "report.md")
        return data


@hookimpl
def miro_register_suites(register):
    register(WorldSuite)
