"""GenEval (Ghosh et al., 2023) in one environment: the official rules, the detector through transformers and the
CLIP colour classifier. The ``geneval`` suite (:mod:`miro_eval.suites.geneval`) runs them; see docs/evaluation.md."""

from __future__ import annotations

from .color import ClipColorClassifier, ColorOptions, object_crops
from .detector import DetectorOptions, TransformersDetector, instance_postprocess, label_map, mmdet_resize_shape
from .rules import (
    COLOR_TEMPLATES,
    GENEVAL_CLASSES,
    GENEVAL_COLORS,
    GENEVAL_TAGS,
    Detection,
    GenEvalRules,
    compute_iou,
    judge,
    relative_position,
    select_objects,
    summarize,
)

__all__ = [
    "COLOR_TEMPLATES", "GENEVAL_CLASSES", "GENEVAL_COLORS", "GENEVAL_TAGS", "Detection", "GenEvalRules",
    "compute_iou", "judge", "relative_position", "select_objects", "summarize", "ClipColorClassifier",
    "ColorOptions", "object_crops", "DetectorOptions", "TransformersDetector", "instance_postprocess", "label_map",
    "mmdet_resize_shape",
]
