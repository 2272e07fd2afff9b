"""Shared infrastructure of the CLIP-family rewards: tensor preprocessing and the transformers CLIP base.

Preprocessing runs on float tensors ``[B, 3, H, W]`` in ``[0, 1]``, batched, on the reward's device; it
mirrors the reference pipelines (PIL / torchvision on uint8 images) up to resampling rounding:

* ``crop`` mode (OpenAI CLIP, transformers ``CLIPImageProcessor``): resize the shortest side to ``size``
  (the long side to ``int(size * long / short)``), bicubic with antialiasing, clamp to [0, 1] (as the
  uint8 round trip does), centre crop ``crop_size`` (top = ``int((H - h) / 2)``), normalise.
* ``pad`` mode (HPSv2's ``ResizeMaxSize``): resize the longest side to ``size`` (the short side to
  ``round(short * size / long)``), bicubic with antialiasing, clamp, zero-pad to a square with the extra
  pixel on the bottom/right, normalise. The padding is 0 in [0, 1] pixel space (black), i.e.
  ``-mean/std`` after normalisation, exactly as the reference pads the PIL image before ``ToTensor``.
"""

from __future__ import annotations

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CLIP_MAX_TOKENS",
    "ClipImageTransform",
    "resize_shortest_center_crop",
    "resize_longest_pad",
    "normalize",
    "check_inputs",
    "chunks",
    "torch_dtype",
    "features",
    "l2_normalize",
    "dist_version",
    "HFClipReward",
]

import abc
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from miro_core import ConfigError, MiroError, Reward

from ._weights import WeightSource, check_loading_info, check_model_config, locate, snapshot_revision

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Context length of CLIP text encoders (start and end tokens included).
CLIP_MAX_TOKENS = 77

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32" | "float16" | "bfloat16"`` -> torch dtype (ConfigError otherwise)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not supported; use one of {', '.join(_DTYPES)}.") from None


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    try:
        return modes[name]
    except KeyError:
        raise ConfigError(f"interpolation {name!r} is not supported; use bicubic or bilinear.") from None


def _resize(images: torch.Tensor, hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as tvF

    if tuple(images.shape[-2:]) == tuple(hw):
        return images
    out = tvF.resize(images, list(hw), interpolation=_interp(interpolation), antialias=True)
    return out.clamp_(0.0, 1.0)


def resize_shortest_center_crop(images: torch.Tensor, size: int, crop_size: tuple[int, int] | None = None,
                                interpolation: str = "bicubic") -> torch.Tensor:
    """Shortest side to ``size``, then centre crop ``crop_size`` (default ``size x size``)."""
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_hw = (new_short, new_long) if h <= w else (new_long, new_short)
    out = _resize(images, new_hw, interpolation)
    ch, cw = crop_size or (size, size)
    oh, ow = out.shape[-2:]
    if ch > oh or cw > ow:
        raise MiroError(f"centre crop {ch}x{cw} is larger than the resized image {oh}x{ow}; check the processor sizes.")
    top, left = int((oh - ch) / 2.0), int((ow - cw) / 2.0)
    return out[..., top : top + ch, left : left + cw]


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0, interpolation: str = "bicubic") -> torch.Tensor:
    """Longest side to ``size``, then pad to ``size x size`` with ``fill`` (pixel space), centred."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = _resize(images, new_hw, interpolation)
    pad_h, pad_w = size - new_hw[0], size - new_hw[1]
    if pad_h or pad_w:
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom
        out = torch.nn.functional.pad(out, pad, mode="constant", value=fill)
    return out


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@attrs.frozen(kw_only=True)
class ClipImageTransform:
    """Batched tensor preprocessing: ``mode`` ``crop`` (shortest side + centre crop) or ``pad`` (longest side
    + zero pad), then mean/std normalisation. Resizing runs in float32 on ``device``; the result is cast to
    ``dtype``."""

    mode: str = "crop"
    size: int = 224
    crop_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor, *, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = images.to(device=device, dtype=torch.float32)
        if self.mode == "crop":
            x = resize_shortest_center_crop(x, self.size, self.crop_size, self.interpolation)
        elif self.mode == "pad":
            x = resize_longest_pad(x, self.size, 0.0, self.interpolation)
        else:
            raise ConfigError(f"preprocessing mode {self.mode!r} is not one of crop, pad.")
        return normalize(x, self.mean, self.std).to(dtype)

    @classmethod
    def from_hf_processor(cls, proc: Any) -> ClipImageTransform:
        """The equivalent transform of a transformers ``CLIPImageProcessor`` (its sizes, mean, std, resample)."""
        from transformers.image_utils import PILImageResampling

        size = proc.size
        shortest = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
        if not shortest or not getattr(proc, "do_resize", True):
            raise MiroError(
                f"image processor {type(proc).__name__} does not resize by shortest edge (size={size}); the CLIP rewards "
                "only support CLIP-style processors."
            )
        crop = proc.crop_size if getattr(proc, "do_center_crop", True) else None
        if crop is not None:
            ch = crop.get("height") if hasattr(crop, "get") else crop.height
            cw = crop.get("width") if hasattr(crop, "get") else crop.width
        else:
            ch = cw = int(shortest)
        resample = getattr(proc, "resample", PILImageResampling.BICUBIC)
        interp = {int(PILImageResampling.BICUBIC): "bicubic", int(PILImageResampling.BILINEAR): "bilinear"}.get(int(resample))
        if interp is None:
            raise MiroError(f"image processor resample mode {resample!r} is not supported (bicubic or bilinear).")
        return cls(mode="crop", size=int(shortest), crop_size=(int(ch), int(cw)), mean=tuple(float(v) for v in proc.image_mean),
                   std=tuple(float(v) for v in proc.image_std), interpolation=interp)


def check_inputs(images: torch.Tensor, prompts: Sequence[str], reward: str) -> None:
    """Validate the ``score`` arguments (interface contract)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MiroError(f"Reward {reward}: images must be a float tensor [B, 3, H, W] in [0, 1] RGB, got {shape}.")
    if not images.is_floating_point():
        raise MiroError(f"Reward {reward}: images must be floating point in [0, 1], got {images.dtype}; divide uint8 by 255.")
    if len(prompts) != images.shape[0]:
        raise MiroError(f"Reward {reward}: got {images.shape[0]} images but {len(prompts)} prompts; pass one caption per image.")


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    step = max(1, int(batch_size))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def features(out: Any) -> torch.Tensor:
    """Embedding tensor of ``get_image_features`` / ``get_text_features`` (transformers 5 returns an output
    object whose ``pooler_output`` holds the projected features; 4.x returned the tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise MiroError(f"unexpected feature output {type(out).__name__}; update the CLIP reward for this transformers version.")


def dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class HFClipReward(Reward, abc.ABC):
    """A transformers ``CLIPModel`` reward: cosine of L2-normalised image and text embeddings, mapped by
    :meth:`formula`. Subclasses define ``name``, ``Config`` (fields: ``model_id``, ``revision``,
    ``model_path``, ``processor_id``, ``processor_revision``, ``processor_path``, ``cache_dir``, ``dtype``,
    ``batch_size``) and the formula."""

    max_text_tokens: ClassVar[int | None] = CLIP_MAX_TOKENS
    model_license: ClassVar[str] = "unknown"
    processor_license: ClassVar[str] = "unknown"

    _MODEL_REQUIRED = ("config.json", "model.safetensors|pytorch_model.bin")
    _PROC_REQUIRED = ("preprocessor_config.json", "tokenizer.json|vocab.json")
    _PROC_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json")

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)  # validate early
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        self.model = None
        self.tokenizer = None
        self.transform: ClipImageTransform | None = None
        self.device = torch.device("cpu")
        self._resolved: dict[str, str | None] = {}

    # -- weights --------------------------------------------------------------------------------------
    def _processor_repo(self) -> tuple[str, str, str | None]:
        c = self.config
        if c.processor_id is None:
            return c.model_id, c.revision, c.processor_path or c.model_path
        return c.processor_id, c.processor_revision or "main", c.processor_path

    def weight_sources(self) -> list[WeightSource]:
        """What :meth:`setup` loads (and ``miro rewards download`` fetches)."""
        c = self.config
        model = WeightSource(role="model", repo_id=c.model_id, revision=c.revision, required=self._MODEL_REQUIRED,
                             local_path=c.model_path, license=self.model_license)
        pid, prev, ppath = self._processor_repo()
        if c.processor_id is None:  # processor files live in the model repository
            return [attrs.evolve(model, required=self._MODEL_REQUIRED + self._PROC_REQUIRED, optional=self._PROC_OPTIONAL)]
        proc = WeightSource(role="processor", repo_id=pid, revision=prev, required=self._PROC_REQUIRED,
                            optional=self._PROC_OPTIONAL, local_path=ppath, license=self.processor_license)
        return [model, proc]

    def _processor_dir(self) -> Path:
        return locate(self.weight_sources()[-1], cache_dir=self.config.cache_dir, reward=self.name)

    def _load_tokenizer(self, path: Path):
        from transformers import CLIPTokenizer

        try:
            return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MiroError(f"Reward {self.name}: cannot load the CLIP tokenizer from {path}: {exc}. Re-download the processor files.") from exc

    def _get_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer(self._processor_dir())
        return self.tokenizer

    def setup(self, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        device = torch.device(device)
        if self.model is not None:
            if device != self.device:
                self.model.to(device)
                self.device = device
            return
        sources = self.weight_sources()
        model_dir = locate(sources[0], cache_dir=self.config.cache_dir, reward=self.name)
        proc_dir = locate(sources[-1], cache_dir=self.config.cache_dir, reward=self.name)
        check_model_config(model_dir, expected_model_types=("clip",), reward=self.name)
        try:
            model, info = CLIPModel.from_pretrained(str(model_dir), local_files_only=True, dtype=torch_dtype(self.config.dtype),
                                                    output_loading_info=True)
            proc = CLIPImageProcessor.from_pretrained(str(proc_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MiroError(f"Reward {self.name}: cannot load the CLIP model from {model_dir}: {exc}. Re-download the weights.") from exc
        check_loading_info(info, what=f"CLIPModel from {model_dir}", reward=self.name)
        self.transform = ClipImageTransform.from_hf_processor(proc)
        self.tokenizer = self._load_tokenizer(proc_dir)
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self._resolved = {"model_commit": snapshot_revision(model_dir), "processor_commit": snapshot_revision(proc_dir)}
        log.info("%s: loaded %s (%s) on %s", self.name, model_dir, self.config.dtype, device)

    def teardown(self) -> None:
        self.model = None
        self.transform = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- scoring --------------------------------------------------------------------------------------
    def _max_length(self) -> int:
        if self.model is not None:
            return int(self.model.config.text_config.max_position_embeddings)
        return CLIP_MAX_TOKENS

    def text_fits(self, prompt: str) -> bool:
        ids = self._get_tokenizer()(prompt, truncation=False, verbose=False)["input_ids"]
        return len(ids) <= self._max_length()

    @abc.abstractmethod
    def formula(self, cosine: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """Score from the cosine similarity ``[B]`` (float32) and ``logit_scale.exp()`` (a scalar)."""

    def embed(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised float32 image and text embeddings ``[B, D]`` of one batch."""
        assert self.model is not None and self.transform is not None and self.tokenizer is not None
        dtype = torch_dtype(self.config.dtype)
        px = self.transform(images, device=self.device, dtype=dtype)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self._max_length(), return_tensors="pt")
        img = features(self.model.get_image_features(pixel_values=px))
        txt = features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                    attention_mask=tok["attention_mask"].to(self.device)))
        return l2_normalize(img), l2_normalize(txt)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.model is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = []
        for sl in chunks(images.shape[0], self.config.batch_size):
            img, txt = self.embed(images[sl], list(prompts[sl]))
            cos = (img * txt).sum(-1)
            out.append(self.formula(cos, self.model.logit_scale.detach().float().exp()).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        pid, prev, _ = self._processor_repo()
        meta.update(model_id=self.config.model_id, revision=self.config.revision, processor_id=pid, processor_revision=prev,
                    library=f"transformers {dist_version('transformers')}", **self._resolved)
        return meta
