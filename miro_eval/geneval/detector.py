"""GenEval's object detector through transformers (no mmdet / mmcv).

Query-based instance segmentation models (``Mask2FormerForUniversalSegmentation``,
``MaskFormerForInstanceSegmentation``; default ``facebook/mask2former-swin-small-coco-instance``, the architecture of
GenEval's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``) run with the test pipeline and instance
post-processing of mmdetection's Mask2Former, re-implemented here:

* preprocessing: resize keeping the aspect ratio to fit 1333 x 800 (scale ``min(1333 / long, 800 / short)``, sizes
  rounded half up), bilinear with half-pixel centres and no antialiasing (as OpenCV's ``INTER_LINEAR``), rounded
  to 8 bits, normalised with mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375), zero-padded to a
  multiple of 32;
* post-processing: mask logits upsampled (bilinear) to the padded input, cropped to the resized image, resized
  (bilinear) to the original size; class probabilities ``softmax[:, :-1]``; the ``max_per_image`` (100) best
  (query, class) pairs; binary masks ``logit > 0``; score = class probability x mean mask probability inside the
  binary mask; box = the binary mask's tight box ``(x_min, y_min, x_max + 1, y_max + 1)``.

transformers' own ``post_process_instance_segmentation`` is not used: it scores the masks at a fixed 384 x 384
and ignores the padding. Other detectors that transformers loads with ``AutoModelForObjectDetection`` (DETR
family...) run through their own image processor (``post_process_object_detection``, threshold 0) and give boxes
without masks; GenEval then classifies colour on the box crop, as the official script does without masks.

Class names: the model's ``id2label`` names are mapped to GenEval's 80 names (COCO's variants such as
``motorbike`` / ``mouse`` / ``remote`` are aliased); ``labels = "index"`` maps label ``i`` to the ``i``-th COCO
class instead.
"""

from __future__ import annotations

__all__ = ["DetectorOptions", "TransformersDetector", "label_map", "mmdet_resize_shape", "instance_postprocess"]

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from miro_core import ConfigError, MiroError, config

from .rules import GENEVAL_CLASSES, Detection

log = logging.getLogger(__name__)

_ALIASES = {
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
    "diningtable": "dining table", "tvmonitor": "tv", "tv monitor": "tv", "mouse": "computer mouse",
    "remote": "tv remote", "keyboard": "computer keyboard", "hair dryer": "hair drier", "doughnut": "donut",
    "cellphone": "cell phone", "mobile phone": "cell phone", "trafficlight": "traffic light",
    "firehydrant": "fire hydrant", "stopsign": "stop sign", "parkingmeter": "parking meter",
    "sportsball": "sports ball", "baseballbat": "baseball bat", "baseballglove": "baseball glove",
    "tennisracket": "tennis racket", "wineglass": "wine glass", "hotdog": "hot dog", "teddybear": "teddy bear",
    "hairdrier": "hair drier", "motor bike": "motorcycle", "ski": "skis", "television": "tv",
}
_QUERY_MODELS = ("mask2former", "maskformer")


@config
class DetectorOptions:
    """Which detector and how it runs."""

    #: Hub id (loaded from the local Hugging Face cache, never downloaded here) or a local directory
    model: str = "facebook/mask2former-swin-small-coco-instance"
    #: a local directory with the model (config.json + weights); overrides ``model``
    model_path: str | None = None
    revision: str | None = None
    #: ``auto``: map the model's label names to GenEval's; ``index``: label i = the i-th COCO class
    labels: str = "auto"
    #: best (query, class) pairs kept per image (mmdetection's ``max_per_image``)
    max_per_image: int = 100
    #: mmdetection test resize: the image fits in max_size x min_size, aspect ratio kept
    min_size: int = 800
    max_size: int = 1333
    size_divisor: int = 32
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    dtype: str = "float32"


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def label_map(id2label: Mapping[int, str], mode: str = "auto") -> dict[int, str]:
    """Model label id -> GenEval class name (labels that are not one of the 80 classes are dropped)."""
    ids = sorted(int(i) for i in id2label)
    if mode == "index":
        return {i: GENEVAL_CLASSES[i] for i in ids if 0 <= i < len(GENEVAL_CLASSES)}
    if mode != "auto":
        raise ConfigError(f"detector.labels must be 'auto' or 'index' (got {mode!r}).")
    out: dict[int, str] = {}
    known = set(GENEVAL_CLASSES)
    for i in ids:
        n = _norm(id2label[i] if i in id2label else id2label[str(i)])
        n = _ALIASES.get(n, _ALIASES.get(n.replace(" ", ""), n))
        if n in known:
            out[i] = n
    missing = sorted(known - set(out.values()))
    if missing:
        if len(ids) == len(GENEVAL_CLASSES):
            log.warning("detector labels %s... are not COCO's names; mapping label i to the i-th COCO class",
                        [id2label[i] for i in ids[:3]])
            return label_map(id2label, "index")
        raise ConfigError(
            f"The detector's labels do not cover GenEval's classes (missing {', '.join(missing[:8])}"
            f"{'...' if len(missing) > 8 else ''}): GenEval needs a COCO detector. Use a COCO model, or set "
            "detector.labels=index if its labels are the 80 COCO classes in COCO's order."
        )
    return out


def mmdet_resize_shape(h: int, w: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """``(new_h, new_w)`` of mmcv's ``imrescale(img, (max_size, min_size))`` (keep ratio, rounded half up)."""
    scale = min(max_size / max(h, w), min_size / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(x_min, y_min, x_max + 1, y_max + 1)`` of bool masks ``[N, H, W]`` (zeros when empty)."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4, dtype=torch.float32)
    if n == 0:
        return boxes
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(n):
        xs, ys = torch.where(cols[i])[0], torch.where(rows[i])[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instance_postprocess(class_logits: torch.Tensor, mask_logits: torch.Tensor, *, padded_hw: tuple[int, int],
                         resized_hw: tuple[int, int], original_hw: tuple[int, int], max_per_image: int = 100
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdetection's Mask2Former instance results for one image: ``(labels, scores, boxes, masks)``.

    ``class_logits`` ``[Q, C + 1]`` (last = no object), ``mask_logits`` ``[Q, h, w]`` at the model's output
    resolution of the padded input."""
    m = F.interpolate(mask_logits[None].float(), size=padded_hw, mode="bilinear", align_corners=False)[0]
    m = m[:, : resized_hw[0], : resized_hw[1]]
    m = F.interpolate(m[None], size=original_hw, mode="bilinear", align_corners=False)[0]
    q, c1 = class_logits.shape
    num_classes = c1 - 1
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    k = min(int(max_per_image), q * num_classes)
    top_scores, top_idx = probs.flatten().topk(k, sorted=False)
    labels = top_idx % num_classes
    queries = top_idx // num_classes
    m = m[queries]
    binary = m > 0
    mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return labels, top_scores * mask_score, mask_boxes(binary), binary


class TransformersDetector:
    """``detect(image) -> {GenEval class: [Detection, ...]}`` with a transformers model (loaded on first use)."""

    def __init__(self, options: DetectorOptions = DetectorOptions(), device: str | torch.device = "cpu"):
        self.options = options
        self.device = torch.device(device)
        self.model = None
        self.processor = None
        self.labels: dict[int, str] = {}
        self.kind = ""
        self.source = ""

    def _location(self) -> str:
        o = self.options
        if o.model_path:
            if not Path(o.model_path).is_dir():
                raise ConfigError(f"detector.model_path {o.model_path} is not a directory with a transformers model.")
            return o.model_path
        return o.model

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoConfig

        where = self._location()
        kw: dict[str, Any] = {"local_files_only": True}
        if self.options.revision and not self.options.model_path:
            kw["revision"] = self.options.revision
        try:
            cfg = AutoConfig.from_pretrained(where, **kw)
        except (OSError, ValueError) as exc:
            raise MiroError(
                f"GenEval detector {where!r} is not available locally ({exc}). Download it once (e.g. `huggingface-cli "
                f"download {self.options.model}`), or set detector.model_path to a local directory."
            ) from exc
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.options.dtype)
        if dtype is None:
            raise ConfigError(f"detector.dtype must be float32, float16 or bfloat16 (got {self.options.dtype!r}).")
        if cfg.model_type == "mask2former":
            from transformers import Mask2FormerForUniversalSegmentation as cls
        elif cfg.model_type == "maskformer":
            from transformers import MaskFormerForInstanceSegmentation as cls
        else:
            from transformers import AutoImageProcessor
            from transformers import AutoModelForObjectDetection as cls

            try:
                self.processor = AutoImageProcessor.from_pretrained(where, **kw)
            except (OSError, ValueError) as exc:
                raise MiroError(f"GenEval detector {where!r} ({cfg.model_type}) needs its image processor "
                                f"(preprocessor_config.json): {exc}.") from exc
        try:
            model = cls.from_pretrained(where, dtype=dtype, **kw)
        except (OSError, ValueError) as exc:
            raise MiroError(f"Cannot load the GenEval detector {where!r} as {cls.__name__}: {exc}.") from exc
        self.kind = "query" if cfg.model_type in _QUERY_MODELS else "boxes"
        self.labels = label_map(model.config.id2label, self.options.labels)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.source = str(where)
        log.info("GenEval detector %s (%s, %s) on %s", where, type(model).__name__, self.kind, self.device)

    # -- preprocessing ---------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """uint8 ``[H, W, 3]`` RGB -> (normalised padded ``[1, 3, H', W']``, pixel mask, resized (h, w))."""
        o = self.options
        h, w = image.shape[:2]
        nh, nw = mmdet_resize_shape(h, w, o.min_size, o.max_size)
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
            x = x.round().clamp(0, 255)
        mean = torch.tensor(o.mean).view(1, 3, 1, 1)
        std = torch.tensor(o.std).view(1, 3, 1, 1)
        x = (x - mean) / std
        d = max(1, int(o.size_divisor))
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        x = F.pad(x, (0, pw - nw, 0, ph - nh), value=0.0)
        mask = torch.zeros(1, ph, pw, dtype=torch.long)
        mask[:, :nh, :nw] = 1
        return x, mask, (nh, nw)

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> dict[str, list[Detection]]:
        """Every detection of the image (no threshold), grouped by GenEval class, in the model's order."""
        self.load()
        image = np.asarray(image, dtype=np.uint8)
        h, w = image.shape[:2]
        dtype = next(self.model.parameters()).dtype
        out: dict[str, list[Detection]] = {}
        if self.kind == "query":
            x, mask, resized = self.preprocess(image)
            res = self.model(pixel_values=x.to(self.device, dtype), pixel_mask=mask.to(self.device))
            labels, scores, boxes, masks = instance_postprocess(
                res.class_queries_logits[0].float().cpu(), res.masks_queries_logits[0].float().cpu(),
                padded_hw=tuple(x.shape[-2:]), resized_hw=resized, original_hw=(h, w),
                max_per_image=self.options.max_per_image)
            for lab, s, b, m in zip(labels.tolist(), scores.tolist(), boxes.tolist(), masks.numpy()):
                name = self.labels.get(int(lab))
                if name is not None:
                    out.setdefault(name, []).append(Detection(tuple(b), float(s), m))
            return out
        inputs = self.processor(images=image, return_tensors="pt")
        inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}
        res = self.model(**inputs)
        post = self.processor.post_process_object_detection(res, threshold=0.0, target_sizes=[(h, w)])[0]
        for lab, s, b in zip(post["labels"].tolist(), post["scores"].tolist(), post["boxes"].float().cpu().tolist()):
            name = self.labels.get(int(lab))
            if name is not None:
                out.setdefault(name, []).append(Detection(tuple(b), float(s), None))
        return out

    def describe(self) -> dict[str, Any]:
        return {"model": self.source or self._location(), "class": type(self.model).__name__ if self.model else None,
                "kind": self.kind}


def detections_to_json(objects: Mapping[str, Sequence[Detection]]) -> dict[str, list[list[float]]]:
    """``{class: [[x1, y1, x2, y2, score], ...]}`` (GenEval's ``details`` column)."""
    return {k: [[*map(float, d.box), float(d.score)] for d in v] for k, v in objects.items()}
