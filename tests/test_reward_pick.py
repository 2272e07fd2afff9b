"""PickScore reward: tiny transformers CLIPModel + a separate processor repository, real loader, formula parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.testing import RewardContract
from miro_rewards._weights import WeightsError, is_present
from miro_rewards.testing import FAKE_SHA, save_tiny_clip, save_tiny_processor, write_dir_to_hub_cache

MODEL = "yuvalkirstain/PickScore_v1"
PROC = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROC_SHA = "1" * 40
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.26, 0.27)  # distinct from the model repo's defaults: the processor repo must win


@pytest.fixture(scope="module")
def pick_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pick")
    model_dir = save_tiny_clip(root / "model", seed=0, with_processor=False, logit_scale=50.0)
    proc_dir = save_tiny_processor(root / "proc", image_mean=MEAN, image_std=STD)
    cache = root / "cache"
    write_dir_to_hub_cache(cache, MODEL, model_dir, revision=FAKE_SHA)
    write_dir_to_hub_cache(cache, PROC, proc_dir, revision=PROC_SHA)
    return {"cache": cache, "model": model_dir, "proc": proc_dir}


def _options(files, **kw):
    return {"cache_dir": str(files["cache"]), "revision": FAKE_SHA, "processor_revision": PROC_SHA, **kw}


class TestPickContract(RewardContract):
    reward_name = "pick"

    @pytest.fixture(autouse=True)
    def _files(self, pick_files):
        self.files = pick_files

    def make_reward(self, tmp_path):
        return registry("rewards").create("pick", _options(self.files, batch_size=2))


@pytest.fixture(scope="module")
def reward(pick_files):
    r = registry("rewards").create("pick", _options(pick_files))
    r.setup("cpu")
    return r


def _uint8_images(n, size=224, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_score_is_logit_scale_times_cosine(reward, pick_files):
    """Independent recomputation: HF CLIPModel forward on the HF processor output; logits_per_image diagonal."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(pick_files["model"])).eval()
    proc = CLIPProcessor.from_pretrained(str(pick_files["proc"]))
    prompts = ["a red circle above a blue square", "two green triangles", "a photo of a cat"]
    arrays = _uint8_images(3)
    with torch.no_grad():
        inputs = proc(images=arrays, text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model(**inputs)
        expected = out.logits_per_image.diagonal()
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        by_hand = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(expected, by_hand)
    assert abs(float(model.logit_scale.detach().exp()) - 50.0) < 1e-3
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    torch.testing.assert_close(reward.score(images, prompts), expected, atol=1e-4, rtol=1e-4)


def test_preprocessing_follows_processor_repo(reward, pick_files):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(str(pick_files["proc"]))
    assert reward.transform.mean == MEAN and reward.transform.std == STD
    from PIL import Image

    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, size=(15, 30, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((300, 150), Image.BICUBIC)).copy()  # smooth content; needs resize + centre crop
    ref = proc(images=[arr], return_tensors="pt")["pixel_values"][0]
    ours = reward.transform(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # same geometry and kernel; the processor rounds to uint8 after resizing while we stay in float
    assert (ours - ref).abs().max() < 0.03


def test_text_fits_uses_clip_tokenizer(reward):
    assert reward.text_fits("a photo of a cat")
    assert reward.text_fits(" ".join(["cat"] * 75))  # 75 + start + end = 77
    assert not reward.text_fits(" ".join(["cat"] * 76))


def test_long_prompt_is_truncated_not_failing(reward):
    s = reward.score(torch.rand(1, 3, 64, 64), [" ".join(["cat"] * 200)])
    assert torch.isfinite(s).all()


def test_metadata_names_both_repositories(reward):
    meta = reward.metadata()
    json.dumps(meta)
    assert meta["model_id"] == MODEL and meta["processor_id"] == PROC
    assert meta["model_commit"] == FAKE_SHA and meta["processor_commit"] == PROC_SHA


def test_missing_processor_files(tmp_path, pick_files):
    cache = tmp_path / "cache"
    write_dir_to_hub_cache(cache, MODEL, pick_files["model"], revision=FAKE_SHA)
    r = registry("rewards").create("pick", {"cache_dir": str(cache), "revision": FAKE_SHA})
    with pytest.raises(WeightsError, match=r"processor.*preprocessor_config\.json.*laion/CLIP-ViT-H-14.*miro rewards download pick"):
        r.setup("cpu")


@pytest.mark.real_weights
def test_real_pickscore():
    r = registry("rewards").create("pick")
    if any(is_present(s) is None for s in r.weight_sources()):
        pytest.skip("PickScore_v1 / CLIP-H processor not in the Hugging Face cache (miro rewards download pick)")
    r.setup("cuda" if torch.cuda.is_available() else "cpu")
    s = r.score(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)), ["noise", "a cat"])
    assert ((s > 5) & (s < 35)).all()
