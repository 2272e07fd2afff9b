"""OpenAI CLIP score (evaluation only): tiny CLIPModel, local save_pretrained dir, 100 * max(cos, 0) parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.testing import RewardContract
from miro_rewards._weights import is_present
from miro_rewards.testing import save_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("oclip") / "model", seed=2)


class TestOpenAIClipContract(RewardContract):
    reward_name = "openai_clip"

    @pytest.fixture(autouse=True)
    def _files(self, clip_dir):
        self.clip_dir = clip_dir

    def make_reward(self, tmp_path):
        return registry("rewards").create("openai_clip", {"model_path": str(self.clip_dir), "batch_size": 2})


def test_flags():
    cls = registry("rewards").get("openai_clip").cls
    assert cls.evaluation_only is True and cls.uses_text and cls.max_text_tokens == 77


def test_score_is_100_times_clamped_cosine(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    r = registry("rewards").create("openai_clip", {"model_path": str(clip_dir)})
    r.setup("cpu")
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    proc = CLIPProcessor.from_pretrained(str(clip_dir))
    prompts = [f"prompt number {i}: a {c} object" for i, c in enumerate(["red", "blue", "green", "tiny", "huge", "odd"])]
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for _ in prompts]
    with torch.no_grad():
        out = model(**proc(images=arrays, text=prompts, padding=True, return_tensors="pt"))
        cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    expected = 100.0 * torch.clamp(cos, min=0.0)
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    got = r.score(images, prompts)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    assert (got >= 0).all() and (got <= 100).all()
    # the clamp itself (random tiny models give cosines of either sign)
    torch.testing.assert_close(r.formula(torch.tensor([-0.3, 0.0, 0.25]), torch.tensor(100.0)), torch.tensor([0.0, 0.0, 25.0]))


@pytest.mark.real_weights
def test_real_openai_clip():
    r = registry("rewards").create("openai_clip")
    if is_present(r.weight_sources()[0]) is None:
        pytest.skip("openai/clip-vit-large-patch14 not in the Hugging Face cache (miro rewards download openai_clip)")
    r.setup("cuda" if torch.cuda.is_available() else "cpu")
    s = r.score(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)), ["noise", "a cat"])
    assert ((s >= 0) & (s < 50)).all()
