"""``geneval``: GenEval's 553 prompts (or any metadata JSONL in its format), 4 images per prompt, judged by the
official rules with a transformers detector and the CLIP colour classifier (:mod:`miro_eval.geneval`).

``--images DIR`` scores a folder in GenEval's layout produced by any model (the prompt records come from each
``<index>/metadata.jsonl``, as the official script reads them). ``results.jsonl`` has the official result columns
(``filename``, ``tag``, ``prompt``, ``correct``, ``reason``, ``metadata``, ``details``), so the official
``summary_scores.py`` reads it too."""

from __future__ import annotations

__all__ = ["GenEvalSuite", "GENEVAL_METADATA_URL"]

import json
import logging
from typing import Any

import attrs
import numpy as np

from miro_core import ConfigError, config, hookimpl, unstructure

from ..geneval.color import ClipColorClassifier, ColorOptions
from ..geneval.detector import DetectorOptions, TransformersDetector, detections_to_json
from ..geneval.rules import GENEVAL_TAGS, GenEvalRules, judge, select_objects, summarize
from ._base import ImageSuite, SuiteOptions
from ._layout import load_rgb
from ._prompts import read_prompt_file

log = logging.getLogger(__name__)

#: the official prompt set (553 prompts)
GENEVAL_METADATA_URL = "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"


class GenEvalSuite(ImageSuite):
    """GenEval: official rules, a transformers COCO detector and CLIP ViT-L/14 colours; overall = mean of the tags."""

    name = "geneval"

    @config
    class Config(SuiteOptions):
        images_per_prompt: int = 4
        #: GenEval metadata JSONL (``tag``, ``prompt``, ``include``, ``exclude``): a local path or fsspec URL
        metadata_file: str = GENEVAL_METADATA_URL
        rules: GenEvalRules = attrs.field(factory=GenEvalRules)
        detector: DetectorOptions = attrs.field(factory=DetectorOptions)
        color: ColorOptions = attrs.field(factory=ColorOptions)

    def __init__(self, config: Any = None, *, detector: Any = None, color_classifier: Any = None):
        super().__init__(config)
        self._records: list[dict[str, Any]] | None = None
        self._detector = detector
        self._color = color_classifier

    @property
    def detector(self) -> Any:
        if self._detector is None:
            self._detector = TransformersDetector(self.config.detector, self.device)
        return self._detector

    @property
    def color_classifier(self) -> Any:
        if self._color is None:
            self._color = ClipColorClassifier(self.config.color, self.device)
        return self._color

    def prompt_records(self) -> list[dict[str, Any]]:
        if self._records is None:
            recs = read_prompt_file(self.config.metadata_file)
            for i, r in enumerate(recs):
                if "tag" not in r or "include" not in r:
                    raise ConfigError(f"{self.config.metadata_file}: record {i} ({r.get('prompt')!r}) has no 'tag' / "
                                      "'include': is it a GenEval metadata file?")
            self._records = recs
        return self._records

    def scorer_config(self) -> Any:
        c = self.config
        return {"rules": unstructure(c.rules), "detector": unstructure(c.detector), "color": unstructure(c.color),
                "stub": None if self._detector is None else type(self._detector).__name__}

    def attach_metadata(self, records):
        bad = [r for r in records if "tag" not in r.metadata or "include" not in r.metadata]
        if bad:
            raise ConfigError(
                f"{len(bad)} image(s) have no GenEval metadata (e.g. {bad[0].path}): GenEval needs each prompt's record "
                "(tag, include, exclude). Use GenEval's layout: <index>/metadata.jsonl (one line of the metadata file) "
                "+ <index>/samples/<k>.png."
            )
        return records

    def judge_image(self, image: Any, metadata: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
        """``(correct, reason, kept objects)`` of one PIL image for its prompt record."""
        dets = self.detector.detect(np.asarray(image, dtype=np.uint8))
        objects = select_objects(dets, metadata["tag"], self.config.rules)
        ok, reason = judge(objects, metadata,
                           lambda objs, cls: self.color_classifier.classify(image, objs, cls), self.config.rules)
        return ok, reason, objects

    def score(self, records, root, cache, progress):
        rows = []
        todo = [r for r in records if cache.get(r, root) is None]
        bar = progress(len(todo), "geneval") if todo else None
        try:
            for r in records:
                hit = cache.get(r, root)
                if hit is None:
                    meta = dict(r.metadata)
                    ok, reason, objects = self.judge_image(load_rgb(r.path), meta)
                    cache.put(r, root, {"filename": r.key(root), "tag": meta["tag"], "prompt": r.prompt, "correct": ok,
                                        "reason": reason, "metadata": json.dumps(meta),
                                        "details": json.dumps(detections_to_json(objects)), "group": r.group,
                                        "sample": r.sample})
                    hit = cache.get(r, root)
                    if bar is not None:
                        bar.update(1)
                rows.append(hit)
        finally:
            if bar is not None:
                bar.close()
        return rows

    def summarize(self, rows):
        out = summarize(rows)
        unknown = sorted(set(out["counts"]) - set(GENEVAL_TAGS))
        if unknown:
            log.warning("geneval: tags %s are not GenEval's six; they count in overall like the others", unknown)
        return out

    def headline_metrics(self, result):
        tags = [t for t in GENEVAL_TAGS if t in result["metrics"]]
        tags += [t for t in result.get("counts", {}) if t not in tags]
        return ["overall", *tags]

    def report_body(self, report, result, out):
        counts = result.get("counts", {})
        report.heading("Per tag", 3)
        report.table(["tag", "accuracy", "correct", "images"],
                     [[t, result["metrics"][t], *counts.get(t, [None, None])] for t in self.headline_metrics(result)[1:]])
        m = result["metrics"]
        report.text(f"Correct images: {m['correct_images']:.4f}; prompts with at least one correct image: "
                    f"{m['correct_prompts']:.4f}. Per-image verdicts and reasons: `results.jsonl`.")


@hookimpl
def miro_register_suites(register):
    register(GenEvalSuite)
