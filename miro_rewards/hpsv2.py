"""HPSv2 / HPSv2.1 (Human Preference Score v2, Wu et al., 2023): an open_clip ViT-H/14 fine-tuned on HPD v2.

Re-implemented on ``open_clip`` directly (the ``hpsv2`` package pins an old open_clip fork and does not work
with transformers 5): the ``ViT-H-14`` architecture is built with ``open_clip.create_model(..., pretrained=None)``
and the checkpoint's ``state_dict`` is loaded strictly (``torch.load(weights_only=True)``).

Preprocessing as the reference's validation transform (``hpsv2`` 1.2.0 ``image_transform(...,
resize_longest_max=True)``): ``ToTensor`` first (``u8 / 255``), then ``ResizeMaxSize`` on the float tensor:
longest side to 224 with torchvision bicubic (antialiased, no clamp, no 8-bit rounding), the short side to
``round(short * 224 / long)``, zero padding (black in pixel space) ``[pad_w // 2, pad_h // 2, rest]``, then CLIP
mean/std. ``preprocess = "original"`` computes exactly that on the CPU (bit-identical pixels);
``"fast"`` computes the same on the reward's device (identical on CPU; last-bit differences on a GPU).
Text: open_clip's CLIP BPE tokenizer, 77 tokens.

Precision: the reference runs the model under ``torch.cuda.amp.autocast()`` (float16) and takes the cosine
as a float16 matmul; ``original_precision = true`` does the same on CUDA (no effect on CPU, where the
reference's CUDA autocast is inactive).

Score = ``cosine(image_features, text_features)``, **not** multiplied by ``logit_scale`` (~100): the reference
``hpsv2.score`` returns the diagonal of ``image_features @ text_features.T`` of normalised features, and the
published HPSv2 numbers (e.g. 0.27..0.33 in the MIRO paper) are on that scale.
"""

from __future__ import annotations

__all__ = ["HPSv2"]

import logging
from collections.abc import Sequence
from typing import Any

import torch

from miro_core import ConfigError, MiroError, Reward, config, hookimpl

from ._clip_common import CLIP_MAX_TOKENS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipImageTransform, check_inputs, check_preprocess, \
    chunks, dist_version, l2_normalize, torch_dtype
from ._weights import WeightSource, WeightsError, locate, report_ignored, snapshot_revision, split_legacy_buffers

log = logging.getLogger(__name__)

_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}


class HPSv2(Reward):
    """HPSv2.1 human-preference score: cosine of open_clip ViT-H/14 image and text features (~0.2..0.35)."""

    name = "hpsv2"
    version = "2"  # 2: no clamp after resizing (the reference has none)
    max_text_tokens = CLIP_MAX_TOKENS
    accepts_uint8 = True

    @config
    class Config:
        #: ``v2.1`` (default, HPS_v2.1_compressed.pt) or ``v2.0`` (HPS_v2_compressed.pt).
        hps_version: str = "v2.1"
        repo_id: str = "xswu/HPSv2"
        revision: str = "697403c78157020a1ae59d23f111aa58ced35b0a"
        #: Checkpoint file in ``repo_id``; None: chosen by ``hps_version``.
        filename: str | None = None
        #: Local checkpoint file replacing the hub lookup.
        checkpoint_path: str | None = None
        #: open_clip architecture name.
        arch: str = "ViT-H-14"
        #: An explicit open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...) instead of ``arch``
        #: (other checkpoints, tests with tiny models).
        arch_config: dict[str, Any] | None = None
        #: ``original``: the reference transform on the CPU (float32 torch resize of ``u8 / 255``), bit-identical;
        #: ``fast``: the same operations on the reward's device.
        preprocess: str = "original"
        #: On CUDA, the reference's precision: float16 autocast for the forward and the cosine (hpsv2 runs with
        #: ``precision="amp"`` under ``torch.cuda.amp.autocast()``). No effect on CPU. Needs ``dtype = "float32"``.
        original_precision: bool = False
        cache_dir: str | None = None
        dtype: str = "float32"
        batch_size: int = 32

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)
        if self.config.hps_version not in _FILES:
            raise ConfigError(f"Reward hpsv2: hps_version {self.config.hps_version!r} is not one of {', '.join(_FILES)}.")
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        check_preprocess(self.config.preprocess, self.name)
        if self.config.original_precision and self.config.dtype != "float32":
            raise ConfigError(f"Reward {self.name}: original_precision is float32 weights under float16 autocast; leave "
                              f"dtype at float32 (got {self.config.dtype!r}).")
        self.model = None
        self.tokenizer = None
        self.transform: ClipImageTransform | None = None
        self.device = torch.device("cpu")
        self._resolved: dict[str, Any] = {}

    @property
    def filename(self) -> str:
        return self.config.filename or _FILES[self.config.hps_version]

    def weight_sources(self) -> list[WeightSource]:
        c = self.config
        return [WeightSource(role="checkpoint", repo_id=c.repo_id, revision=c.revision, required=(self.filename,), snapshot=False,
                             local_path=c.checkpoint_path, license="Apache-2.0 (tgxs002/HPSv2)")]

    # -- loading ---------------------------------------------------------------------------------------
    def _context_length(self) -> int:
        if self.config.arch_config:
            return int(self.config.arch_config.get("text_cfg", {}).get("context_length", CLIP_MAX_TOKENS))
        return CLIP_MAX_TOKENS

    def _get_tokenizer(self):
        if self.tokenizer is None:
            import open_clip

            if self.config.arch_config:
                self.tokenizer = open_clip.SimpleTokenizer(context_length=self._context_length())
            else:
                self.tokenizer = open_clip.get_tokenizer(self.config.arch)
        return self.tokenizer

    def build_model(self):
        """The open_clip CLIP of ``arch`` (or ``arch_config``) with random weights."""
        import open_clip

        if self.config.arch_config:
            try:
                return open_clip.CLIP(**self.config.arch_config)
            except TypeError as exc:
                raise ConfigError(f"Reward hpsv2: arch_config is not a valid open_clip CLIP config: {exc}.") from exc
        try:
            return open_clip.create_model(self.config.arch, pretrained=None)
        except RuntimeError as exc:  # unknown model name
            raise ConfigError(f"Reward hpsv2: open_clip has no architecture {self.config.arch!r}: {exc}.") from exc

    @staticmethod
    def read_state_dict(path: str, reward: str = "hpsv2") -> dict[str, torch.Tensor]:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"Reward {reward}: cannot read the checkpoint {path}: {exc}. Re-download it.") from exc
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not state:
            raise WeightsError(f"Reward {reward}: {path} has no `state_dict`; expected an HPSv2 checkpoint.")
        return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

    def setup(self, device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        if self.model is not None:
            self.model.to(device)
            self.device = device
            return
        path = locate(self.weight_sources()[0], cache_dir=self.config.cache_dir, reward=self.name)
        state = self.read_state_dict(str(path), self.name)
        model = self.build_model()
        state, ignored = split_legacy_buffers(state, model.state_dict().keys(), reward=self.name, what=str(path))
        report_ignored(self.name, str(path), ignored)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"Reward {self.name}: checkpoint {path} does not match the open_clip {self.config.arch} architecture: "
                f"{str(exc)[:600]}. Check hps_version / filename / arch."
            ) from exc
        visual = model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
        pcfg = getattr(visual, "preprocess_cfg", None) or {}
        self.transform = ClipImageTransform(mode="pad", size=int(size), crop_size=(int(size), int(size)),
                                            mean=tuple(pcfg.get("mean", OPENAI_CLIP_MEAN)), std=tuple(pcfg.get("std", OPENAI_CLIP_STD)),
                                            backend="torch_cpu" if self.config.preprocess == "original" else "torch_device",
                                            clamp=False)
        self.model = model.eval().requires_grad_(False).to(device=device, dtype=torch_dtype(self.config.dtype))
        self._get_tokenizer()
        self.device = device
        self._resolved = {"checkpoint_commit": snapshot_revision(path), "ignored_checkpoint_keys": ignored}
        log.info("hpsv2: loaded %s on %s", path, device)

    def teardown(self) -> None:
        self.model = None

    # -- scoring ---------------------------------------------------------------------------------------
    def text_fits(self, prompt: str) -> bool:
        return len(self._get_tokenizer().encode(prompt)) + 2 <= self._context_length()

    def embed(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised float32 image and text features ``[B, D]`` of one batch."""
        assert self.model is not None and self.transform is not None
        px = self.transform(images, device=self.device, dtype=torch_dtype(self.config.dtype))
        tokens = self._get_tokenizer()(list(prompts)).to(self.device)
        return l2_normalize(self.model.encode_image(px)), l2_normalize(self.model.encode_text(tokens))

    def _autocast_device(self) -> str | None:
        """Device type to autocast on for ``original_precision`` (CUDA only, as the reference), else None."""
        return "cuda" if self.config.original_precision and self.device.type == "cuda" else None

    def _score_autocast(self, images: torch.Tensor, prompts: Sequence[str], device_type: str) -> torch.Tensor:
        """The reference's numerics: forward, ``F.normalize`` and ``image_features @ text_features.T`` under float16
        autocast (one 1x1 product per pair, as it scores one image at a time); the float16 result as float32."""
        assert self.model is not None and self.transform is not None
        px = self.transform(images, device=self.device, dtype=torch.float32)
        tokens = self._get_tokenizer()(list(prompts)).to(self.device)
        with torch.autocast(device_type=device_type, dtype=torch.float16):
            img = self.model.encode_image(px, normalize=True)
            txt = self.model.encode_text(tokens, normalize=True)
            cos = torch.bmm(img[:, None, :], txt[:, :, None]).reshape(-1)
        return cos.float()

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.model is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = []
        amp = self._autocast_device()
        for sl in chunks(images.shape[0], self.config.batch_size):
            if amp is not None:
                out.append(self._score_autocast(images[sl], list(prompts[sl]), amp).cpu())
                continue
            img, txt = self.embed(images[sl], list(prompts[sl]))
            out.append((img * txt).sum(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        c = self.config
        meta.update(model_id=f"{c.repo_id}/{self.filename}", revision=c.revision, arch=c.arch if not c.arch_config else "custom",
                    library=f"open_clip_torch {dist_version('open_clip_torch')}", **self._resolved)
        return meta


@hookimpl
def miro_register_rewards(register):
    register(HPSv2)
