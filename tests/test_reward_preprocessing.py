"""Preprocessing parity of every CLIP-family reward with its ORIGINAL pipeline, written here independently.

The originals (checked against their sources):

* OpenAI ``clip`` (LAION aesthetic predictor) and ImageReward ``_transform(224)``: torchvision ``Resize(224,
  BICUBIC)`` on the PIL image (8 bit), ``CenterCrop(224)`` with offset ``int(round((H - 224) / 2))`` (Python
  rounds halves to even), ``ToTensor`` (``u8 / 255``), ``Normalize``;
* transformers ``CLIPImageProcessor`` as the PickScore / SciScore / CLIPScore scripts ran it (the PIL processor of
  transformers 4, ``CLIPImageProcessorPil`` in transformers 5): the same PIL resize, crop offset ``(H - 224) // 2``,
  ``rescale(1/255)``, normalise with the processor's mean/std;
* hpsv2 1.2.0 ``image_transform(..., resize_longest_max=True)``: ``ToTensor`` FIRST, then ``ResizeMaxSize`` on the
  float tensor (``round(dim * 224 / max)``, torchvision bicubic on tensors, no clamp, zero padding
  ``[pad_w // 2, pad_h // 2, rest]``; nothing at all when the longest side is already 224), ``Normalize``.

The references below use PIL + numpy (+ torchvision's tensor ops for hpsv2, which is what hpsv2 calls), never our
code; they are themselves checked against torchvision's and transformers' own implementations. Image sizes hit
every rounding case: the crop offsets differ between the two rules when the resized long side minus 224 leaves 3
modulo 4 (528x512, 1000x667, 1216x832 and their transposes, 224x227), agree otherwise (512x524, 768x512...).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from miro_core import registry
from miro_rewards.testing import save_tiny_aesthetic_head, save_tiny_clip, save_tiny_open_clip_checkpoint, tiny_open_clip_config

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROC_MEAN, PROC_STD = (0.5, 0.45, 0.4), (0.25, 0.26, 0.27)  # distinct: the processor's own values must be used

#: (H, W): rounding cases of the centre crop (see the module doc)
CROP_SIZES = [(528, 512), (512, 528), (1000, 667), (667, 1000), (1216, 832), (832, 1216), (224, 227),
              (512, 524), (768, 512), (224, 300), (150, 100), (512, 512)]
#: (H, W) for hpsv2: 896x306 -> 306 * 0.25 = 76.5 rounds (half to even) to 76; odd paddings; upscaling
HPS_SIZES = [(528, 512), (512, 528), (1216, 832), (896, 306), (306, 896), (100, 150), (60, 100), (224, 224)]


@functools.lru_cache(maxsize=None)
def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: noise over a gradient, with a hard-edged block (bicubic overshoot) and saturated corners."""
    rng = np.random.default_rng(seed + 7 * h + w)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(h + w - 2, 1)], -1) * 255
    img = 0.6 * grad + 0.4 * rng.integers(0, 256, (h, w, 3))
    img[h // 3 : h // 2, w // 3 : w // 2] = 255.0
    img[: h // 8, : w // 8] = 0.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _batch(arr: np.ndarray) -> torch.Tensor:
    """uint8 [1, 3, H, W] as the scoring pipeline passes it."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


# ---------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------
def ref_crop_pipeline(arr: np.ndarray, rounding: str, mean=OPENAI_MEAN, std=OPENAI_STD, size: int = 224) -> torch.Tensor:
    """PIL resize of the short side in 8 bit, centre crop with ``rounding`` (torchvision | floor), u8 / 255, normalise."""
    im = Image.fromarray(arr)
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    a = np.asarray(im)
    if rounding == "torchvision":
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    else:
        top, left = (nh - size) // 2, (nw - size) // 2
    x = a[top : top + size, left : left + size].astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def ref_hpsv2_pipeline(arr: np.ndarray, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """hpsv2 1.2.0's validation transform; returns (normalised pixels, pixels before Normalize)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.from_numpy(arr.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)  # ToTensor, applied first
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = tuple(round(d * scale) for d in (h, w))
        x = TF.resize(x, list(new), interpolation=InterpolationMode.BICUBIC)  # float tensor: no 8-bit rounding, no clamp
        ph, pw = size - new[0], size - new[1]
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(x, OPENAI_MEAN, OPENAI_STD), x


@pytest.mark.parametrize("hw", [(528, 512), (1216, 832), (667, 1000), (224, 227), (512, 524)])
def test_references_equal_the_libraries_own_pipelines(hw):
    """Our test references are exact: equal to torchvision's transform and transformers' PIL processor."""
    from torchvision import transforms as T
    from transformers import CLIPImageProcessorPil

    arr = _image(*hw)
    tv = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize(OPENAI_MEAN, OPENAI_STD)])(Image.fromarray(arr))
    assert torch.equal(tv, ref_crop_pipeline(arr, "torchvision"))
    hf = CLIPImageProcessorPil(image_mean=list(PROC_MEAN), image_std=list(PROC_STD))(images=[arr], return_tensors="pt")
    assert torch.equal(hf["pixel_values"][0], ref_crop_pipeline(arr, "floor", PROC_MEAN, PROC_STD))


def test_float_images_are_quantised_to_nearest_byte():
    """Float inputs reach the 8-bit path as round(x * 255) (clipped): u8 / 255 gets its bytes back exactly; other
    values round to the nearest byte (as saving the float image to PNG with rounding would)."""
    from miro_rewards._pixels import as_uint8_hwc

    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(torch.from_numpy(as_uint8_hwc(u8.float() / 255.0)).permute(0, 3, 1, 2), u8)
    x = torch.tensor([0.0, 0.3 / 255, 0.6 / 255, 0.5, 0.999, 1.2, -0.1]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert as_uint8_hwc(x)[0, 0, :, 0].tolist() == [0, 0, 1, 128, 255, 255, 0]


def test_sizes_hit_both_rounding_cases():
    differs = []
    for h, w in CROP_SIZES:
        short, long = min(h, w), max(h, w)
        extra = int(224 * long / short) - 224
        differs.append(int(round(extra / 2.0)) != extra // 2)
    assert differs[:7] == [True] * 7 and not any(differs[7:])
    assert round(306 * (224 / 896.0)) == 76 != int(306 * (224 / 896.0) + 0.5)  # 896x306: half to even


# ---------------------------------------------------------------------------------------------------
# The rewards (tiny random weights; preprocessing does not depend on them)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    clip = save_tiny_clip(root / "clip", seed=1, image_mean=PROC_MEAN, image_std=PROC_STD)
    assert json.loads((clip / "preprocessor_config.json").read_text())["image_mean"] == list(PROC_MEAN)
    clip768 = save_tiny_clip(root / "clip768", seed=2, projection_dim=768, with_processor=False)
    head = save_tiny_aesthetic_head(root / "head.pth", seed=2)
    hps = save_tiny_open_clip_checkpoint(root / "hps.pt", seed=3)
    return {"clip": clip, "clip768": clip768, "head": head, "hps": hps}


def _make(name: str, files, **kw):
    opts = {
        "pick": {"model_path": str(files["clip"]), "processor_path": str(files["clip"])},
        "sciscore": {"model_path": str(files["clip"])},
        "openai_clip": {"model_path": str(files["clip"])},
        "aesthetic": {"clip_path": str(files["clip768"]), "head_path": str(files["head"])},
        "hpsv2": {"checkpoint_path": str(files["hps"]), "arch_config": tiny_open_clip_config()},
        "image_reward": {},
    }[name]
    return registry("rewards").create(name, {**opts, **kw})


@pytest.fixture(scope="module")
def rewards(files):
    out = {}
    for name in ("pick", "sciscore", "openai_clip", "aesthetic", "hpsv2"):
        for mode in ("original", "fast"):
            r = _make(name, files, preprocess=mode)
            r.setup("cpu")
            out[name, mode] = r
    for mode in ("original", "fast"):  # the transform is set at construction (224 px, as ImageReward's ViT-L/16)
        out["image_reward", mode] = _make("image_reward", files, preprocess=mode)
    return out


#: reward -> (crop rounding of its original, mean, std)
CROP_REWARDS = {
    "aesthetic": ("torchvision", OPENAI_MEAN, OPENAI_STD),
    "image_reward": ("torchvision", OPENAI_MEAN, OPENAI_STD),
    "pick": ("floor", PROC_MEAN, PROC_STD),
    "sciscore": ("floor", PROC_MEAN, PROC_STD),
    "openai_clip": ("floor", PROC_MEAN, PROC_STD),
}


@pytest.mark.parametrize("name", sorted(CROP_REWARDS))
def test_crop_rewards_equal_their_original_bit_for_bit(rewards, name):
    rounding, mean, std = CROP_REWARDS[name]
    tf = rewards[name, "original"].transform
    for hw in CROP_SIZES:
        arr = _image(*hw)
        want = ref_crop_pipeline(arr, rounding, mean, std)
        u8 = _batch(arr)
        assert torch.equal(tf(u8)[0], want), (name, hw)
        assert torch.equal(tf(u8.float() / 255.0)[0], want), (name, hw)  # float input: its bytes are recovered


@pytest.mark.parametrize("name", sorted(CROP_REWARDS))
def test_fast_mode_same_geometry_approximate_resampling(rewards, name):
    rounding, mean, std = CROP_REWARDS[name]
    tf = rewards[name, "fast"].transform
    arr = _image(224, 227)  # no resize: only the crop offset (1.5 -> 2 or 1) matters, so the result is exact
    assert torch.equal(tf(_batch(arr))[0], ref_crop_pipeline(arr, rounding, mean, std))
    for hw in [(528, 512), (1216, 832)]:  # resized: PIL 8 bit vs float torch resampling
        arr = _image(*hw)
        diff = (tf(_batch(arr))[0] - ref_crop_pipeline(arr, rounding, mean, std)).abs() * torch.tensor(std).view(3, 1, 1)
        assert 0 < float(diff.mean()) < 2.0 / 255 and float(diff.max()) < 0.25, (name, hw)


def test_crop_rounding_rule_matters(rewards):
    """On a 3-mod-4 size the two rules give different windows: each reward must use its original's rule."""
    arr = _image(528, 512)
    tv, fl = ref_crop_pipeline(arr, "torchvision"), ref_crop_pipeline(arr, "floor")
    assert not torch.equal(tv, fl)
    assert torch.equal(rewards["aesthetic", "original"].transform(_batch(arr))[0], tv)


def test_hpsv2_equals_its_original_bit_for_bit(rewards):
    for mode in ("original", "fast"):  # on the CPU both backends compute the reference's float ops
        tf = rewards["hpsv2", mode].transform
        for hw in HPS_SIZES:
            arr = _image(*hw)
            want, _ = ref_hpsv2_pipeline(arr)
            assert torch.equal(tf(_batch(arr))[0], want), (mode, hw)
            assert torch.equal(tf(_batch(arr).float() / 255.0)[0], want), (mode, hw)


def test_hpsv2_does_not_clamp(rewards):
    """The reference resizes float tensors without clamping: bicubic overshoot below 0 / above 1 survives."""
    arr = _image(528, 512)
    want, raw = ref_hpsv2_pipeline(arr)
    assert float(raw.min()) < -1e-3 and float(raw.max()) > 1 + 1e-3  # the case is really hit
    assert torch.equal(rewards["hpsv2", "original"].transform(_batch(arr))[0], want)


def test_hpsv2_longest_side_224_is_padded(rewards):
    """Where the reference skips ResizeMaxSize (longest side already 224) it hands the ViT a non-square image, which
    the ViT-H cannot take; we pad it like every other size (documented)."""
    arr = _image(160, 224)
    px = rewards["hpsv2", "original"].transform(_batch(arr))[0]
    want, _ = ref_hpsv2_pipeline(arr)  # [3, 160, 224], not padded
    assert want.shape == (3, 160, 224) and px.shape == (3, 224, 224)
    assert torch.equal(px[:, 32:192], want)


# ---------------------------------------------------------------------------------------------------
# Scores and the uint8 feed
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pick", "sciscore", "openai_clip", "aesthetic", "hpsv2"])
def test_uint8_and_float_inputs_score_identically(rewards, name):
    r = rewards[name, "original"]
    assert r.accepts_uint8
    u8 = torch.cat([_batch(_image(528, 512, seed=s)) for s in range(2)])
    prompts = ["a red circle", "two green squares"]
    assert torch.equal(r.score(u8, prompts), r.score(u8.float() / 255.0, prompts))


def test_scores_equal_independent_forward_on_reference_pixels(rewards, files):
    """Full scores at rounding-sensitive sizes: the reward equals the raw models on the reference pixels."""
    import open_clip
    from transformers import CLIPModel

    arrs = [_image(528, 512), _image(1216, 832)]
    prompts = ["a red circle above a blue square", "a photo of a cat"]
    model = CLIPModel.from_pretrained(str(files["clip"])).eval()
    tok = rewards["pick", "original"].tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        txt = model.get_text_features(**tok).pooler_output
        for i, a in enumerate(arrs):
            img = model.get_image_features(pixel_values=ref_crop_pipeline(a, "floor", PROC_MEAN, PROC_STD)[None]).pooler_output
            cos = torch.nn.functional.cosine_similarity(img, txt[i][None])
            got = rewards["pick", "original"].score(_batch(a), [prompts[i]])
            torch.testing.assert_close(got, model.logit_scale.exp() * cos, rtol=1e-6, atol=1e-5)

        hps = open_clip.CLIP(**tiny_open_clip_config(), output_dict=True).eval()
        hps.load_state_dict(torch.load(files["hps"], weights_only=True)["state_dict"])
        for a, p in zip(arrs, prompts):
            out = hps(ref_hpsv2_pipeline(a)[0][None], open_clip.SimpleTokenizer(context_length=77)([p]))
            want = (out["image_features"] * out["text_features"]).sum(-1)
            torch.testing.assert_close(rewards["hpsv2", "original"].score(_batch(a), [p]), want, rtol=1e-6, atol=1e-6)


def test_pipeline_feeds_decoded_uint8(tmp_path, files, monkeypatch):
    """score_dataset hands rewards with accepts_uint8 the decoded bytes (uint8), not a float round trip."""
    from miro_core.scoring import score_dataset
    from miro_core.store import RewardStore
    from miro_rewards.aesthetic import AestheticScore

    data = tmp_path / "data"
    data.mkdir()
    arrs = [_image(264, 250, seed=s) for s in range(3)]
    for i, a in enumerate(arrs):
        Image.fromarray(a).save(data / f"img_{i}.png")
        (data / f"img_{i}.txt").write_text(f"caption {i}")
    seen = []
    orig = AestheticScore.score

    def spy(self, images, prompts):
        seen.append(images.dtype)
        return orig(self, images, prompts)

    monkeypatch.setattr(AestheticScore, "score", spy)
    opts = {"clip_path": str(files["clip768"]), "head_path": str(files["head"])}
    score_dataset(str(data), {"aesthetic": opts}, str(tmp_path / "store"), batch_size=4, workers=0, progress=False)
    assert seen and all(d == torch.uint8 for d in seen)
    store = RewardStore.open(str(tmp_path / "store"))
    ref = registry("rewards").create("aesthetic", opts)
    ref.setup("cpu")
    order = [int(i.rsplit("_", 1)[-1]) for i in store.ids().tolist()]
    want = ref.score(torch.cat([_batch(arrs[i]) for i in order]), [""] * 3).numpy()
    np.testing.assert_array_equal(store.scores("aesthetic"), want)
