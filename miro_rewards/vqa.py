"""VQAScore (Lin et al., ECCV 2024) with a vision-language model that plain transformers loads.

    score = P("Yes" | image, 'Does this figure show "{caption}"? Please answer yes or no.')

computed as the reference ``t2v_metrics`` does for its transformers VLMs (PaliGemma, Qwen2-VL / Qwen2.5-VL):
one forward pass, softmax over the whole vocabulary of the next-token logits at the answer position (the
token after the prompt; for chat models after the assistant generation prompt), probability of the single
token ``"Yes"``. Only that token is counted: ``"yes"``, ``" Yes"`` and other variants are *not* summed (as
in the reference). Scores are probabilities in [0, 1].

Families (auto-detected from ``config.json``'s ``model_type``):

* ``paligemma``: ``PaliGemmaForConditionalGeneration``; prompt ``<image>`` + question (the processor adds
  ``<bos>`` and the trailing newline), prefix attention through ``token_type_ids``.
* ``qwen2_5_vl`` / ``qwen2_vl``: ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen2VLForConditionalGeneration``;
  the processor's chat template with one user turn (image, question) and the assistant generation prompt.

Batches are right-padded; the logits are read at each row's last real token (``logits_to_keep`` with the
distinct answer positions, so the ``[B, L, V]`` logits are never materialised).

Images reach the model's own processor as the 8-bit RGB PIL images the reference opens from files (a uint8
input as is; a float input quantised with ``round(x * 255)``, the exact inverse of ``u8 / 255``). The
processor runs its PIL backend by default (``image_backend = "pil"``: the transformers-4 "slow" image
processors the reference used; transformers 5 defaults to a torchvision backend that resamples differently).
"""

from __future__ import annotations

__all__ = ["VQAScore", "FAMILIES", "DEFAULT_QUESTION"]

import logging
from collections.abc import Sequence
from typing import Any

import torch

from miro_core import ConfigError, MiroError, Reward, config, hookimpl

from ._clip_common import check_inputs, chunks, torch_dtype
from ._pixels import to_pil_images
from ._weights import WeightSource, WeightsError, check_loading_info, check_model_config, locate, snapshot_revision

log = logging.getLogger(__name__)

DEFAULT_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
#: model_type -> transformers class name.
FAMILIES = {
    "paligemma": "PaliGemmaForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


#: Sharded-checkpoint file names fetched by ``miro rewards download`` when the repository has them.
_SHARDS = tuple(f"model-{i:05d}-of-{n:05d}.safetensors" for n in range(2, 9) for i in range(1, n + 1))


#: Image-processor backends of transformers 5 (``AutoProcessor.from_pretrained(backend=...)``).
IMAGE_BACKENDS = ("pil", "torchvision")


def _to_pil(images: torch.Tensor) -> list:
    """8-bit RGB PIL images of a uint8 / float ``[B, 3, H, W]`` batch (see the module doc)."""
    return to_pil_images(images)


class VQAScore(Reward):
    """VQAScore: probability that a VLM answers "Yes" to 'Does this figure show "{caption}"?', in [0, 1]."""

    name = "vqa"
    version = "2"  # 2: the processor's PIL backend by default (the reference's image processing)
    uses_text = True
    max_text_tokens = None
    accepts_uint8 = True

    @config
    class Config:
        #: A transformers VLM repository (PaliGemma or Qwen2/2.5-VL family).
        model_id: str = "Qwen/Qwen2.5-VL-7B-Instruct"
        #: No commit could be verified offline: ``main`` until pinned (see docs/rewards.md).
        revision: str = "main"
        #: Local ``save_pretrained`` directory (model + processor), replacing the hub lookup.
        model_path: str | None = None
        #: ``auto`` (from config.json) or one of paligemma, qwen2_5_vl, qwen2_vl.
        family: str = "auto"
        question_template: str = DEFAULT_QUESTION
        #: The answer token whose probability is the score (must be one token of the model's tokenizer).
        answer: str = "Yes"
        #: Image-processor backend: ``pil`` (the reference's processors: PIL resampling in 8 bit) or
        #: ``torchvision`` (transformers 5's default; faster, resamples differently).
        image_backend: str = "pil"
        cache_dir: str | None = None
        dtype: str = "bfloat16"
        batch_size: int = 8

    def __init__(self, config: Any = None):
        super().__init__(config)
        torch_dtype(self.config.dtype)
        if self.config.batch_size < 1:
            raise ConfigError(f"Reward {self.name}: batch_size must be >= 1, got {self.config.batch_size}.")
        if self.config.family != "auto" and self.config.family not in FAMILIES:
            raise ConfigError(f"Reward {self.name}: family {self.config.family!r} is not auto or one of {', '.join(FAMILIES)}.")
        if self.config.image_backend not in IMAGE_BACKENDS:
            raise ConfigError(f"Reward {self.name}: image_backend {self.config.image_backend!r} is not one of "
                              f"{', '.join(IMAGE_BACKENDS)}.")
        if "{}" not in self.config.question_template:
            raise ConfigError(f"Reward {self.name}: question_template must contain '{{}}' where the caption goes.")
        self.model = None
        self.processor = None
        self.family: str | None = None
        self.answer_id: int | None = None
        self.device = torch.device("cpu")
        self._resolved: dict[str, Any] = {}

    def weight_sources(self) -> list[WeightSource]:
        c = self.config
        return [
            WeightSource(
                role="model", repo_id=c.model_id, revision=c.revision,
                required=("config.json", "model.safetensors|model.safetensors.index.json|pytorch_model.bin"),
                optional=("model.safetensors.index.json", "generation_config.json", "processor_config.json",
                          "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                          "special_tokens_map.json", "chat_template.json", "chat_template.jinja", "vocab.json",
                          "merges.txt", "added_tokens.json", "video_preprocessor_config.json", *_SHARDS),
                local_path=c.model_path, license="see the model card (Qwen2.5-VL: Apache-2.0 / Qwen; PaliGemma: Gemma terms)",
            )
        ]

    # -- loading -------------------------------------------------------------------------------------
    def setup(self, device: str | torch.device = "cpu") -> None:
        import transformers
        from transformers import AutoImageProcessor, AutoProcessor

        device = torch.device(device)
        if self.model is not None:
            if device != self.device:
                self.model.to(device)
                self.device = device
            return
        model_dir = locate(self.weight_sources()[0], cache_dir=self.config.cache_dir, reward=self.name)
        cfg = check_model_config(model_dir, expected_model_types=tuple(FAMILIES), reward=self.name)
        family = cfg["model_type"]
        if self.config.family != "auto" and self.config.family != family:
            raise WeightsError(
                f"Reward {self.name}: family={self.config.family!r} but {model_dir}/config.json is a {family!r} model; "
                "set family to 'auto' or to the model's family."
            )
        cls = getattr(transformers, FAMILIES[family])
        try:
            model, info = cls.from_pretrained(str(model_dir), local_files_only=True, dtype=torch_dtype(self.config.dtype),
                                              output_loading_info=True)
            processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
            if getattr(processor, "image_processor", None) is not None:  # only the image processor has both backends
                processor.image_processor = AutoImageProcessor.from_pretrained(
                    str(model_dir), local_files_only=True, backend=self.config.image_backend)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"Reward {self.name}: cannot load the {family} model or its processor from {model_dir}: {exc}.") from exc
        ignored = check_loading_info(info, what=f"{cls.__name__} from {model_dir}", reward=self.name)
        ip = getattr(processor, "image_processor", None)
        log.info("%s: image processor %s", self.name, type(ip).__name__)
        tok = processor.tokenizer
        ids = tok.encode(self.config.answer, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tok.unk_token_id:
            raise WeightsError(
                f"Reward {self.name}: the answer {self.config.answer!r} is {len(ids)} token(s) {ids} for this tokenizer; "
                "VQAScore needs a single known token. Set `answer` to the model's single-token yes (e.g. 'Yes')."
            )
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.model = model.eval().requires_grad_(False).to(device)
        self.processor = processor
        self.family = family
        self.answer_id = int(ids[0])
        self.device = device
        self._resolved = {"model_commit": snapshot_revision(model_dir), "family": family,
                          "image_processor": type(ip).__name__, "ignored_checkpoint_keys": ignored}
        log.info("%s: loaded %s (%s, %s) on %s", self.name, model_dir, family, self.config.dtype, device)

    def teardown(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- scoring -------------------------------------------------------------------------------------
    def prompt(self, caption: str) -> str:
        """The text fed to the processor for one caption (before image-token expansion)."""
        question = self.config.question_template.format(caption)
        if self.family == "paligemma":
            return f"{self.processor.image_token}{question}"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def inputs(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Processor outputs for one batch (right-padded), on the reward's device."""
        batch = self.processor(text=[self.prompt(p) for p in prompts], images=_to_pil(images), return_tensors="pt",
                               padding=True)
        batch = {k: v for k, v in batch.items() if k != "labels"}
        out = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name)
        if self.model is None:
            raise MiroError(f"Reward {self.name}: call setup(device) before score().")
        out = [self._score_batch(images[sl], list(prompts[sl])) for sl in chunks(images.shape[0], self.config.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        inputs = self.inputs(images, prompts)
        last = inputs["attention_mask"].sum(-1) - 1  # right padding: answer position = last real token
        keep, row_slot = torch.unique(last, return_inverse=True)
        logits = self.model(**inputs, logits_to_keep=keep, use_cache=False).logits  # [B, K, V]
        at_answer = logits[torch.arange(logits.shape[0], device=logits.device), row_slot]
        probs = torch.softmax(at_answer.float(), dim=-1)
        return probs[:, self.answer_id].cpu()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(model_id=self.config.model_id, revision=self.config.revision, answer=self.config.answer,
                    question_template=self.config.question_template, **self._resolved)
        return meta


@hookimpl
def miro_register_rewards(register):
    register(VQAScore)
