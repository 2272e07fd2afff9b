"""Shared infrastructure of the CLIP-family rewards: image preprocessing and the transformers CLIP base.

Preprocessing (:class:`ClipImageTransform`) takes ``[B, 3, H, W]`` images, uint8 or float in [0, 1], and
reproduces the reference pipelines:

* ``crop`` mode (OpenAI CLIP ``_transform``, ImageReward, transformers ``CLIPImageProcessor``): resize the
  shortest side to ``size`` (the long side to ``int(size * long / short)``), centre crop ``crop_size`` with the
  reference's offset rounding (``crop_rounding``: ``"half_even"`` for torchvision ``CenterCrop``, ``"floor"``
  for transformers), normalise.
* ``pad`` mode (HPSv2's ``ResizeMaxSize``): resize the longest side to ``size`` (the short side to
  ``round(short * size / long)``), zero-pad to a square (left/top ``pad // 2``, the extra pixel bottom/right),
  normalise. The padding is 0 in [0, 1] pixel space (black), i.e. ``-mean/std`` after normalisation.

``backend`` chooses how the resize is computed:

* ``"pil"``: the 8-bit image resized by PIL on the CPU, cropped in 8 bit, then ``/ 255`` and normalised: the
  path of torchvision ``Resize`` on PIL images and of transformers' PIL image processors, bit-identical to them;
* ``"torch_cpu"``: float32 torch (bicubic with antialiasing) on the CPU, no rounding to 8 bit; this *is* the
  HPSv2 reference (its ``ToTensor`` runs before ``ResizeMaxSize``);
* ``"torch_device"``: the same on the reward's device (batched, fast; on a GPU float results can differ from
  the CPU in the last bits).

With the torch backends, ``clamp`` clips the resized pixels to [0, 1] as 8-bit images are clipped (for the
``crop`` rewards, whose references are 8 bit); HPSv2's reference never clamps.
"""

from __future__ import annotations

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CLIP_MAX_TOKENS",
    "BACKENDS",
    "PREPROCESS_MODES",
    "ClipImageTransform",
    "resize_shortest_center_crop",
    "resize_longest_pad",
    "normalize",
    "check_inputs",
    "check_preprocess",
    "chunks",
    "torch_dtype",
    "features",
    "l2_normalize",
    "dist_version",
    "openai_fp16_",
    "HFClipReward",
]

import abc
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from miro_core import ConfigError, MiroError, Reward

from . import _pixels
from ._weights import WeightSource, check_loading_info, check_model_config, locate, snapshot_revision

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Context length of CLIP text encoders (start and end tokens included).
CLIP_MAX_TOKENS = 77
#: ClipImageTransform backends (module doc).
BACKENDS = ("pil", "torch_cpu", "torch_device")
#: Values of the rewards' ``preprocess`` option: the reference's exact pipeline, or the batched on-device one.
PREPROCESS_MODES = ("original", "fast")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32" | "float16" | "bfloat16"`` -> torch dtype (ConfigError otherwise)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not supported; use one of {', '.join(_DTYPES)}.") from None


def check_preprocess(value: str, reward: str) -> str:
    """Validate a reward's ``preprocess`` option."""
    if value not in PREPROCESS_MODES:
        raise ConfigError(
            f"Reward {reward}: preprocess {value!r} is not one of {', '.join(PREPROCESS_MODES)} (original = the reference "
            "implementation's exact pipeline, fast = batched torch resizing on the reward's device)."
        )
    return value


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    try:
        return modes[name]
    except KeyError:
        raise ConfigError(f"interpolation {name!r} is not supported; use bicubic or bilinear.") from None


def _resize(images: torch.Tensor, hw: tuple[int, int], interpolation: str, clamp: bool) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as tvF

    if tuple(images.shape[-2:]) == tuple(hw):
        return images
    out = tvF.resize(images, list(hw), interpolation=_interp(interpolation), antialias=True)
    return out.clamp_(0.0, 1.0) if clamp else out


def _check_crop(ch: int, cw: int, oh: int, ow: int) -> None:
    if ch > oh or cw > ow:
        raise MiroError(f"centre crop {ch}x{cw} is larger than the resized image {oh}x{ow}; check the processor sizes.")


def resize_shortest_center_crop(images: torch.Tensor, size: int, crop_size: tuple[int, int] | None = None,
                                interpolation: str = "bicubic", crop_rounding: str = "half_even",
                                clamp: bool = True) -> torch.Tensor:
    """Float tensors: shortest side to ``size``, then centre crop ``crop_size`` (default ``size x size``)."""
    h, w = images.shape[-2:]
    out = _resize(images, _pixels.shortest_side_size(h, w, size), interpolation, clamp)
    ch, cw = crop_size or (size, size)
    oh, ow = out.shape[-2:]
    _check_crop(ch, cw, oh, ow)
    top, left = _pixels.crop_offset(oh, ch, crop_rounding), _pixels.crop_offset(ow, cw, crop_rounding)
    return out[..., top : top + ch, left : left + cw]


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0, interpolation: str = "bicubic",
                       clamp: bool = False) -> torch.Tensor:
    """Float tensors: longest side to ``size``, then pad to ``size x size`` with ``fill`` (pixel space), centred."""
    h, w = images.shape[-2:]
    new_hw = _pixels.longest_side_size(h, w, size)
    out = _resize(images, new_hw, interpolation, clamp)
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
    """Batched preprocessing: ``mode`` ``crop`` (shortest side + centre crop) or ``pad`` (longest side + zero
    pad), then mean/std normalisation, computed by ``backend`` (module doc). The result is cast to ``dtype`` on
    ``device``."""

    mode: str = "crop"
    size: int = 224
    crop_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    #: ``"half_even"`` (torchvision ``CenterCrop``) or ``"floor"`` (transformers ``CLIPImageProcessor``).
    crop_rounding: str = "half_even"
    backend: str = "pil"
    #: Torch backends only: clip resized pixels to [0, 1] (8-bit references clip; HPSv2 does not).
    clamp: bool = True

    def __attrs_post_init__(self) -> None:
        if self.mode not in ("crop", "pad"):
            raise ConfigError(f"preprocessing mode {self.mode!r} is not one of crop, pad.")
        if self.backend not in BACKENDS:
            raise ConfigError(f"preprocessing backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")
        if self.crop_rounding not in _pixels.CROP_ROUNDINGS:
            raise ConfigError(f"crop rounding {self.crop_rounding!r} is not one of {', '.join(_pixels.CROP_ROUNDINGS)}.")
        _interp(self.interpolation)

    def __call__(self, images: torch.Tensor, *, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.backend == "pil":
            x = self._pil(images)
        else:
            x = self._torch(_pixels.as_float(images, "cpu" if self.backend == "torch_cpu" else device))
        return normalize(x, self.mean, self.std).to(device=device, dtype=dtype)

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "crop":
            return resize_shortest_center_crop(x, self.size, self.crop_size, self.interpolation, self.crop_rounding, self.clamp)
        return resize_longest_pad(x, self.size, 0.0, self.interpolation, self.clamp)

    def _pil(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit path: uint8 image -> PIL resize -> crop / pad in uint8 -> float32 ``/ 255`` (CPU)."""
        arr = _pixels.as_uint8_hwc(images)
        h, w = arr.shape[1:3]
        if self.mode == "crop":
            arr = _pixels.pil_resize_batch(arr, _pixels.shortest_side_size(h, w, self.size), self.interpolation)
            ch, cw = self.crop_size
            oh, ow = arr.shape[1:3]
            _check_crop(ch, cw, oh, ow)
            top, left = _pixels.crop_offset(oh, ch, self.crop_rounding), _pixels.crop_offset(ow, cw, self.crop_rounding)
            arr = arr[:, top : top + ch, left : left + cw]
        else:
            new_hw = _pixels.longest_side_size(h, w, self.size)
            arr = _pixels.pil_resize_batch(arr, new_hw, self.interpolation)
            pad_h, pad_w = self.size - new_hw[0], self.size - new_hw[1]
            arr = np.pad(arr, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        return _pixels.u8_hwc_to_float(arr)

    @classmethod
    def from_hf_processor(cls, proc: Any, *, backend: str = "pil", crop_rounding: str = "floor") -> ClipImageTransform:
        """The equivalent transform of a transformers ``CLIPImageProcessor`` (its sizes, mean, std, resample).

        ``crop_rounding="floor"`` is the processor's own rule (``(H - h) // 2``, in both its PIL and torchvision
        backends); ``backend="pil"`` reproduces the PIL backend (the slow processor of transformers 4, which the
        reference scripts ran), bit for bit."""
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
                   std=tuple(float(v) for v in proc.image_std), interpolation=interp, crop_rounding=crop_rounding,
                   backend=backend, clamp=True)


def check_inputs(images: torch.Tensor, prompts: Sequence[str], reward: str) -> None:
    """Validate the ``score`` arguments: ``[B, 3, H, W]`` float in [0, 1] or uint8, one prompt per image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MiroError(f"Reward {reward}: images must be a tensor [B, 3, H, W] (float in [0, 1] or uint8) RGB, got {shape}.")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise MiroError(f"Reward {reward}: images must be float in [0, 1] or uint8 in [0, 255], got {images.dtype}.")
    if images.shape[0] and (images.shape[-1] < 1 or images.shape[-2] < 1):
        raise MiroError(f"Reward {reward}: empty images of size {tuple(images.shape[-2:])}; every image needs pixels.")
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


def _fp32_layer_norm(ln: torch.nn.LayerNorm) -> None:
    forward = ln.forward

    def fp32_forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return forward(x.float(), *args, **kwargs).to(x.dtype)

    ln.float()
    ln.forward = fp32_forward  # type: ignore[method-assign]


def openai_fp16_(model: torch.nn.Module) -> torch.nn.Module:
    """OpenAI ``clip``'s CUDA precision on a transformers CLIP model, in place.

    ``clip.load`` on CUDA converts the Linear / Conv / attention weights and the projections to float16 and feeds
    float16 pixels; the class and position embeddings are cast to float16 where they are added; its
    ``LayerNorm`` subclass keeps float32 weights and normalises in float32 before casting back. This mirrors
    that: everything float16 except the LayerNorms, which run in float32 on an upcast input and return the
    input's dtype. (An emulation of the numerics, not bit parity: kernels differ between the libraries.)"""
    model.half()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            _fp32_layer_norm(module)
    return model


class HFClipReward(Reward, abc.ABC):
    """A transformers ``CLIPModel`` reward: cosine of L2-normalised image and text embeddings, mapped by
    :meth:`formula`. Subclasses define ``name``, ``Config`` (fields: ``model_id``, ``revision``,
    ``model_path``, ``processor_id``, ``processor_revision``, ``processor_path``, ``preprocess``, ``cache_dir``,
    ``dtype``, ``batch_size``) and the formula.

    Images are preprocessed as the reference scripts' transformers ``CLIPImageProcessor`` (the PIL processor of
    transformers 4): ``preprocess = "original"`` takes its 8-bit PIL path bit for bit, ``"fast"`` resizes float
    tensors on the reward's device; both crop with the processor's ``(H - h) // 2`` offset."""

    max_text_tokens: ClassVar[int | None] = CLIP_MAX_TOKENS
    #: ``score`` takes uint8 images too (the scoring pipeline then passes the decoded bytes, no float round trip).
    accepts_uint8: ClassVar[bool] = True
    model_license: ClassVar[str] = "unknown"
    processor_license: ClassVar[str] = "unknown"

    _MODEL_REQUIRED = ("config.json", "model.safetensors|pytorch_model.bin")
    _PROC_REQUIRED = ("preprocessor_config.json", "tokenizer.json|vocab.json")
    _PROC_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json")

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)  # validate early
        check_preprocess(self.config.preprocess, self.name)
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        self.model = None
        self.tokenizer = None
        self.transform: ClipImageTransform | None = None
        self.device = torch.device("cpu")
        self._resolved: dict[str, Any] = {}

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
        ignored = check_loading_info(info, what=f"CLIPModel from {model_dir}", reward=self.name)
        backend = "pil" if self.config.preprocess == "original" else "torch_device"
        self.transform = ClipImageTransform.from_hf_processor(proc, backend=backend, crop_rounding="floor")
        self.tokenizer = self._load_tokenizer(proc_dir)
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self._resolved = {"model_commit": snapshot_revision(model_dir), "processor_commit": snapshot_revision(proc_dir),
                          "ignored_checkpoint_keys": ignored}
        log.info("%s: loaded %s (%s, preprocess %s) on %s", self.name, model_dir, self.config.dtype, self.config.preprocess, device)

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
