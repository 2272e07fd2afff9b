"""GenEval's zero-shot colour classifier: CLIP ViT-L/14 over the ten GenEval colours, three templates.

As the official script: per object class, each colour's text embedding is the re-normalised mean of the
L2-normalised embeddings of ``a photo of a {c} {cls}``, ``a photo of a {c}-colored {cls}`` and ``a photo of a {c}
object``; the object's image is the original composited onto a plain ``#999`` background through its mask
(``background = "original"`` keeps the image), cropped to its box; preprocessed as open_clip's OpenAI transform
(shortest side to 224, bicubic, centre crop, CLIP mean / std, applied to the PIL image: the original's own code
path); the predicted colour is the argmax of ``image_embedding . colour_embedding``.

The weights are transformers' ``CLIPModel`` (``openai/clip-vit-large-patch14``: OpenAI's ViT-L/14, the weights
open_clip's ``ViT-L-14`` / ``pretrained="openai"`` loads in the original); the text goes through open_clip's
tokenizer (the original's, with the BPE vocabulary open_clip ships), so no tokenizer files are needed.
"""

from __future__ import annotations

__all__ = ["ColorOptions", "ClipColorClassifier", "object_crops"]

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from miro_core import ConfigError, MiroError, config

from .rules import COLOR_TEMPLATES, GENEVAL_COLORS, Detection

log = logging.getLogger(__name__)


@config
class ColorOptions:
    #: Hub id (local Hugging Face cache only) or, with ``model_path``, a local directory
    model: str = "openai/clip-vit-large-patch14"
    model_path: str | None = None
    revision: str | None = None
    #: background outside the object's mask: a PIL colour (GenEval: ``#999``) or ``original``
    background: str = "#999"
    #: crop to the object's box (GenEval's default)
    crop: bool = True
    batch_size: int = 16
    dtype: str = "float32"


def object_crops(image: Any, objects: Sequence[Detection], background: str = "#999", crop: bool = True) -> list[Any]:
    """The PIL images the colour classifier sees: each object through its mask on ``background``, box-cropped."""
    from PIL import Image

    image = image.convert("RGB")
    blank = image.copy() if background == "original" else Image.new("RGB", image.size, color=background)
    out = []
    for obj in objects:
        if obj.mask is not None:
            if tuple(obj.mask.shape) != (image.size[1], image.size[0]):
                raise MiroError(f"object mask {tuple(obj.mask.shape)} does not match the image {image.size[::-1]}.")
            im = Image.composite(image, blank, Image.fromarray(obj.mask.astype(bool)))
        else:
            im = image
        if crop:
            im = im.crop(tuple(obj.box[:4]))
        out.append(im)
    return out


class ClipColorClassifier:
    """``classify(image, objects, classname) -> [colour, ...]`` (weights loaded on first use)."""

    def __init__(self, options: ColorOptions = ColorOptions(), device: str | torch.device = "cpu"):
        self.options = options
        self.device = torch.device(device)
        self.model = None
        self.transform = None
        self.tokenizer = None
        self._classifiers: dict[str, torch.Tensor] = {}
        self.source = ""

    def load(self) -> None:
        if self.model is not None:
            return
        import open_clip
        from open_clip.transform import image_transform
        from transformers import CLIPModel

        o = self.options
        where = o.model_path or o.model
        if o.model_path and not Path(o.model_path).is_dir():
            raise ConfigError(f"color.model_path {o.model_path} is not a directory with a transformers CLIP model.")
        kw: dict[str, Any] = {"local_files_only": True}
        if o.revision and not o.model_path:
            kw["revision"] = o.revision
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(o.dtype)
        if dtype is None:
            raise ConfigError(f"color.dtype must be float32, float16 or bfloat16 (got {o.dtype!r}).")
        try:
            model = CLIPModel.from_pretrained(where, dtype=dtype, **kw)
        except (OSError, ValueError) as exc:
            raise MiroError(
                f"GenEval colour classifier {where!r} is not available locally ({exc}). Download it once (e.g. "
                f"`huggingface-cli download {o.model}`, the same weights as `miro rewards download openai_clip`), or set "
                "color.model_path to a local directory."
            ) from exc
        size = int(model.config.vision_config.image_size)
        self.transform = image_transform(size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                         std=open_clip.OPENAI_DATASET_STD)
        self.tokenizer = open_clip.get_tokenizer("ViT-L-14")
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.source = str(where)

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def text_classifier(self, classname: str) -> torch.Tensor:
        """``[D, 10]``: one unit column per colour (mean of the normalised template embeddings, re-normalised)."""
        if classname not in self._classifiers:
            self.load()
            cols = []
            for color in GENEVAL_COLORS:
                texts = [t.format(c=color, cls=classname) for t in COLOR_TEMPLATES]
                ids = self.tokenizer(texts).to(self.device)
                emb = self._features(self.model.get_text_features(input_ids=ids)).float()
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(dim=0)
                cols.append(emb / emb.norm())
            self._classifiers[classname] = torch.stack(cols, dim=1)
        return self._classifiers[classname]

    @torch.no_grad()
    def logits(self, image: Any, objects: Sequence[Detection], classname: str) -> torch.Tensor:
        """``[N, 10]`` zero-shot logits (100 x cosine) of each object's crop."""
        self.load()
        crops = object_crops(image, objects, self.options.background, self.options.crop)
        clf = self.text_classifier(classname)
        dtype = next(self.model.parameters()).dtype
        out = []
        for start in range(0, len(crops), self.options.batch_size):
            x = torch.stack([self.transform(c) for c in crops[start:start + self.options.batch_size]])
            f = self._features(self.model.get_image_features(pixel_values=x.to(self.device, dtype))).float()
            out.append(100.0 * torch.nn.functional.normalize(f, dim=-1) @ clf)
        return torch.cat(out) if out else torch.zeros(0, len(GENEVAL_COLORS))

    def classify(self, image: Any, objects: Sequence[Detection], classname: str) -> list[str]:
        if not objects:
            return []
        return [GENEVAL_COLORS[int(i)] for i in self.logits(image, objects, classname).argmax(1)]
