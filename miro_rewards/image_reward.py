"""ImageReward (Xu et al., NeurIPS 2023): BLIP ViT-L/16 + cross-attention BERT + MLP head.

Score, as THUDM's reference ``ImageReward.score``::

    image_embeds = ViT(preprocess(image))                         # BLIP ViT-L/16, 224 px
    h = BERT(tokens(prompt, max 35), cross-attending to image_embeds).last_hidden_state[:, 0]   # [CLS]
    score = (MLP(h) - 0.16717362830052426) / 1.0333394966054072

Weights: ``ImageReward.pt`` + ``med_config.json`` from ``THUDM/ImageReward`` (a local directory holding both
files, or the Hugging Face cache: never downloaded here), and the ``bert-base-uncased`` tokenizer (plus
BLIP's ``[DEC]`` / ``[ENC]`` special tokens, as the reference adds them). Networks are transformers'
``BlipVisionModel`` / ``BlipTextModel``; the original parameter names are mapped in :mod:`._blip`.

Preprocessing as the reference's ``_transform(224)``: torchvision ``Resize(224, BICUBIC)`` + ``CenterCrop(224)``
on the PIL image (8 bit; crop offset ``int(round((H - 224) / 2))``, halves to even), ``ToTensor``, CLIP
mean/std. ``preprocess = "original"`` takes that path bit for bit; ``"fast"`` resizes float tensors on the
reward's device. The reference runs float32 on CUDA too (no reduced-precision option to mirror).
"""

from __future__ import annotations

__all__ = ["ImageReward", "MEAN", "STD", "MAX_TOKENS", "preprocess"]

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from miro_core import ConfigError, MiroError, Reward, config, hookimpl

from . import _blip
from ._clip_common import ClipImageTransform, check_inputs, check_preprocess, chunks, torch_dtype
from ._weights import WeightSource, WeightsError, locate, report_ignored, snapshot_revision

log = logging.getLogger(__name__)

MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_TOKENS = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def transform(size: int, mode: str = "original") -> ClipImageTransform:
    """The reference ``_transform(size)``: short side -> ``size`` bicubic, torchvision centre crop (halves to even),
    CLIP mean/std; ``mode`` ``original`` (8-bit PIL, bit for bit) or ``fast`` (float tensors on the device)."""
    return ClipImageTransform(mode="crop", size=int(size), crop_size=(int(size), int(size)), mean=CLIP_MEAN, std=CLIP_STD,
                              crop_rounding="half_even", backend="pil" if mode == "original" else "torch_device")


def preprocess(images: torch.Tensor, size: int, mode: str = "original") -> torch.Tensor:
    """Pixels of ``images`` (``[B, 3, H, W]`` uint8 or float in [0, 1]) as the reference feeds its ViT."""
    return transform(size, mode)(images, device=images.device)


class ImageReward(Reward):
    """ImageReward v1.0 (THUDM): human-preference score from BLIP image-text cross-attention, roughly N(0, 1)."""

    name = "image_reward"
    version = "2"  # 2: torchvision crop rounding, 8-bit PIL preprocessing by default
    uses_text = True
    max_text_tokens = MAX_TOKENS
    accepts_uint8 = True

    @config
    class Config:
        #: Hugging Face repository holding ``ImageReward.pt`` and ``med_config.json``.
        model_id: str = "THUDM/ImageReward"
        #: No commit could be verified offline: ``main`` until pinned (see docs/rewards.md).
        revision: str = "main"
        #: Local directory holding ``ImageReward.pt`` + ``med_config.json``, replacing the hub lookup.
        model_path: str | None = None
        #: The reference BERT tokenizer (``bert-base-uncased``; BLIP's [DEC]/[ENC] tokens are added on load).
        tokenizer_id: str = "google-bert/bert-base-uncased"
        tokenizer_revision: str = "main"
        #: Local directory with the tokenizer's ``vocab.txt`` (``save_pretrained`` layout), replacing the hub lookup.
        tokenizer_path: str | None = None
        #: ViT heads; None = width // 64 (16 for the ViT-L/16 of ImageReward).
        vision_num_heads: int | None = None
        #: ``original``: the reference's 8-bit PIL resize + torchvision centre crop, bit for bit (CPU);
        #: ``fast``: float tensors resized on the reward's device (batched; resampling rounding differs).
        preprocess: str = "original"
        #: Regular expressions of extra checkpoint keys to skip (full-match). By default only legacy buffers
        #: (``position_ids`` / ``token_type_ids`` with their deterministic content) and BLIP's unused
        #: ``vision_proj`` / ``text_proj`` are skipped; any other unknown key is an error naming it.
        ignore_keys: tuple[str, ...] = ()
        cache_dir: str | None = None
        #: Compute dtype of the ViT and BERT: float32, float16 or bfloat16 (the MLP head always runs in float32).
        dtype: str = "float32"
        batch_size: int = 32

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)  # validate early
        check_preprocess(self.config.preprocess, self.name)
        for pattern in self.config.ignore_keys:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"Reward {self.name}: ignore_keys entry {pattern!r} is not a regular expression: {exc}.") from None
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        self.vision = None
        self.text = None
        self.mlp: _blip.ImageRewardMLP | None = None
        self.tokenizer = None
        self.image_size = 224
        self.transform = transform(224, self.config.preprocess)
        self.device = torch.device("cpu")
        self.ignored_keys: dict[str, str] = {}
        self._resolved: dict[str, Any] = {}

    # -- weights --------------------------------------------------------------------------------------
    def weight_sources(self) -> list[WeightSource]:
        """What :meth:`setup` loads (and ``miro rewards download image_reward`` fetches)."""
        c = self.config
        return [
            WeightSource(role="model", repo_id=c.model_id, revision=c.revision,
                         required=("ImageReward.pt", "med_config.json"), local_path=c.model_path,
                         license="Apache-2.0 (THUDM/ImageReward)"),
            WeightSource(role="tokenizer", repo_id=c.tokenizer_id, revision=c.tokenizer_revision,
                         required=("vocab.txt",), optional=("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"),
                         local_path=c.tokenizer_path, license="Apache-2.0 (google-bert/bert-base-uncased)"),
        ]

    def setup(self, device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        if self.vision is not None:
            for m in (self.vision, self.text, self.mlp):
                m.to(device)
            self.device = device
            return
        cfg = self.config
        model_src, tok_src = self.weight_sources()
        model_dir = locate(model_src, cache_dir=cfg.cache_dir, reward=self.name)
        tok_dir = locate(tok_src, cache_dir=cfg.cache_dir, reward=self.name)
        ckpt_path, med_path = model_dir / "ImageReward.pt", model_dir / "med_config.json"
        try:
            med = json.loads(med_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"Reward {self.name}: cannot read {med_path} as JSON ({exc}); re-download med_config.json.") from exc
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:  # unpickling errors surface as RuntimeError
            raise WeightsError(f"Reward {self.name}: cannot load {ckpt_path} ({exc}); re-download ImageReward.pt.") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsError(f"Reward {self.name}: {ckpt_path} holds a {type(state).__name__}, not a state dict.")
        try:
            parts = _blip.convert_imagereward_state_dict(state, self.config.ignore_keys)
        except WeightsError as exc:
            raise WeightsError(f"Reward {self.name}: {ckpt_path}: {exc}") from None
        report_ignored(self.name, str(ckpt_path), parts["ignored"])
        geom = _blip.vision_geometry(state)
        vision = _blip.build_vision_model(geom, cfg.vision_num_heads)
        text = _blip.build_text_model(med, encoder_width=geom.width)
        mlp = _blip.ImageRewardMLP(int(text.config.hidden_size))
        for module, sd, what in ((vision, parts["vision"], "vision"), (text, parts["text"], "text"), (mlp, parts["mlp"], "mlp")):
            try:
                missing, unexpected = module.load_state_dict(sd, strict=False)
            except RuntimeError as exc:  # shape mismatch
                raise WeightsError(
                    f"Reward {self.name}: the {what} weights of {ckpt_path} do not fit the architecture from "
                    f"{med_path} ({exc}). Use the med_config.json that belongs to this checkpoint."
                ) from exc
            if missing or unexpected:
                raise WeightsError(
                    f"Reward {self.name}: {ckpt_path} lacks {what} parameters {missing[:4]} (unexpected: "
                    f"{unexpected[:4]}); the checkpoint is incomplete or from another model."
                )
        tokenizer = self._load_tokenizer(tok_dir)
        if len(tokenizer) > text.config.vocab_size:
            raise WeightsError(
                f"Reward {self.name}: the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the text encoder only "
                f"{text.config.vocab_size}; use bert-base-uncased (the reference tokenizer)."
            )
        dtype = torch_dtype(cfg.dtype)
        self.vision = vision.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.text = text.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.mlp = mlp.to(device=device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = geom.image_size
        self.transform = transform(geom.image_size, cfg.preprocess)
        self.ignored_keys = dict(parts["ignored"])
        self.device = device
        self._resolved = {"model_commit": snapshot_revision(model_dir), "tokenizer_commit": snapshot_revision(tok_dir),
                          "ignored_checkpoint_keys": sorted(self.ignored_keys)}
        log.info("%s: loaded %s (ViT %dx%d, %d px) on %s", self.name, ckpt_path, geom.depth, geom.width, geom.image_size, device)

    def _load_tokenizer(self, path: Path):
        from transformers import BertTokenizer

        try:
            tok = BertTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"Reward {self.name}: cannot load the BERT tokenizer from {path}: {exc}. Re-download it.") from exc
        # As BLIP's init_tokenizer: [DEC] as bos, [ENC] as additional special token (ids 30522, 30523).
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return tok

    def teardown(self) -> None:
        self.vision = self.text = self.mlp = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- scoring --------------------------------------------------------------------------------------
    def text_fits(self, prompt: str) -> bool:
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer(locate(self.weight_sources()[1], cache_dir=self.config.cache_dir, reward=self.name))
        return len(self.tokenizer(prompt)["input_ids"]) <= MAX_TOKENS

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.vision is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = [self._score_batch(images[sl], list(prompts[sl])) for sl in chunks(images.shape[0], self.config.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        dtype = torch_dtype(self.config.dtype)
        pixels = self.transform(images, device=self.device, dtype=dtype)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        hidden = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,  # bidirectional self-attention + cross-attention, as BLIP's "multimodal" mode
        ).last_hidden_state
        raw = self.mlp(hidden[:, 0, :].float()).squeeze(-1)
        return ((raw - MEAN) / STD).float().cpu()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        c = self.config
        meta.update(
            model_id=c.model_id,
            revision=c.revision,
            tokenizer_id=c.tokenizer_id,
            tokenizer_revision=c.tokenizer_revision,
            **self._resolved,
        )
        return meta


@hookimpl
def miro_register_rewards(register):
    register(ImageReward)
