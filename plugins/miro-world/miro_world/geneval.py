"""``world_geneval``: an exact compositional evaluator for world images in GenEval's six categories.

Prompts: ``geneval_prompts.jsonl`` (GenEval's metadata format, see :mod:`miro_world.make_geneval_prompts`).
Each generated image goes through the world detector (:mod:`miro_world.detector`) and is judged with
GenEval's rules (``judge``): every ``include`` entry needs at least ``count`` objects of its class (the
largest ``count`` detections, GenEval's most confident ones, must all have the requested colour), every
``exclude`` entry fewer than ``count`` (so counting is exact), and a ``position`` entry needs every
matched object to stand in the relation to every object of the target group, decided by GenEval's
``relative_position`` on the detected boxes; the judging loop is the shared one of
:func:`miro_eval.geneval.rules.judge`. Category accuracy = fraction of correct images; ``overall`` = mean of the
category accuracies (as GenEval).
"""

from __future__ import annotations

__all__ = ["WorldGenEval", "load_prompts", "judge", "scene_for_metadata", "oracle_generate", "CATEGORIES"]

import inspect
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miro_core import Evaluator, MiroError, config, hookimpl

from .detector import Detection, DetectorConfig, detect
from .make_geneval_prompts import CATEGORIES, DEFAULT_PATH
from .scene import COLORS, Scene, WorldObject, _background, _jitter_rgb, _place, _radius_range, relative_position, render

logger = logging.getLogger(__name__)


def load_prompts(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The prompt records (GenEval metadata) of ``path`` (None: the shipped set)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        raise MiroError(f"GenEval prompt file {p} does not exist; pass prompts_file=<jsonl in GenEval metadata "
                        "format> or regenerate the shipped one with `python -m miro_world.make_geneval_prompts`.")
    records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    bad = [r.get("tag") for r in records if r.get("tag") not in CATEGORIES]
    if bad:
        raise MiroError(f"{p}: unknown tag(s) {sorted(set(map(str, bad)))}; expected one of {CATEGORIES}.")
    return records


def judge(detections: Sequence[Detection], metadata: dict[str, Any]) -> tuple[bool, str]:
    """GenEval's correctness rule for one image: ``(correct, reason)``.

    The shared GenEval rules (:func:`miro_eval.geneval.rules.judge`) on the world detector's objects: every shape
    is a class, its objects ordered largest first (the world's "most confident"; no threshold: the detector is
    exact), colour = the detector's colour name, relative position = :func:`miro_world.scene.relative_position`
    on the normalised boxes."""
    from miro_eval.geneval import rules

    objects: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.area):
        if d.shape is not None:
            objects.setdefault(d.shape, []).append(d)
    return rules.judge(objects, metadata, lambda found, cls: [d.color for d in found],
                       relation=lambda a, b: relative_position(a.box, b.box))


def scene_for_metadata(metadata: dict[str, Any], rng: np.random.Generator, max_tries: int = 200) -> Scene:
    """A random scene that satisfies ``metadata`` (GenEval rules): used as an oracle in tests and demos."""
    specs: list[tuple[str, str]] = []
    for req in metadata.get("include", []):
        for _ in range(int(req["count"])):
            color = req.get("color") or COLORS[int(rng.integers(len(COLORS)))]
            specs.append((req["class"], color))
    lo, hi = _radius_range(max(1, min(len(specs), 4)))
    for _ in range(max_tries):
        radii = [float(rng.uniform(lo, hi)) for _ in specs]
        centres = _place(rng, radii)
        if centres is None:
            continue
        objs = tuple(WorldObject(s, c, cx, cy, r, _jitter_rgb(rng, c)) for (s, c), (cx, cy), r in zip(specs, centres, radii))
        ok = True
        for k, req in enumerate(metadata.get("include", [])):
            if "position" in req:
                rel, target = req["position"]
                ok &= rel in relative_position(objs[k].box(), objs[target].box())
        if ok:
            return Scene(kind="oracle", objects=objs, background=_background(rng))
    raise MiroError(f"could not place a scene for {metadata.get('prompt')!r}")


def oracle_generate(records_by_prompt: dict[str, dict[str, Any]], size: int = 32, seed: int = 0) -> Callable[..., torch.Tensor]:
    """A ``generate(prompts)`` that renders a correct scene for each known prompt (evaluator self-test)."""
    counter = [0]

    def generate(prompts: Sequence[str], **_: Any) -> torch.Tensor:
        out = []
        for p in prompts:
            rng = np.random.default_rng([seed, counter[0]])
            counter[0] += 1
            out.append(torch.from_numpy(render(scene_for_metadata(records_by_prompt[p], rng), size, chw=True)))
        return torch.stack(out)

    return generate


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class WorldGenEval(Evaluator):
    """GenEval's six categories on the world, with an exact colour/shape detector."""

    name = "world_geneval"

    @config
    class Config:
        #: GenEval-format JSONL (None: the shipped world prompt set)
        prompts_file: str | None = None
        n_per_prompt: int = 4
        #: if set, each category gets exactly this many images (its prompts cycled), else n_per_prompt each
        images_per_category: int | None = None
        batch_size: int = 32
        #: base seed passed to ``generate(..., seed=seed + batch_index)`` when it accepts ``seed``
        seed: int = 0
        categories: tuple[str, ...] = CATEGORIES
        detector: DetectorConfig = DetectorConfig()

    def __init__(self, config=None):
        super().__init__(config)
        self.last_records: list[dict[str, Any]] = []

    def plan(self, n_per_prompt: int | None = None, images_per_category: int | None = None,
             categories: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The list of prompt records to generate, one per image, grouped by category."""
        cfg = self.config
        n = cfg.n_per_prompt if n_per_prompt is None else n_per_prompt
        per_cat = cfg.images_per_category if images_per_category is None else images_per_category
        cats = tuple(categories or cfg.categories)
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown:
            raise MiroError(f"world_geneval: unknown categories {unknown}; choose from {CATEGORIES}.")
        records = load_prompts(cfg.prompts_file)
        plan: list[dict[str, Any]] = []
        for cat in cats:
            recs = [r for r in records if r["tag"] == cat]
            if not recs:
                continue
            if per_cat:
                plan += [recs[k % len(recs)] for k in range(per_cat)]
            else:
                plan += [r for r in recs for _ in range(n)]
        return plan

    def judge_images(self, images: torch.Tensor, records: Sequence[dict[str, Any]]) -> list[tuple[bool, str]]:
        """Correctness of each image ``[B,3,H,W]`` in [0,1] for its prompt record."""
        return [judge(detect(img, self.config.detector), rec) for img, rec in zip(images, records)]

    def evaluate(self, generate, n_per_prompt: int | None = None, images_per_category: int | None = None,
                 batch_size: int | None = None, seed: int | None = None, categories: Sequence[str] | None = None,
                 **sampling_kwargs) -> dict[str, float]:
        """Generate, detect, judge. ``generate(prompts, **sampling_kwargs) -> [B,3,H,W]`` in [0, 1].

        Returns ``{category: accuracy, ..., "overall": mean over categories, "overall_stderr": its standard
        error, "num_images": n}``; the
        per-image records (prompt, tag, correct, reason) are kept in ``self.last_records``.
        """
        from miro_core.sampling import as_generate

        generate = as_generate(generate)
        plan = self.plan(n_per_prompt, images_per_category, categories)
        bs = batch_size or self.config.batch_size
        base_seed = self.config.seed if seed is None else seed
        pass_seed = _accepts(generate, "seed")
        self.last_records = []
        for b, start in enumerate(range(0, len(plan), bs)):
            chunk = plan[start : start + bs]
            kwargs = dict(sampling_kwargs)
            if pass_seed and "seed" not in kwargs:
                kwargs["seed"] = base_seed + b
            with torch.no_grad():
                images = generate([r["prompt"] for r in chunk], **kwargs)
            images = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
            if images.shape[0] != len(chunk):
                raise MiroError(f"world_geneval: generate returned {images.shape[0]} images for {len(chunk)} prompts.")
            for rec, (ok, reason) in zip(chunk, self.judge_images(images, chunk)):
                self.last_records.append({"prompt": rec["prompt"], "tag": rec["tag"], "correct": ok, "reason": reason})
        out: dict[str, float] = {}
        n_cat: dict[str, int] = {}
        for cat in CATEGORIES:
            vals = [r["correct"] for r in self.last_records if r["tag"] == cat]
            if vals:
                out[cat], n_cat[cat] = float(np.mean(vals)), len(vals)
        out["overall"] = float(np.mean([out[c] for c in n_cat])) if n_cat else float("nan")
        # standard error of ``overall`` (mean of independent per-category binomial proportions; images of one
        # prompt are treated as independent draws, so it is a lower bound when prompts differ in difficulty)
        out["overall_stderr"] = (float(np.sqrt(sum(out[c] * (1 - out[c]) / n for c, n in n_cat.items())) / len(n_cat))
                                 if n_cat else float("nan"))
        out["num_images"] = float(len(self.last_records))
        logger.info("world_geneval: %s", out)
        return out


@hookimpl
def miro_register_evaluators(register):
    register(WorldGenEval)
