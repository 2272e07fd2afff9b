"""Aesthetic reward: tiny CLIP (768-d projection) + LAION-format head in the hub cache; crop and formula parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.testing import RewardContract
from miro_rewards._clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from miro_rewards._weights import WeightsError, is_present
from miro_rewards.testing import FAKE_SHA, save_tiny_aesthetic_head, save_tiny_clip, write_dir_to_hub_cache, write_hub_cache

CLIP = "openai/clip-vit-large-patch14"
HEAD = "camenduru/improved-aesthetic-predictor"
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


@pytest.fixture(scope="module")
def aes_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aes")
    clip_dir = save_tiny_clip(root / "clip", seed=3, projection_dim=768)
    head = save_tiny_aesthetic_head(root / "head" / HEAD_FILE, seed=3)
    cache = root / "cache"
    write_dir_to_hub_cache(cache, CLIP, clip_dir, revision=FAKE_SHA)
    write_hub_cache(cache, HEAD, {HEAD_FILE: head}, revision="2" * 40)  # refs/main -> it (default revision "main")
    return {"cache": cache, "clip": clip_dir, "head": head}


def _options(files, **kw):
    return {"cache_dir": str(files["cache"]), "clip_revision": FAKE_SHA, **kw}


class TestAestheticContract(RewardContract):
    reward_name = "aesthetic"

    @pytest.fixture(autouse=True)
    def _files(self, aes_files):
        self.files = aes_files

    def make_reward(self, tmp_path):
        return registry("rewards").create("aesthetic", _options(self.files, batch_size=2))


@pytest.fixture(scope="module")
def reward(aes_files):
    r = registry("rewards").create("aesthetic", _options(aes_files))
    r.setup("cpu")
    return r


def test_flags_and_text_is_ignored(reward):
    assert reward.uses_text is False and reward.max_text_tokens is None
    img = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reward.score(img, ["a", "b"]), reward.score(img, ["something else", ""]))


def test_centre_crop(reward):
    """Short side already 224: no resize, the centre 224x224 window of a 224x448 image is kept exactly; on a 224x451
    image the offset 113.5 rounds to 114 as torchvision's CenterCrop does (halves to even), not 113."""
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (1, 3, 224, 451), generator=g, dtype=torch.uint8)
    px = reward.transform(img[..., :448])
    assert torch.equal(px, normalize(img[..., 112:336].float() / 255, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    assert torch.equal(reward.transform(img), normalize(img[..., 114:338].float() / 255, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    img = img[..., :448].float() / 255
    # changing only the cropped-away borders does not change the score
    img2 = img.clone()
    img2[..., :112] = 0.0
    img2[..., 336:] = 1.0
    torch.testing.assert_close(reward.score(img, ["x"]), reward.score(img2, ["x"]))


def test_score_matches_independent_computation(reward, aes_files):
    """HF CLIPModel image features (processor output), L2-normalised, through a plain nn.Sequential head."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(aes_files["clip"])).eval()
    proc = CLIPProcessor.from_pretrained(str(aes_files["clip"]))
    state = torch.load(aes_files["head"], map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        emb = model.get_image_features(**proc(images=arrays, return_tensors="pt")).pooler_output
        x = emb / emb.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):  # affine layers in sequence, no activations (dropout is identity at eval)
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    torch.testing.assert_close(reward.score(images, [""] * 3), x[:, 0], atol=1e-5, rtol=1e-4)


def test_local_paths_and_metadata(aes_files):
    r = registry("rewards").create("aesthetic", {"clip_path": str(aes_files["clip"]), "head_path": str(aes_files["head"])})
    r.setup("cpu")
    assert r.score(torch.rand(1, 3, 40, 50), [""]).shape == (1,)
    meta = r.metadata()
    assert meta["model_id"] == CLIP and meta["head"].endswith(HEAD_FILE) and meta["clip_commit"] is None


def test_loading_errors(tmp_path, aes_files):
    r = registry("rewards").create("aesthetic", {"cache_dir": str(tmp_path / "empty")})
    with pytest.raises(WeightsError, match=r"config\.json.*openai/clip-vit-large-patch14.*miro rewards download aesthetic"):
        r.setup("cpu")
    # a head with the wrong layout
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, bad)
    r = registry("rewards").create("aesthetic", {"clip_path": str(aes_files["clip"]), "head_path": str(bad)})
    with pytest.raises(WeightsError, match="layers.0.weight"):
        r.setup("cpu")
    # a CLIP whose embeddings are not 768-d cannot feed the LAION head
    small = save_tiny_clip(tmp_path / "clip16", projection_dim=16, with_processor=False)
    r = registry("rewards").create("aesthetic", {"clip_path": str(small), "head_path": str(aes_files["head"])})
    with pytest.raises(WeightsError, match="768"):
        r.setup("cpu")
    # a missing local file
    r = registry("rewards").create("aesthetic", {"clip_path": str(aes_files["clip"]), "head_path": str(tmp_path / "nope.pth")})
    with pytest.raises(WeightsError, match="does not exist"):
        r.setup("cpu")


def test_original_precision(aes_files):
    """The reference runs OpenAI CLIP in float16 on CUDA (LayerNorms in float32) and normalises the float16
    embedding; on CPU it runs float32, so the option changes nothing there."""
    import copy

    from miro_core import ConfigError
    from miro_rewards._clip_common import openai_fp16_

    with pytest.raises(ConfigError, match="original_precision.*dtype"):
        registry("rewards").create("aesthetic", _options(aes_files, original_precision=True, dtype="bfloat16"))
    r = registry("rewards").create("aesthetic", _options(aes_files, original_precision=True))
    r.setup("cpu")
    plain = registry("rewards").create("aesthetic", _options(aes_files))
    plain.setup("cpu")
    x = torch.randint(0, 256, (3, 3, 230, 260), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    want = plain.score(x, [""] * 3)
    assert not r._fp16 and torch.equal(r.score(x, [""] * 3), want)
    # the CUDA layout, exercised on the CPU (no GPU here)
    fp16 = openai_fp16_(copy.deepcopy(plain.vision))
    lns = [m for m in fp16.modules() if isinstance(m, torch.nn.LayerNorm)]
    lins = [m for m in fp16.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert lns and all(m.weight.dtype == torch.float32 for m in lns) and all(m.weight.dtype == torch.float16 for m in lins)
    h = torch.randn(2, 5, lns[0].normalized_shape[0], dtype=torch.float16)
    out = lns[0](h)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(h.float(), lns[0].normalized_shape, lns[0].weight,
                                                                   lns[0].bias, lns[0].eps).half())
    r.vision, r._fp16 = fp16, True
    got = r.score(x, [""] * 3)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.real_weights
def test_real_aesthetic():
    r = registry("rewards").create("aesthetic")
    if any(is_present(s) is None for s in r.weight_sources()):
        pytest.skip("CLIP ViT-L/14 or the LAION head not in the Hugging Face cache (miro rewards download aesthetic)")
    r.setup("cuda" if torch.cuda.is_available() else "cpu")
    s = r.score(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)), ["", ""])
    assert ((s > 0) & (s < 10)).all()
