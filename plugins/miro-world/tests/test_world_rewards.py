"""World rewards: contracts, and each reward moving the right way under each degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.testing import RewardContract
from miro_world.captions import corrupt, phrase, spec_from_scene
from miro_world.degrade import apply_degradations
from miro_world.scene import render, sample_scene, scene_rng


class TestSharpnessContract(RewardContract):
    reward_name = "world_sharpness"


class TestCleanlinessContract(RewardContract):
    reward_name = "world_cleanliness"


class TestVividnessContract(RewardContract):
    reward_name = "world_vividness"


class TestAlignmentContract(RewardContract):
    reward_name = "world_alignment"

    def test_metadata_names_weights(self, tmp_path):
        meta = self.make_reward(tmp_path).metadata()
        assert meta["uses_text"] and len(meta["weights_sha256"]) == 64 and "acc_all" in meta["heldout_metrics"]


N = 48


@pytest.fixture(scope="module")
def clean():
    scenes = [sample_scene(scene_rng(77, i)) for i in range(N)]
    return scenes, np.stack([render(s, 32, chw=True).transpose(1, 2, 0) for s in scenes])


def _t(imgs) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().contiguous()


def _degraded(base, name, strength):
    out = []
    for i, img in enumerate(base):
        p = {"blur": {"sigma": strength}, "noise": {"std": strength, "seed": i},
             "low_contrast": {"amount": strength, "gray": 0.5}, "jpeg": {"quality": int(strength)}}[name]
        out.append(apply_degradations(img, {name: p}))
    return _t(out)


def _score(name, x, prompts=None):
    r = registry("rewards").create(name)
    r.setup("cpu")
    return r.score(x, prompts or [""] * x.shape[0])


@pytest.mark.parametrize("reward,degradation,strengths", [
    ("world_sharpness", "blur", (0.0, 0.7, 1.4, 2.0)),
    ("world_cleanliness", "noise", (0.0, 0.03, 0.08, 0.15)),
    ("world_vividness", "low_contrast", (0.0, 0.3, 0.6, 0.8)),
])
def test_reward_drops_monotonically_with_degradation(clean, reward, degradation, strengths):
    _, base = clean
    means = []
    for s in strengths:
        x = _t(list(base)) if s in (0.0, 100) and degradation != "jpeg" else _degraded(base, degradation, s)
        scores = _score(reward, x)
        means.append(float(scores.mean()))
        if len(means) > 1:
            # per image too: the stronger degradation scores lower for nearly every image
            assert (scores < prev - 1e-6).float().mean() > 0.9, (reward, degradation, s)
        prev = scores
    assert all(a > b for a, b in zip(means, means[1:])), means


def test_image_rewards_ignore_text_and_quality_rewards_are_contrast_invariant(clean):
    _, base = clean
    x = _t(list(base))
    for name in ("world_sharpness", "world_cleanliness", "world_vividness"):
        torch.testing.assert_close(_score(name, x, ["a red circle"] * N), _score(name, x, ["two squares"] * N))
    # sharpness measures edges per unit contrast: a washed-out image is not blurrier
    low = _degraded(base, "low_contrast", 0.5)
    torch.testing.assert_close(_score("world_sharpness", low), _score("world_sharpness", x), atol=0.05, rtol=0)
    # vividness is not fooled by pixel noise the way a raw colour variance would be
    noisy = _degraded(base, "noise", 0.1)
    # and sharpness is about edges, not noise: noise moves it far less than a 1-pixel blur
    s_clean, s_noisy, s_blur = (float(_score("world_sharpness", v).mean()) for v in (x, noisy, _degraded(base, "blur", 1.0)))
    assert abs(s_noisy - s_clean) < 0.4 * abs(s_blur - s_clean)
    assert abs(float(_score("world_vividness", noisy).mean() - _score("world_vividness", x).mean())) < 0.03


def test_vividness_rewards_large_saturated_areas(clean):
    scenes, base = clean
    small = sample_scene(scene_rng(5, 0), kind="single")
    import attrs

    big = attrs.evolve(small, objects=(attrs.evolve(small.objects[0], r=0.45, cx=0.5, cy=0.5, color="red", rgb=(0.9, 0.1, 0.1)),))
    white = attrs.evolve(big, objects=(attrs.evolve(big.objects[0], color="white", rgb=(0.95, 0.95, 0.95)),))
    x = torch.stack([torch.from_numpy(render(s, 32, chw=True)) for s in (small, big, white)])
    v = _score("world_vividness", x)
    assert v[1] > v[0] and v[1] > v[2]


def test_alignment_prefers_true_captions(clean):
    scenes, base = clean
    x = _t(list(base))
    rng = np.random.default_rng(0)
    true = [phrase(spec_from_scene(s), None) for s in scenes]
    wrong = []
    for s in scenes:
        out = corrupt(spec_from_scene(s), "wrong_color", rng)
        wrong.append(phrase(out[0], None))
    a_true, a_wrong = _score("world_alignment", x, true), _score("world_alignment", x, wrong)
    assert float((a_true > a_wrong).float().mean()) > 0.85
    assert float(a_true.mean()) > float(a_wrong.mean())
    # and unrelated captions score lower than true ones
    shuffled = true[1:] + true[:1]
    assert float((a_true > _score("world_alignment", x, shuffled)).float().mean()) > 0.85
