"""``best_of_n``: test-time scaling (random search, Ma et al. 2025; paper Figure 8) on any image suite.

For every image the base suite would make, ``2^max_log2`` candidates are generated (candidate ``c`` of image slot
``s`` is the base suite's image ``c * images_per_prompt + s``, so candidate 0 is exactly the base suite's own image
and best-of-1 equals a plain run of the base suite); the selection reward scores every candidate; for
``N = 1, 2, 4, ...`` the best of the first ``N`` candidates is kept (a NaN score is never picked unless all are)
and the base suite scores the kept images with its own rules. ``--images DIR`` works the same on a folder with
several images per prompt. With ``reference = <metrics.json of another evaluation>`` (e.g. MIRO's), the
sample-efficiency factor is computed: how many samples this model needs to match the reference's best-of-1
(interpolated in log2 N; ``null`` if not reached within ``2^max_log2``).
"""

from __future__ import annotations

__all__ = ["BestOfNSuite", "samples_to_match", "pick_best"]

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from miro_core import ConfigError, MiroError, Suite, config, hookimpl, unstructure

from .._common import load_rewards
from ._base import ImageSuite, ResultCache, _hash, load_compare, null_progress, suite_source
from ._layout import ImageRecord, read_image_folder, sample_path, write_prompt_metadata
from .rewards import score_records

log = logging.getLogger(__name__)


def samples_to_match(ns: Sequence[int], values: Sequence[float], target: float) -> float | None:
    """The number of samples N at which the best-of-N curve first reaches ``target`` (log2-linear interpolation
    between measured N; 1 when best-of-1 already does); ``None`` when it never does."""
    vals = [float(v) if v is not None else math.nan for v in values]
    for i, (n, v) in enumerate(zip(ns, vals)):
        if math.isfinite(v) and v >= target:
            if i == 0:
                return float(n)
            n0, v0 = ns[i - 1], vals[i - 1]
            if not math.isfinite(v0) or v == v0:
                return float(n)
            frac = (target - v0) / (v - v0)
            return float(2 ** (math.log2(n0) + frac * (math.log2(n) - math.log2(n0))))
    return None


def pick_best(scores: np.ndarray, n: int) -> int:
    """Index of the best of the first ``n`` scores (NaN never picked unless all are NaN: then the first)."""
    s = np.asarray(scores[:n], dtype=np.float64).copy()
    s[~np.isfinite(s)] = -np.inf
    return int(np.argmax(s))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.samefile(src):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class BestOfNSuite(Suite):
    """Best-of-2^k on any image suite, selected by one reward; the base suite's metrics per N (Figure 8)."""

    name = "best_of_n"

    @config
    class Config:
        #: the base suite (registered name) and its options
        suite: str = "rewards"
        suite_options: dict[str, Any] = attrs.field(factory=dict)
        #: the reward that picks the best candidate (any registered reward) and its options
        selection_reward: str = ""
        selection_options: dict[str, Any] = attrs.field(factory=dict)
        #: N = 1, 2, ..., 2^max_log2
        max_log2: int = 3
        score_batch_size: int = 32
        device: str = "auto"
        #: metrics.json of another evaluation whose best-of-1 this model's curve is compared with
        reference: str | None = None

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        if not c.selection_reward:
            raise ConfigError("best_of_n needs selection_reward=<reward name> (the reward that picks the best sample).")
        if not 0 <= c.max_log2 <= 10:
            raise ConfigError(f"best_of_n max_log2={c.max_log2} must be in 0..10.")
        if c.suite == self.name:
            raise ConfigError("best_of_n cannot wrap itself; give another suite.")
        from miro_core import registry

        self.base = registry("suites").create(c.suite, dict(c.suite_options))
        if not isinstance(self.base, ImageSuite):
            raise ConfigError(f"best_of_n works on image suites (prompt set -> images -> scores); {c.suite!r} is not one.")
        self._selector: dict[str, Any] | None = None

    @property
    def ns(self) -> list[int]:
        return [2**k for k in range(self.config.max_log2 + 1)]

    def selector(self) -> dict[str, Any]:
        if self._selector is None:
            from ._base import _device

            self._selector = load_rewards([self.config.selection_reward],
                                          {self.config.selection_reward: dict(self.config.selection_options)},
                                          _device(self.config.device))
        return self._selector

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        out = Path(out)
        progress = progress or null_progress
        c, base = self.config, self.base
        if (pipeline is None) == (images is None):
            raise ConfigError("best_of_n: give either a model (--pretrained / --checkpoint) or --images DIR.")
        slots, n_max = base.config.images_per_prompt, self.ns[-1]
        t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        if pipeline is not None:
            root = base.generate(pipeline, out, progress, images_per_prompt=slots * n_max, root=out / "candidates")
            records = base.image_records(root, slots * n_max)
        else:
            root = Path(images)
            records = base.attach_metadata(read_image_folder(root))
        by_group: dict[int, dict[int, ImageRecord]] = {}
        for r in records:
            by_group.setdefault(r.group, {})[r.sample] = r
        have = min(len(v) for v in by_group.values()) // slots
        ns = [n for n in self.ns if n <= have]
        if not ns:
            raise MiroError(f"best_of_n: the folder has fewer than {slots} image(s) per prompt (the base suite's "
                            "images_per_prompt); nothing to select from.")
        if len(ns) < len(self.ns):
            log.warning("best_of_n: only %d candidates per image in %s; stopping at N = %d", have, root, ns[-1])
        sel = c.selection_reward
        cache = ResultCache(out / "selection.jsonl", _hash({"reward": sel, "options": c.selection_options,
                                                            "root": str(root.resolve())}))
        rows = score_records(None, self.selector, records, root, cache, progress, batch_size=c.score_batch_size)
        score_of = {(r.group, r.sample): row["scores"][sel] for r, row in zip(records, rows)}
        t_gen = time.perf_counter() - t0
        metrics: dict[str, Any] = {}
        curves: dict[int, dict[str, float]] = {}
        headline: list[str] = []
        for n in ns:
            view = out / f"best_of_{n}" / "images"
            chosen_scores = []
            for g, samples in sorted(by_group.items()):
                write_prompt_metadata(view, g, next(iter(samples.values())).metadata)
                for s in range(slots):
                    cands = [samples[cc * slots + s] for cc in range(n)]
                    vals = np.array([np.nan if score_of[(x.group, x.sample)] is None else score_of[(x.group, x.sample)]
                                     for x in cands], dtype=np.float64)
                    best = pick_best(vals, n)
                    chosen_scores.append(vals[best])
                    _link(cands[best].path, sample_path(view, g, s))
            res = base.run(out / f"best_of_{n}", images=view, progress=progress)
            headline = base.headline_metrics(res)
            point = {k: res["metrics"][k] for k in headline if k in res["metrics"]}
            finite = np.asarray(chosen_scores, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            point[f"{sel}/selected"] = float(finite.mean()) if finite.size else math.nan
            curves[n] = point
            metrics.update({f"best_of_{n}/{k}": v for k, v in point.items()})
        data: dict[str, Any] = {
            "suite": self.name, "label": out.name, "source": suite_source(pipeline, images), "config": unstructure(c),
            "images": str(root), "num_images": len(records), "num_prompts": len(by_group), "ns": ns,
            "metrics": metrics, "curves": {str(n): v for n, v in curves.items()},
            "timings": {"generate_and_select_s": t_gen, "total_s": time.perf_counter() - t0},
        }
        ref_curve = None
        if c.reference:
            ref = load_compare([c.reference])
            label, ref_data = next(iter(ref.items()))
            rm = ref_data.get("metrics", {})
            eff = {}
            for k in [*headline, f"{sel}/selected"]:
                target = rm.get(f"best_of_1/{k}", rm.get(k))
                if target is None:
                    continue
                eff[k] = {"reference_best_of_1": target,
                          "samples_to_match": samples_to_match(ns, [curves[n].get(k) for n in ns], float(target))}
            data["sample_efficiency"] = {"reference": label, "metrics": eff}
            if "curves" in ref_data:
                ref_curve = {int(n): v for n, v in ref_data["curves"].items()}
        from ..report import write_json

        write_json(out / "metrics.json", data)
        self._report(out, data, curves, headline, ref_curve)
        return data

    def _report(self, out: Path, data: dict[str, Any], curves: dict[int, dict[str, float]], headline: list[str],
                ref_curve: dict[int, dict[str, float]] | None) -> None:
        from ..plots import plot_test_time_scaling
        from ..report import Report

        sel = self.config.selection_reward
        rep = Report(f"miro eval: best_of_n on {self.config.suite} (selected by {sel})", out)
        rep.text(f"{data['num_prompts']} prompts, N = {', '.join(map(str, data['ns']))}; candidates in `{data['images']}`; "
                 f"each best-of-N folder has the {self.config.suite} suite's own report.")
        keys = [*headline, f"{sel}/selected"]
        rep.heading("Metric per N")
        rep.table(["N", *keys], [[n, *[curves[n].get(k) for k in keys]] for n in data["ns"]])
        series = {data["label"]: curves}
        if ref_curve:
            series[data["sample_efficiency"]["reference"]] = ref_curve
        path = plot_test_time_scaling(series, keys, out / "plots" / "best_of_n.png", title=f"best-of-N selected by {sel}")
        rep.image(path, "best-of-N")
        if "sample_efficiency" in data:
            se = data["sample_efficiency"]
            rep.heading("Sample efficiency")
            rep.text(f"Samples this model needs to match the best-of-1 of `{se['reference']}` (log2-interpolated; n/a: "
                     f"not reached by N = {data['ns'][-1]}).")
            rep.table(["metric", "reference best-of-1", "samples to match"],
                      [[k, v["reference_best_of_1"], v["samples_to_match"]] for k, v in se["metrics"].items()])
        rep.write(out / "report.md")


@hookimpl
def miro_register_suites(register):
    register(BestOfNSuite)
