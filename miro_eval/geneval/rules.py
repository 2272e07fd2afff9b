"""GenEval's correctness rules (Ghosh et al., 2023), as the official ``evaluation/evaluate_images.py`` applies them.

Per image, for each of the 80 COCO classes (GenEval's names, :data:`GENEVAL_CLASSES`):

* detections scoring strictly above the threshold (0.3; 0.9 for ``counting`` prompts) are kept, most
  confident first, at most ``max_objects`` (16) per class; an optional greedy overlap filter (``max_overlap``,
  IoU with GenEval's ``+1`` pixel convention) is off by default (1.0);
* every ``include`` clause needs at least ``count`` objects of its class; ``color``: the ``count`` most confident
  of them must all be classified as that colour; ``position = [relation, i]``: every matched object must stand in
  ``relation`` to every object matched by clause ``i`` (itself matched, else the clause fails);
* every ``exclude`` clause needs fewer than ``count`` kept objects of its class;
* relative position: box centres, offset shrunk by ``position_threshold`` (0.1) x the sum of the two boxes'
  sizes per axis; ``left of`` / ``right of`` / ``above`` / ``below`` when that axis holds more than half of the
  (shrunk) offset direction; no relation when the shrunk offset is below 1e-3 on both axes.

Scores (``summary_scores.py``): accuracy per tag (fraction of correct images), ``overall`` = mean of the tag
accuracies; also the fraction of correct images and of prompts with at least one correct image.
"""

from __future__ import annotations

__all__ = [
    "GENEVAL_CLASSES",
    "GENEVAL_COLORS",
    "GENEVAL_TAGS",
    "COLOR_TEMPLATES",
    "GenEvalRules",
    "Detection",
    "compute_iou",
    "select_objects",
    "relative_position",
    "judge",
    "summarize",
]

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from miro_core import config

#: the 80 COCO classes in COCO's order, spelled as GenEval's ``object_names.txt``
GENEVAL_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: the ten colours of the zero-shot colour classifier, in GenEval's order
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
#: the three templates, averaged per colour (``{c}`` = colour, ``{cls}`` = the object's class)
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@config
class GenEvalRules:
    """The thresholds of GenEval's evaluation (its ``--options``), defaults as the official script."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    #: greedy same-class overlap filter (IoU); 1.0 = off, as the official default
    max_overlap: float = 1.0
    position_threshold: float = 0.1


@attrs.frozen(eq=False)
class Detection:
    """One detected object: ``box`` ``(x1, y1, x2, y2)`` in pixels, confidence ``score``, optional bool ``mask``."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


def compute_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes with GenEval's inclusive-pixel convention (``x2 - x1 + 1``)."""
    def area(x):
        return max(x[2] - x[0] + 1, 0) * max(x[3] - x[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def select_objects(detections: Mapping[str, Sequence[Detection]], tag: str,
                   rules: GenEvalRules = GenEvalRules()) -> dict[str, list[Detection]]:
    """The objects GenEval keeps per class: above the tag's threshold, most confident first, capped, filtered."""
    thr = rules.counting_threshold if tag == "counting" else rules.threshold
    out: dict[str, list[Detection]] = {}
    for cls, dets in detections.items():
        order = sorted((d for d in dets if float(d.score) > thr), key=lambda d: -float(d.score))[: rules.max_objects]
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if rules.max_overlap != 1:
                order = [d for d in order if compute_iou(best.box, d.box) < rules.max_overlap]
        if kept:
            out[cls] = kept
    return out


def relative_position(a: Detection, b: Detection, margin: float = 0.1) -> set[str]:
    """Where ``a`` is relative to ``b``: a subset of ``{"left of", "right of", "above", "below"}``."""
    boxes = np.array([a.box, b.box], dtype=np.float64)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - margin * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


ColorFn = Callable[[Sequence[Detection], str], Sequence[str]]


RelationFn = Callable[[Any, Any], set[str]]


def judge(objects: Mapping[str, Sequence[Any]], metadata: Mapping[str, Any], classify_colors: ColorFn,
          rules: GenEvalRules = GenEvalRules(), relation: RelationFn | None = None) -> tuple[bool, str]:
    """GenEval's verdict for one image: ``(correct, reason)``.

    ``objects``: :func:`select_objects`' output (class -> objects, most confident first);
    ``classify_colors(objects, classname)`` returns one colour name per object (the CLIP classifier, or a stub in
    tests). ``relation(a, b)`` is where ``a`` stands relative to ``b`` (default :func:`relative_position` with
    ``rules.position_threshold`` on :class:`Detection` boxes; the world evaluator passes its own, on normalised
    boxes). ``include`` clauses combine with AND, ``exclude`` with OR.
    """
    if relation is None:
        def relation(a: Detection, b: Detection) -> set[str]:
            return relative_position(a, b, rules.position_threshold)
    correct = True
    reasons: list[str] = []
    matched_groups: list[Sequence[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = list(objects.get(cls, []))[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = list(classify_colors(found, cls))
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} "
                                   f"{req['color']}; and " + ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS
                                                                     if c in colors))
            if "position" in req and matched:
                rel, target = req["position"]
                targets = matched_groups[target] if 0 <= int(target) < len(matched_groups) else None
                if targets is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for tgt in targets:
                            true_rels = relation(obj, tgt)
                            if rel not in true_rels:
                                correct = matched = False
                                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(true_rels))} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        if len(objects.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(objects[cls])}")
    return correct, "\n".join(reasons)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics of per-image results (``tag``, ``correct``, ``prompt`` / ``group``), as ``summary_scores.py``.

    ``<tag>``: fraction of correct images of that tag; ``overall``: mean of the tag accuracies (tags in order of
    first appearance); ``correct_images``; ``correct_prompts`` (prompts with at least one correct image);
    ``counts``: ``{tag: [correct, total]}``."""
    tags: dict[str, list[bool]] = {}
    prompts: dict[Any, bool] = {}
    for r in rows:
        tags.setdefault(str(r["tag"]), []).append(bool(r["correct"]))
        key = r.get("group", r.get("prompt"))
        prompts[key] = prompts.get(key, False) or bool(r["correct"])
    metrics: dict[str, float] = {t: float(np.mean(v)) for t, v in tags.items()}
    metrics["overall"] = float(np.mean([metrics[t] for t in tags])) if tags else float("nan")
    n = sum(len(v) for v in tags.values())
    metrics["correct_images"] = float(sum(sum(v) for v in tags.values()) / n) if n else float("nan")
    metrics["correct_prompts"] = float(np.mean(list(prompts.values()))) if prompts else float("nan")
    return {"metrics": metrics, "counts": {t: [int(sum(v)), len(v)] for t, v in tags.items()}}
