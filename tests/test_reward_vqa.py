"""VQAScore with tiny random VLMs of the real classes (PaliGemma, Qwen2.5-VL), tokenizer/processor built offline,
saved with save_pretrained and loaded through the reward's real loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from miro_core import ConfigError, MiroError, registry
from miro_core.testing import RewardContract

WORDS = ('Does this figure show a red circle above blue square two green triangles photo of cat Please answer yes '
         'or no Yes No " ? .').split()


def _word_tokenizer(specials: list[str], **kw):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials, *dict.fromkeys(WORDS)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **kw), vocab


def make_paligemma(d: Path, seed: int = 0) -> Path:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tok, vocab = _word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos_token="<bos>", eos_token="<eos>",
                                 pad_token="<pad>")
    ip = SiglipImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ip.image_seq_length = 4
    PaliGemmaProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    cfg = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text_config=dict(model_type="gemma", vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         bos_token_id=2, eos_token_id=1, pad_token_id=0),
        image_token_index=vocab["<image>"], projection_dim=16, hidden_size=16)
    torch.manual_seed(seed)
    PaliGemmaForConditionalGeneration(cfg).save_pretrained(d)
    return d


QWEN_SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "user", "assistant"]
QWEN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def make_qwen25vl(d: Path, seed: int = 0) -> Path:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok, vocab = _word_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=QWEN_SPECIALS[1:8])
    ip = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2, temporal_patch_size=2)
    Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=QWEN_TEMPLATE).save_pretrained(d)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=None, eos_token_id=vocab["<|im_end|>"],
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"])
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def paligemma_dir(tmp_path_factory):
    return make_paligemma(tmp_path_factory.mktemp("paligemma"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_qwen25vl(tmp_path_factory.mktemp("qwen25vl"))


def _reward(path: Path, **kw):
    r = registry("rewards").create("vqa", {"model_path": str(path), "dtype": "float32", **kw})
    r.setup("cpu")
    return r


class TestVQAPaliGemmaContract(RewardContract):
    reward_name = "vqa"
    atol = 1e-5

    @pytest.fixture(autouse=True)
    def _dir(self, paligemma_dir):
        self._path = paligemma_dir

    def make_reward(self, tmp_path):
        return registry("rewards").create("vqa", {"model_path": str(self._path), "dtype": "float32"})


class TestVQAQwen25VLContract(RewardContract):
    reward_name = "vqa"
    atol = 1e-5

    @pytest.fixture(autouse=True)
    def _dir(self, qwen_dir):
        self._path = qwen_dir

    def make_reward(self, tmp_path):
        return registry("rewards").create("vqa", {"model_path": str(self._path), "dtype": "float32", "batch_size": 2})


def _independent(model, processor, image, text: str, answer_id: int) -> float:
    """One unpadded sample through the raw model: softmax of the full logits at the last position."""
    batch = processor(text=[text], images=[image], return_tensors="pt")
    batch.pop("labels", None)
    with torch.no_grad():
        logits = model(**batch).logits  # [1, L, V], all positions
    return float(torch.softmax(logits[0, -1].double(), dim=-1)[answer_id])


@pytest.mark.parametrize("which", ["paligemma", "qwen"])
def test_formula_parity_and_prompt(which, paligemma_dir, qwen_dir):
    from transformers import AutoProcessor

    path = paligemma_dir if which == "paligemma" else qwen_dir
    reward = _reward(path)
    assert reward.family == ("paligemma" if which == "paligemma" else "qwen2_5_vl")
    tok = reward.processor.tokenizer
    assert reward.answer_id == tok.convert_tokens_to_ids("Yes") != tok.convert_tokens_to_ids("yes")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 64, generator=g)
    captions = ["a red circle", "two green triangles above a blue square", "a photo of a cat"]
    got = reward.score(images, captions)
    assert ((got >= 0) & (got <= 1)).all() and got.std() / got.mean() > 1e-3  # input-dependent

    processor = AutoProcessor.from_pretrained(str(path))
    from miro_rewards.vqa import _to_pil

    pils = _to_pil(images)
    for i, cap in enumerate(captions):
        question = f'Does this figure show "{cap}"? Please answer yes or no.'
        if which == "paligemma":
            text = "<image>" + question
            ids = processor(text=[text], images=[pils[i]], return_tensors="pt")["input_ids"][0].tolist()
            assert ids[4] == tok.convert_tokens_to_ids("<bos>")  # 4 image tokens, then <bos> + question
        else:
            text = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + question
                    + "<|im_end|>\n<|im_start|>assistant\n")
            assert reward.prompt(cap) == text
        want = _independent(reward.model, processor, pils[i], text, reward.answer_id)
        assert abs(float(got[i]) - want) <= 1e-4 * want + 1e-7


@pytest.mark.parametrize("which", ["paligemma", "qwen"])
def test_pixels_are_the_reference_processors(which, paligemma_dir, qwen_dir, tmp_path):
    """The reference opens image files and runs the model's PIL ("slow") image processor: our inputs carry exactly
    those pixel values, from uint8 and from float (u8 / 255) batches; transformers 5's torchvision backend is an
    option."""
    from PIL import Image
    from transformers import AutoImageProcessor

    path = paligemma_dir if which == "paligemma" else qwen_dir
    reward = _reward(path)
    assert reward.accepts_uint8
    assert type(reward.processor.image_processor).__name__.endswith("Pil")
    assert reward.metadata()["image_processor"] == type(reward.processor.image_processor).__name__
    fast = _reward(path, image_backend="torchvision")
    assert not type(fast.processor.image_processor).__name__.endswith("Pil")
    rng = np.random.default_rng(2)
    arrays = rng.integers(0, 256, size=(2, 45, 61, 3), dtype=np.uint8)
    opened = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        opened.append(Image.open(tmp_path / f"{i}.png").convert("RGB"))
    ref = AutoImageProcessor.from_pretrained(str(path), backend="pil")(images=opened, return_tensors="pt")["pixel_values"]
    u8 = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    captions = ["a red circle", "a photo of a cat"]
    ours = reward.inputs(u8, captions)
    assert torch.equal(ours["pixel_values"], ref)
    twin = reward.inputs(u8.float() / 255.0, captions)
    assert all(torch.equal(ours[k], twin[k]) for k in ours)
    assert torch.equal(reward.score(u8, captions), reward.score(u8.float() / 255.0, captions))
    assert not torch.equal(fast.inputs(u8, captions)["pixel_values"], ref)  # the backends really differ
    with pytest.raises(ConfigError, match="image_backend"):
        registry("rewards").create("vqa", {"image_backend": "cv2"})


def test_answer_must_be_one_token(paligemma_dir):
    r = registry("rewards").create("vqa", {"model_path": str(paligemma_dir), "dtype": "float32", "answer": "Yes No"})
    with pytest.raises(MiroError, match="single known token"):
        r.setup("cpu")


def test_config_errors():
    with pytest.raises(ConfigError):
        registry("rewards").create("vqa", {"family": "llava"})
    with pytest.raises(ConfigError):
        registry("rewards").create("vqa", {"question_template": "no slot"})


def test_loading_errors(tmp_path, paligemma_dir):
    with pytest.raises(MiroError, match="does not exist"):
        registry("rewards").create("vqa", {"model_path": str(tmp_path / "missing")}).setup("cpu")
    with pytest.raises(MiroError, match="miro rewards download vqa"):
        registry("rewards").create("vqa", {"cache_dir": str(tmp_path / "hub")}).setup("cpu")
    with pytest.raises(MiroError, match="family="):
        _reward(paligemma_dir, family="qwen2_5_vl")
    # a model of another type, and remote code, are refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(MiroError, match="model_type 'llava'"):
        registry("rewards").create("vqa", {"model_path": str(other)}).setup("cpu")
    (other / "config.json").write_text(json.dumps({"model_type": "paligemma", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(MiroError, match="remote code"):
        registry("rewards").create("vqa", {"model_path": str(other)}).setup("cpu")


@pytest.mark.real_weights
def test_real_model_if_cached():
    from miro_rewards._weights import is_present

    reward = registry("rewards").create("vqa", {"dtype": "bfloat16" if torch.cuda.is_available() else "float32"})
    if not is_present(reward.weight_sources()[0]):
        pytest.skip(f"{reward.config.model_id} not in the Hugging Face cache")
    reward.setup("cuda" if torch.cuda.is_available() else "cpu")
    img = torch.zeros(1, 3, 224, 224)
    img[:, 0] = 1.0  # a plain red image
    red, blue = reward.score(torch.cat([img, img]), ["a red image", "a blue image"])
    assert 0 <= float(blue) < float(red) <= 1
