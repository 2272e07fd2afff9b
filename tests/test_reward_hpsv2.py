"""HPSv2 reward: tiny open_clip CLIP checkpoint in the real format, loaded through the real loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miro_core import ConfigError, registry
from miro_core.testing import RewardContract
from miro_rewards._clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from miro_rewards._weights import WeightsError, is_present
from miro_rewards.testing import FAKE_SHA, save_tiny_open_clip_checkpoint, tiny_open_clip_config, write_hub_cache

REPO = "xswu/HPSv2"


@pytest.fixture(scope="module")
def hps_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    ckpt = save_tiny_open_clip_checkpoint(root / "src" / "HPS_v2.1_compressed.pt", seed=0)
    cache = root / "cache"
    write_hub_cache(cache, REPO, {"HPS_v2.1_compressed.pt": ckpt}, revision=FAKE_SHA)
    return cache


def _options(cache, **kw):
    return {"cache_dir": str(cache), "revision": FAKE_SHA, "arch_config": tiny_open_clip_config(), **kw}


class TestHPSv2Contract(RewardContract):
    reward_name = "hpsv2"

    @pytest.fixture(autouse=True)
    def _cache(self, hps_cache):
        self.cache = hps_cache

    def make_reward(self, tmp_path):
        return registry("rewards").create("hpsv2", _options(self.cache, batch_size=2))


@pytest.fixture(scope="module")
def reward(hps_cache):
    r = registry("rewards").create("hpsv2", _options(hps_cache))
    r.setup("cpu")
    return r


def test_class_flags():
    cls = registry("rewards").get("hpsv2").cls
    assert cls.uses_text and not cls.evaluation_only and cls.max_text_tokens == 77


def test_padding_is_black_in_pixel_space(reward):
    img = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5  # no black pixels
    px = reward.transform(img)
    assert px.shape == (1, 3, 224, 224)
    # longest side 80 -> 224, short side round(48 * 2.8) = 134; 90 padded rows split 45 / 45
    pad_value = ((0.0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1, 1)
    torch.testing.assert_close(px[0, :, :45, :], pad_value.expand(3, 45, 224))
    torch.testing.assert_close(px[0, :, 45 + 134 :, :], pad_value.expand(3, 45, 224))
    assert (px[0, :, 45 : 45 + 134, :] > pad_value + 0.5).all()  # the image itself (values >= 0.5) is not padding


def test_score_is_cosine_of_open_clip_features(reward, hps_cache):
    """Independent recomputation: open_clip's own forward on its own preprocessing; cosine, no logit scale."""
    import open_clip
    from open_clip.transform import image_transform
    from PIL import Image

    path = hps_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / FAKE_SHA / "HPS_v2.1_compressed.pt"
    model = open_clip.CLIP(**tiny_open_clip_config(), output_dict=True).eval()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    tok = open_clip.SimpleTokenizer(context_length=77)
    prompts = ["a red circle above a blue square", "two green triangles", "a photo of a cat"]
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for _ in prompts]  # square 224: no resampling
    ref_tf = image_transform(224, is_train=False, resize_mode="longest", fill_color=0)
    with torch.no_grad():
        out = model(torch.stack([ref_tf(Image.fromarray(a)) for a in arrays]), tok(prompts))
        expected = (out["image_features"] * out["text_features"]).sum(-1)
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    got = reward.score(images, prompts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert float(out["logit_scale"]) > 10  # the reference scale is NOT applied: scores stay cosines
    assert got.abs().max() <= 1.0


def test_text_changes_score_and_text_fits(reward):
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1)
    s = reward.score(img, ["a cat", "a large spaceship over the sea"])
    assert s[0] != s[1]
    assert reward.text_fits("a red circle")
    assert not reward.text_fits("word " * 80)


def test_module_prefix_and_v20_filename(tmp_path):
    ckpt = save_tiny_open_clip_checkpoint(tmp_path / "HPS_v2_compressed.pt", seed=1, module_prefix=True)
    cache = tmp_path / "cache"
    write_hub_cache(cache, REPO, {"HPS_v2_compressed.pt": ckpt})
    r = registry("rewards").create("hpsv2", _options(cache, hps_version="v2.0"))
    assert r.weight_sources()[0].required == ("HPS_v2_compressed.pt",)
    r.setup("cpu")
    assert torch.isfinite(r.score(torch.rand(2, 3, 32, 40), ["a", "b"])).all()
    assert r.metadata()["model_id"] == "xswu/HPSv2/HPS_v2_compressed.pt"


def test_local_checkpoint_path(tmp_path):
    ckpt = save_tiny_open_clip_checkpoint(tmp_path / "my.pt", seed=2)
    r = registry("rewards").create("hpsv2", {"checkpoint_path": str(ckpt), "arch_config": tiny_open_clip_config()})
    r.setup("cpu")
    assert r.score(torch.rand(1, 3, 30, 30), ["x"]).shape == (1,)


def test_loading_errors(tmp_path, hps_cache):
    # nothing in the cache: names the file, the revision and the download command
    r = registry("rewards").create("hpsv2", {"cache_dir": str(tmp_path / "empty")})
    with pytest.raises(WeightsError, match=r"HPS_v2\.1_compressed\.pt.*miro rewards download hpsv2"):
        r.setup("cpu")
    # wrong revision: lists what the cache holds
    r = registry("rewards").create("hpsv2", _options(hps_cache, revision="f" * 40))
    with pytest.raises(WeightsError, match=FAKE_SHA):
        r.setup("cpu")
    # checkpoint of a different architecture: strict load fails with a clear error
    other = dict(tiny_open_clip_config(), embed_dim=8)
    r = registry("rewards").create("hpsv2", _options(hps_cache, arch_config=other))
    with pytest.raises(WeightsError, match="does not match"):
        r.setup("cpu")
    # not a checkpoint
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    r = registry("rewards").create("hpsv2", {"checkpoint_path": str(bad), "arch_config": tiny_open_clip_config()})
    with pytest.raises(WeightsError, match="state_dict"):
        r.setup("cpu")
    with pytest.raises(ConfigError):
        registry("rewards").create("hpsv2", {"hps_version": "v3"})


def test_legacy_buffers_are_tolerated_and_reported(tmp_path, caplog):
    """A checkpoint carrying a legacy ``position_ids`` buffer (deterministic content) loads and says so; the same name
    with other values, or any unknown tensor, still fails (the reference loads strictly)."""
    src = save_tiny_open_clip_checkpoint(tmp_path / "src.pt", seed=4)
    ckpt = torch.load(src, weights_only=True)
    ckpt["state_dict"]["text.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    path = tmp_path / "legacy.pt"
    torch.save(ckpt, path)
    r = registry("rewards").create("hpsv2", {"checkpoint_path": str(path), "arch_config": tiny_open_clip_config()})
    with caplog.at_level("INFO", logger="miro_rewards"):
        r.setup("cpu")
    assert r.metadata()["ignored_checkpoint_keys"] == ["text.embeddings.position_ids"]
    assert "ignored 1 tensor(s)" in caplog.text and "text.embeddings.position_ids" in caplog.text
    plain = registry("rewards").create("hpsv2", {"checkpoint_path": str(src), "arch_config": tiny_open_clip_config()})
    plain.setup("cpu")
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    assert torch.equal(r.score(x, ["a", "b"]), plain.score(x, ["a", "b"]))

    ckpt["state_dict"]["text.embeddings.position_ids"] = torch.ones(1, 77, dtype=torch.long)
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match="position_ids.*not 0, 1, 2"):
        registry("rewards").create("hpsv2", {"checkpoint_path": str(path), "arch_config": tiny_open_clip_config()}).setup("cpu")
    del ckpt["state_dict"]["text.embeddings.position_ids"]
    ckpt["state_dict"]["visual.extra_head.weight"] = torch.zeros(2, 2)
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match="(?s)does not match.*visual.extra_head"):
        registry("rewards").create("hpsv2", {"checkpoint_path": str(path), "arch_config": tiny_open_clip_config()}).setup("cpu")


def test_original_precision(hps_cache, monkeypatch):
    """hpsv2 scores under torch.cuda.amp.autocast: on CUDA the option autocasts the forward and the cosine to float16;
    on CPU (where the reference's CUDA autocast does nothing) it changes nothing."""
    with pytest.raises(ConfigError, match="original_precision.*dtype"):
        registry("rewards").create("hpsv2", _options(hps_cache, original_precision=True, dtype="float16"))
    r = registry("rewards").create("hpsv2", _options(hps_cache, original_precision=True))
    r.setup("cpu")
    plain = registry("rewards").create("hpsv2", _options(hps_cache))
    plain.setup("cpu")
    x = torch.randint(0, 256, (3, 3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    prompts = ["a red circle", "two green squares", "a cat"]
    want = plain.score(x, prompts)
    assert r._autocast_device() is None and torch.equal(r.score(x, prompts), want)
    # the CUDA code path, exercised with CPU autocast (no GPU here): float16 results, close to float32
    monkeypatch.setattr(r, "_autocast_device", lambda: "cpu")
    got = r.score(x, prompts)
    assert torch.equal(got, got.half().float()) and not torch.equal(got, want)
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)


@pytest.mark.real_weights
def test_real_hpsv2_checkpoint():
    r = registry("rewards").create("hpsv2")
    if is_present(r.weight_sources()[0]) is None:
        pytest.skip("HPS_v2.1_compressed.pt not in the Hugging Face cache (miro rewards download hpsv2)")
    r.setup("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 256, 256, generator=g)
    s = r.score(noise.repeat(2, 1, 1, 1), ["random noise", "a photo of a golden retriever on a beach"])
    assert ((s > 0.0) & (s < 0.5)).all()  # cosine scale as the reference reports
