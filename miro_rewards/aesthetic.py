"""LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann et al., 2022).

An MLP 768-1024-128-64-16-1 (dropout between the first layers, no activations: the head is affine) on the
L2-normalised OpenAI CLIP ViT-L/14 image embedding (``CLIPVisionModelWithProjection.image_embeds``), trained
by MSE on SAC + LOGOS + AVA ratings: ``sac+logos+ava1-l14-linearMSE.pth``. Scores are on the rating scale,
about 1..10 (typical photos 4..7). Image only: the caption is ignored.

Preprocessing as the reference (``simple_inference.py``: OpenAI ``clip.load`` preprocess = torchvision
``Resize(224, BICUBIC)`` + ``CenterCrop(224)`` on the PIL image, ``ToTensor``, CLIP mean/std):
``preprocess = "original"`` takes that 8-bit PIL path bit for bit, with torchvision's crop rounding
(``int(round((H - 224) / 2))``, halves to even); ``"fast"`` resizes float tensors on the reward's device.
``original_precision`` runs the reference's CUDA numerics (OpenAI CLIP in float16, the embedding normalised in
float16, the head in float32).
"""

from __future__ import annotations

__all__ = ["AestheticScore", "AestheticMLP"]

import logging
from collections.abc import Sequence
from typing import Any

import torch

from miro_core import ConfigError, MiroError, Reward, config, hookimpl

from ._heads import PreferenceMLP
from ._clip_common import ClipImageTransform, check_inputs, check_preprocess, chunks, dist_version, l2_normalize, openai_fp16_, \
    torch_dtype
from ._weights import WeightSource, WeightsError, check_loading_info, check_model_config, locate, snapshot_revision

log = logging.getLogger(__name__)


AestheticMLP = PreferenceMLP  # the shared head (``_heads.py``); name kept for callers


class AestheticScore(Reward):
    """LAION aesthetic predictor v2: MLP on normalised CLIP ViT-L/14 image embeddings, ~1..10; ignores text."""

    name = "aesthetic"
    version = "2"  # 2: torchvision crop rounding, 8-bit PIL preprocessing by default
    uses_text = False
    max_text_tokens = None
    accepts_uint8 = True

    @config
    class Config:
        #: CLIP vision tower (the full CLIPModel checkpoint; only the vision weights are used).
        clip_model_id: str = "openai/clip-vit-large-patch14"
        clip_revision: str = "32bd64288804d66eefd0ccbe215aa642df71cc41"
        #: Local ``save_pretrained`` directory of a CLIP (or CLIP vision) model, replacing the hub lookup.
        clip_path: str | None = None
        #: Repository and file of the LAION MLP head.
        head_repo: str = "camenduru/improved-aesthetic-predictor"
        #: No commit could be verified offline: ``main`` until pinned (see docs/rewards.md).
        head_revision: str = "main"
        head_filename: str = "sac+logos+ava1-l14-linearMSE.pth"
        #: Local ``.pth`` file of the head, replacing the hub lookup.
        head_path: str | None = None
        #: ``original``: the reference's 8-bit PIL resize + torchvision centre crop, bit for bit (CPU);
        #: ``fast``: float tensors resized on the reward's device (batched; resampling rounding differs).
        preprocess: str = "original"
        #: On CUDA, the reference's precision: OpenAI ``clip`` runs the ViT in float16 (LayerNorms in float32) and
        #: the embedding is normalised in float16 before the float32 head. No effect on CPU, where the reference
        #: runs float32. Needs ``dtype = "float32"``.
        original_precision: bool = False
        cache_dir: str | None = None
        dtype: str = "float32"
        batch_size: int = 32

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)
        check_preprocess(self.config.preprocess, self.name)
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        if self.config.original_precision and self.config.dtype != "float32":
            raise ConfigError(f"Reward {self.name}: original_precision sets the precision itself; leave dtype at float32 "
                              f"(got {self.config.dtype!r}).")
        self.vision = None
        self.head: AestheticMLP | None = None
        # OpenAI CLIP: 224 bicubic shortest side, torchvision centre crop (halves to even), CLIP mean/std
        self.transform = ClipImageTransform(crop_rounding="half_even",
                                            backend="pil" if self.config.preprocess == "original" else "torch_device")
        self.device = torch.device("cpu")
        self._fp16 = False
        self._resolved: dict[str, Any] = {}

    def weight_sources(self) -> list[WeightSource]:
        c = self.config
        return [
            WeightSource(role="clip", repo_id=c.clip_model_id, revision=c.clip_revision,
                         required=("config.json", "model.safetensors|pytorch_model.bin"), local_path=c.clip_path,
                         license="MIT (OpenAI CLIP)"),
            WeightSource(role="head", repo_id=c.head_repo, revision=c.head_revision, required=(c.head_filename,),
                         snapshot=False, local_path=c.head_path,
                         license="Apache-2.0 (christophschuhmann/improved-aesthetic-predictor)"),
        ]

    @staticmethod
    def load_head(path: str, reward: str = "aesthetic") -> AestheticMLP:
        """Load the LAION ``.pth`` (saved on cuda: mapped to CPU; tensors only, no pickled code)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:  # pickle errors surface as UnpicklingError (RuntimeError)
            raise WeightsError(f"Reward {reward}: cannot read the aesthetic head {path}: {exc}. Re-download it.") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or "layers.0.weight" not in state:
            keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
            raise WeightsError(
                f"Reward {reward}: {path} is not a LAION aesthetic head state dict (expected keys layers.0.weight ... "
                f"layers.7.bias, got {keys})."
            )
        head = AestheticMLP(int(state["layers.0.weight"].shape[1]))
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"Reward {reward}: {path} does not match the 768-1024-128-64-16-1 head: {exc}") from exc
        return head.eval()

    @staticmethod
    def _vision_config(clip_dir, model_type: str):
        """The vision config with the projection width of the full CLIP checkpoint.

        transformers 5 builds ``CLIPVisionModelWithProjection`` from a ``CLIPModel`` checkpoint with the vision
        sub-config's own ``projection_dim`` (default 512), not the model's: copy the top-level value over.
        """
        from transformers import CLIPConfig, CLIPVisionConfig

        if model_type == "clip_vision_model":
            return CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)
        full = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
        vcfg = full.vision_config
        vcfg.projection_dim = full.projection_dim
        return vcfg

    def setup(self, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPVisionModelWithProjection

        device = torch.device(device)
        if self.vision is not None:
            if (device.type == "cuda") != self._fp16:  # precision depends on the device: reload
                self.teardown()
            else:
                self.vision.to(device)
                self.head.to(device)  # type: ignore[union-attr]
                self.device = device
                return
        clip_src, head_src = self.weight_sources()
        clip_dir = locate(clip_src, cache_dir=self.config.cache_dir, reward=self.name)
        head_file = locate(head_src, cache_dir=self.config.cache_dir, reward=self.name)
        cfg = check_model_config(clip_dir, expected_model_types=("clip", "clip_vision_model"), reward=self.name)
        head = self.load_head(str(head_file), self.name)
        try:
            vcfg = self._vision_config(clip_dir, cfg["model_type"])
            vision, info = CLIPVisionModelWithProjection.from_pretrained(
                str(clip_dir), config=vcfg, local_files_only=True, dtype=torch_dtype(self.config.dtype), output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"Reward {self.name}: cannot load the CLIP vision tower from {clip_dir}: {exc}.") from exc
        ignored = check_loading_info(info, what=f"CLIPVisionModelWithProjection from {clip_dir}", reward=self.name,
                                     ignore_unexpected=("text_model.", "text_projection.", "logit_scale"))
        proj = int(vision.config.projection_dim)
        if proj != head.layers[0].in_features:
            raise WeightsError(
                f"Reward {self.name}: the CLIP model {clip_dir} has {proj}-d image embeddings but the head expects "
                f"{head.layers[0].in_features}; the LAION head needs CLIP ViT-L/14 (768-d)."
            )
        self._fp16 = bool(self.config.original_precision and device.type == "cuda")
        if self._fp16:
            openai_fp16_(vision)
        self.vision = vision.eval().requires_grad_(False).to(device)
        self.head = head.requires_grad_(False).to(device)
        self.device = device
        self._resolved = {"clip_commit": snapshot_revision(clip_dir), "head_commit": snapshot_revision(head_file),
                          "ignored_checkpoint_keys": ignored}

    def teardown(self) -> None:
        self.vision = None
        self.head = None

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 CLIP image embeddings ``[B, 768]`` of one batch."""
        assert self.vision is not None
        if self._fp16:  # the reference on CUDA: float16 ViT and a float16 normalisation (numpy on the fp16 features)
            emb = self.vision(pixel_values=self.transform(images, device=self.device, dtype=torch.float16)).image_embeds.half()
            return (emb / emb.norm(dim=-1, keepdim=True)).float()
        px = self.transform(images, device=self.device, dtype=torch_dtype(self.config.dtype))
        return l2_normalize(self.vision(pixel_values=px).image_embeds)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.vision is None or self.head is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = [self.head(self.image_embeds(images[sl])).squeeze(-1).float().cpu() for sl in chunks(images.shape[0], self.config.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        c = self.config
        meta.update(model_id=c.clip_model_id, revision=c.clip_revision, head=f"{c.head_repo}/{c.head_filename}",
                    head_revision=c.head_revision, library=f"transformers {dist_version('transformers')}", **self._resolved)
        return meta


@hookimpl
def miro_register_rewards(register):
    register(AestheticScore)
