"""ImageReward: tiny random checkpoint in THUDM's ORIGINAL key format, loaded through the real loader, checked
against an independent plain-torch BLIP implementation that reads the original keys directly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miro_core import ConfigError, MiroError, registry
from miro_core.testing import RewardContract
from miro_rewards import _blip
from miro_rewards._weights import WeightsError
from miro_rewards.image_reward import CLIP_MEAN, CLIP_STD, MEAN, STD, preprocess

WORDS = "a red blue green circle square triangle circles squares triangles above below left of right two three photo cat dog the".split()
VW, VDEPTH, VHEADS, PATCH, IMG = 24, 2, 2, 16, 32          # tiny ViT: 2x2 patches of 16 px
TW, TDEPTH, THEADS, TFF = 32, 2, 2, 64                       # tiny BERT


def _write_tokenizer(d: Path) -> Path:
    from transformers import BertTokenizer

    d.mkdir(parents=True, exist_ok=True)
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer.from_pretrained(str(d)).save_pretrained(str(d))  # as a bert-base-uncased snapshot: vocab + json
    return d


def _original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with THUDM ImageReward.pt parameter names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = r(1, 1, VW)
    sd[v + "pos_embed"] = r(1, (IMG // PATCH) ** 2 + 1, VW)
    sd[v + "patch_embed.proj.weight"] = r(VW, 3, PATCH, PATCH, s=0.05)
    sd[v + "patch_embed.proj.bias"] = r(VW)
    for i in range(VDEPTH):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"] = 1 + r(VW, s=0.1)
            sd[b + n + ".bias"] = r(VW, s=0.1)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * VW, VW), r(3 * VW)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(VW, VW), r(VW)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * VW, VW), r(4 * VW)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(VW, 4 * VW), r(VW)
    sd[v + "norm.weight"], sd[v + "norm.bias"] = 1 + r(VW, s=0.1), r(VW, s=0.1)
    t = "blip.text_encoder."
    vocab = 5 + len(WORDS) + 2  # + [DEC] + [ENC]
    sd[t + "embeddings.word_embeddings.weight"] = r(vocab, TW, s=1.0)
    sd[t + "embeddings.position_embeddings.weight"] = r(64, TW, s=0.5)
    sd[t + "embeddings.position_ids"] = torch.arange(64).unsqueeze(0)  # persistent buffer in old BLIP files
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = 1 + r(TW, s=0.1), r(TW, s=0.1)
    for i in range(TDEPTH):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", TW), ("crossattention", VW)):
            sd[f"{b}{att}.self.query.weight"], sd[f"{b}{att}.self.query.bias"] = r(TW, TW), r(TW)
            sd[f"{b}{att}.self.key.weight"], sd[f"{b}{att}.self.key.bias"] = r(TW, kv), r(TW)
            sd[f"{b}{att}.self.value.weight"], sd[f"{b}{att}.self.value.bias"] = r(TW, kv), r(TW)
            sd[f"{b}{att}.output.dense.weight"], sd[f"{b}{att}.output.dense.bias"] = r(TW, TW), r(TW)
            sd[f"{b}{att}.output.LayerNorm.weight"] = 1 + r(TW, s=0.1)
            sd[f"{b}{att}.output.LayerNorm.bias"] = r(TW, s=0.1)
        sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"] = r(TFF, TW), r(TFF)
        sd[b + "output.dense.weight"], sd[b + "output.dense.bias"] = r(TW, TFF), r(TW)
        sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"] = 1 + r(TW, s=0.1), r(TW, s=0.1)
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = r(8, VW), r(8)   # unused by scoring
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = r(8, TW), r(8)
    dims = [TW, 1024, 128, 64, 16, 1]
    for idx, (i, o) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
        sd[f"mlp.layers.{idx}.weight"] = r(o, i, s=1.0 / math.sqrt(i))
        sd[f"mlp.layers.{idx}.bias"] = r(o, s=0.1)
    return sd


def _med_config() -> dict:
    return {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": TW, "initializer_range": 0.02, "intermediate_size": TFF,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": THEADS,
        "num_hidden_layers": TDEPTH, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 5 + len(WORDS) + 2,
        "encoder_width": 768, "add_cross_attention": True,
    }


def make_checkpoint(root: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    ckpt = root / "ImageReward"
    ckpt.mkdir(parents=True, exist_ok=True)
    sd = _original_state_dict(seed)
    torch.save(sd, ckpt / "ImageReward.pt")
    (ckpt / "med_config.json").write_text(json.dumps(_med_config()))
    tok = _write_tokenizer(root / "bert")
    return ckpt, tok, sd


def _options(ckpt: Path, tok: Path) -> dict:
    return {"model_path": str(ckpt), "tokenizer_path": str(tok), "vision_num_heads": VHEADS}


# ---------------------------------------------------------------------------------------------------
# Independent reference: BLIP ViT + BLIP med BERT (multimodal mode) + MLP, straight from the original keys.
# ---------------------------------------------------------------------------------------------------
def _mha(q_in, kv_in, wq, bq, wk, bk, wv, bv, heads, key_mask=None):
    B, Lq, D = q_in.shape[0], q_in.shape[1], wq.shape[0]
    Lk = kv_in.shape[1]
    q = F.linear(q_in, wq, bq).view(B, Lq, heads, D // heads).transpose(1, 2)
    k = F.linear(kv_in, wk, bk).view(B, Lk, heads, D // heads).transpose(1, 2)
    v = F.linear(kv_in, wv, bv).view(B, Lk, heads, D // heads).transpose(1, 2)
    att = q @ k.transpose(-1, -2) / math.sqrt(D // heads)
    if key_mask is not None:
        att = att.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, D)


def reference_scores(sd, pixels, input_ids, attention_mask):
    p = "blip.visual_encoder."
    w = sd[p + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, sd[p + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([sd[p + "cls_token"].expand(B, -1, -1), x], 1) + sd[p + "pos_embed"]
    for i in range(VDEPTH):
        b = f"{p}blocks.{i}."
        h = F.layer_norm(x, (VW,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.view(B, -1, 3, VHEADS, VW // VHEADS).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) * (VW // VHEADS) ** -0.5).softmax(-1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(B, -1, VW), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (VW,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])), sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + h
    img = F.layer_norm(x, (VW,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)

    t = "blip.text_encoder."
    L = input_ids.shape[1]
    y = sd[t + "embeddings.word_embeddings.weight"][input_ids] + sd[t + "embeddings.position_embeddings.weight"][:L]
    y = F.layer_norm(y, (TW,), sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"], 1e-12)
    for i in range(TDEPTH):
        b = f"{t}encoder.layer.{i}."
        for att, kv, mask in (("attention", None, attention_mask), ("crossattention", img, None)):
            s = f"{b}{att}.self."
            src = y if kv is None else kv
            a = _mha(y, src, sd[s + "query.weight"], sd[s + "query.bias"], sd[s + "key.weight"], sd[s + "key.bias"],
                     sd[s + "value.weight"], sd[s + "value.bias"], THEADS, mask)
            o = f"{b}{att}.output."
            y = F.layer_norm(F.linear(a, sd[o + "dense.weight"], sd[o + "dense.bias"]) + y, (TW,),
                             sd[o + "LayerNorm.weight"], sd[o + "LayerNorm.bias"], 1e-12)
        h = F.gelu(F.linear(y, sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"]))
        y = F.layer_norm(F.linear(h, sd[b + "output.dense.weight"], sd[b + "output.dense.bias"]) + y, (TW,),
                         sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"], 1e-12)
    z = y[:, 0]
    for idx in (0, 2, 4, 6, 7):
        z = F.linear(z, sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"])
    return (z.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


# ---------------------------------------------------------------------------------------------------
class TestImageRewardContract(RewardContract):
    reward_name = "image_reward"

    def make_reward(self, tmp_path):
        ckpt, tok, _ = make_checkpoint(tmp_path)
        return registry("rewards").create("image_reward", _options(ckpt, tok))


def test_constants_match_reference():
    assert MEAN == 0.16717362830052426 and STD == 1.0333394966054072


def _reference_transform(n_px: int):
    """THUDM's ``_transform(n_px)``, built from torchvision as the reference does (PIL in, tensor out)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(n_px, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(n_px),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def test_formula_parity_against_independent_blip(tmp_path):
    from PIL import Image
    from transformers import BertTokenizer

    ckpt, tok_dir, sd = make_checkpoint(tmp_path)
    reward = registry("rewards").create("image_reward", _options(ckpt, tok_dir))
    reward.setup("cpu")
    rng = np.random.default_rng(5)
    arrays = rng.integers(0, 256, size=(3, 45, 56, 3), dtype=np.uint8)  # 32 px: 39 long, crop offset 3.5 -> 4
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    prompts = ["a red circle above a blue square", "two green triangles", "a photo of a cat left of the dog"]
    got = reward.score(images, prompts)

    tok = BertTokenizer.from_pretrained(str(tok_dir))
    enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert enc["input_ids"].shape == (3, 35)
    assert int((enc["input_ids"] == tok.unk_token_id).sum()) == 0  # the tiny vocab really tokenizes the prompts
    pixels = torch.stack([_reference_transform(IMG)(Image.fromarray(a)) for a in arrays])
    want = reference_scores({k: v.float() for k, v in sd.items()}, pixels, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.std() > 1e-3  # scores depend on the input (not a constant head)
    assert torch.equal(reward.score(images.float() / 255.0, prompts), got)  # float input: same bytes, same score


def test_score_depends_on_image_and_text(tmp_path):
    ckpt, tok, _ = make_checkpoint(tmp_path)
    reward = registry("rewards").create("image_reward", _options(ckpt, tok))
    reward.setup("cpu")
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32, generator=g)
    s = reward.score(torch.stack([a, b, a]), ["a red circle", "a red circle", "two blue squares"])
    assert abs(float(s[0] - s[1])) > 1e-5 and abs(float(s[0] - s[2])) > 1e-5


def test_key_mapping_is_explicit_and_complete():
    sd = _original_state_dict()
    parts = _blip.convert_imagereward_state_dict(sd)
    assert parts["vision"]["embeddings.class_embedding"] is sd["blip.visual_encoder.cls_token"]
    assert parts["vision"]["encoder.layers.1.self_attn.projection.weight"] is sd["blip.visual_encoder.blocks.1.attn.proj.weight"]
    assert parts["vision"]["post_layernorm.bias"] is sd["blip.visual_encoder.norm.bias"]
    assert parts["text"]["encoder.layer.0.crossattention.self.key.weight"] is sd["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    assert parts["mlp"]["layers.7.weight"] is sd["mlp.layers.7.weight"]
    geom = _blip.vision_geometry(sd)
    assert (geom.width, geom.depth, geom.patch_size, geom.image_size) == (VW, VDEPTH, PATCH, IMG)
    # every transformers parameter is covered, nothing left over
    vision = _blip.build_vision_model(geom, VHEADS)
    text = _blip.build_text_model(_med_config(), VW)
    assert set(parts["vision"]) == set(vision.state_dict())
    assert set(parts["text"]) == set(text.state_dict())
    bad = dict(sd)
    bad["blip.visual_encoder.blocks.0.attn.weird"] = torch.zeros(1)
    with pytest.raises(MiroError, match="does not know.*attn.weird.*ignore_keys"):
        _blip.convert_imagereward_state_dict(bad)


def test_preprocess_resize_crop_normalise():
    # short side already 32: no resize, centre crop only (offset 16)
    x = torch.randint(0, 256, (1, 3, 32, 64), dtype=torch.uint8)
    out = preprocess(x, 32)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.equal(out, (x[..., 16:48].float() / 255 - mean) / std)
    # the reference transform itself, bit for bit, including the half-to-even crop offset (107 -> 51 px: 1.5 -> 2)
    from PIL import Image

    rng = np.random.default_rng(0)
    for hw in [(100, 107), (107, 100), (120, 200), (48, 48)]:
        arr = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
        ref = _reference_transform(48)(Image.fromarray(arr))
        ours = preprocess(torch.from_numpy(arr).permute(2, 0, 1)[None], 48)[0]
        assert torch.equal(ours, ref), hw
    # fast mode: same geometry, float resampling (close, not equal)
    fast = preprocess(torch.from_numpy(arr).permute(2, 0, 1)[None], 40, mode="fast")[0]
    ref = _reference_transform(40)(Image.fromarray(arr))
    assert fast.shape == ref.shape and 0 < float((fast - ref).abs().mean()) * 0.27 < 0.01


# ---------------------------------------------------------------------------------------------------
# Loading real files: legacy buffers tolerated, reported; anything else fails loudly
# ---------------------------------------------------------------------------------------------------
def test_legacy_buffers_load_and_are_reported(tmp_path, caplog):
    """A file saved by an older BLIP/transformers carries persistent ``position_ids`` / ``token_type_ids`` buffers
    (and the real file has BLIP's unused vision_proj / text_proj): it loads, and the log and metadata name them."""
    ckpt, tok, sd = make_checkpoint(tmp_path)
    sd["blip.text_encoder.embeddings.token_type_ids"] = torch.zeros(1, 64, dtype=torch.long)
    sd["blip.visual_encoder.position_ids"] = torch.arange(5, dtype=torch.int32).unsqueeze(0)
    torch.save(sd, ckpt / "ImageReward.pt")
    reward = registry("rewards").create("image_reward", _options(ckpt, tok))
    with caplog.at_level("INFO", logger="miro_rewards"):
        reward.setup("cpu")
    legacy = {"blip.text_encoder.embeddings.position_ids", "blip.text_encoder.embeddings.token_type_ids",
              "blip.visual_encoder.position_ids"}
    unused = {f"blip.{m}.{p}" for m in ("vision_proj", "text_proj") for p in ("weight", "bias")}
    assert set(reward.ignored_keys) == legacy | unused
    assert {reward.ignored_keys[k] for k in legacy} == {_blip.REASON_LEGACY}
    assert reward.metadata()["ignored_checkpoint_keys"] == sorted(legacy | unused)
    text = caplog.text
    assert "ignored 3 tensor(s)" in text and "blip.text_encoder.embeddings.token_type_ids" in text
    assert "ignored 4 tensor(s)" in text and "blip.vision_proj.weight" in text
    # the buffers change nothing: same scores as the file without them
    ckpt2, tok2, _ = make_checkpoint(tmp_path / "plain")
    plain = registry("rewards").create("image_reward", _options(ckpt2, tok2))
    plain.setup("cpu")
    x = torch.randint(0, 256, (2, 3, 40, 44), dtype=torch.uint8)
    assert torch.equal(reward.score(x, ["a cat", "two dogs"]), plain.score(x, ["a cat", "two dogs"]))


def test_unknown_or_altered_keys_fail_loudly(tmp_path):
    ckpt, tok, sd = make_checkpoint(tmp_path)
    # a tensor named like a legacy buffer but with other content is not harmless
    bad = dict(sd)
    bad["blip.text_encoder.embeddings.position_ids"] = torch.arange(64).flip(0).unsqueeze(0)
    torch.save(bad, ckpt / "ImageReward.pt")
    with pytest.raises(WeightsError, match="position_ids.*values are not 0, 1, 2"):
        registry("rewards").create("image_reward", _options(ckpt, tok)).setup("cpu")
    # an extra module (the reference's strict=False would drop it silently): named, with the fix
    extra = dict(sd)
    extra["blip.itm_head.weight"] = torch.zeros(2, TW)
    extra["blip.text_encoder.pooler.dense.weight"] = torch.zeros(TW, TW)
    torch.save(extra, ckpt / "ImageReward.pt")
    with pytest.raises(WeightsError, match=r"ImageReward\.pt.*2 tensor\(s\).*blip\.itm_head\.weight.*ignore_keys"):
        registry("rewards").create("image_reward", _options(ckpt, tok)).setup("cpu")
    # ... which an explicit ignore_keys accepts, and reports
    r = registry("rewards").create("image_reward", {**_options(ckpt, tok), "ignore_keys": [r"blip\.itm_head\..*",
                                                                                          r".*\.pooler\..*"]})
    r.setup("cpu")
    assert r.ignored_keys["blip.itm_head.weight"] == _blip.REASON_OPTION
    with pytest.raises(ConfigError, match="regular expression"):
        registry("rewards").create("image_reward", {"ignore_keys": ["("]})


def test_tokenizer_truncates_to_35(tmp_path):
    ckpt, tok, _ = make_checkpoint(tmp_path)
    reward = registry("rewards").create("image_reward", _options(ckpt, tok))
    reward.setup("cpu")
    long = " ".join(["red circle"] * 40)
    assert not reward.text_fits(long) and reward.text_fits("a red circle")
    assert reward.tokenizer.convert_tokens_to_ids("[ENC]") == 5 + len(WORDS) + 1
    out = reward.score(torch.rand(1, 3, 32, 32), [long])
    assert torch.isfinite(out).all()


def test_missing_files(tmp_path):
    ckpt, tok, _ = make_checkpoint(tmp_path)
    (ckpt / "med_config.json").unlink()
    with pytest.raises(MiroError, match="lacks med_config.json"):
        registry("rewards").create("image_reward", _options(ckpt, tok)).setup("cpu")
    with pytest.raises(MiroError, match="does not exist"):
        registry("rewards").create("image_reward", {**_options(ckpt, tok), "model_path": str(tmp_path / "nope")}).setup("cpu")
    ckpt2, tok2, _ = make_checkpoint(tmp_path / "b")
    (tmp_path / "empty_tok").mkdir()
    with pytest.raises(MiroError, match="vocab.txt"):
        registry("rewards").create("image_reward", {**_options(ckpt2, tok2), "tokenizer_path": str(tmp_path / "empty_tok")}).setup("cpu")
    # nothing configured locally and an empty cache: names the files and the download command
    with pytest.raises(MiroError, match="miro rewards download image_reward"):
        registry("rewards").create("image_reward", {"cache_dir": str(tmp_path / "empty_hub")}).setup("cpu")


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str) -> None:
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)


def test_hf_cache_resolution_and_wrong_revision(tmp_path):
    """Repo ids resolve from an HF-cache layout at the configured revision; an unknown revision is a clear error."""
    ckpt, tok, _ = make_checkpoint(tmp_path / "src")
    cache = tmp_path / "hub"
    c1, c2 = "0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"
    _fake_hub_cache(cache, "THUDM/ImageReward", {f: (ckpt / f).read_bytes() for f in ("ImageReward.pt", "med_config.json")}, c1)
    _fake_hub_cache(cache, "google-bert/bert-base-uncased",
                    {f.name: f.read_bytes() for f in tok.iterdir() if f.is_file()}, c2)
    ok = registry("rewards").create("image_reward", {"cache_dir": str(cache), "vision_num_heads": VHEADS})
    ok.setup("cpu")
    meta = ok.metadata()
    assert meta["model_commit"] == c1 and meta["tokenizer_commit"] == c2 and meta["revision"] == "main"
    assert torch.isfinite(ok.score(torch.rand(1, 3, 32, 32), ["a cat"])).all()
    pinned = registry("rewards").create("image_reward", {"cache_dir": str(cache), "revision": c1, "vision_num_heads": VHEADS})
    pinned.setup("cpu")
    bad = registry("rewards").create("image_reward", {"cache_dir": str(cache), "revision": "f" * 40})
    with pytest.raises(MiroError, match="not the configured revision"):
        bad.setup("cpu")


def test_corrupt_checkpoint(tmp_path):
    ckpt, tok, sd = make_checkpoint(tmp_path)
    sd = {k: v for k, v in sd.items() if not k.startswith("mlp.layers.7")}
    torch.save(sd, ckpt / "ImageReward.pt")
    with pytest.raises(MiroError, match="lacks mlp parameters"):
        registry("rewards").create("image_reward", _options(ckpt, tok)).setup("cpu")


@pytest.mark.real_weights
def test_real_checkpoint_if_cached():
    from miro_rewards._weights import is_present

    reward = registry("rewards").create("image_reward")
    if not all(is_present(src) for src in reward.weight_sources()):
        pytest.skip("THUDM/ImageReward or bert-base-uncased not in the Hugging Face cache")
    reward.setup("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.rand(2, 3, 256, 256)
    out = reward.score(x, ["a photo of a cat", "a photo of a cat"])
    assert out.shape == (2,) and torch.isfinite(out).all() and out.abs().max() < 10
