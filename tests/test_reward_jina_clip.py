"""jina_clip: a local model directory whose config.json ``auto_map`` points at a small custom modeling file written
here (the real remote-code path: ``AutoModel.from_pretrained(path, trust_remote_code=True)``), implementing
``encode_text`` / ``encode_image`` with jina-clip's signature and return conventions."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from miro_core import MiroError, registry
from miro_core.testing import RewardContract

CONFIG_PY = '''
from transformers import PretrainedConfig


class TinyJinaConfig(PretrainedConfig):
    model_type = "jina_clip"

    def __init__(self, dim=12, vocab=97, patch=4, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.vocab, self.patch = dim, vocab, patch
'''

MODELING_PY = '''
import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_tinyjina import TinyJinaConfig


class TinyJinaModel(PreTrainedModel):
    """Mimics jina-clip's API: encode_* return normalised numpy arrays unless told otherwise."""

    config_class = TinyJinaConfig
    base_model_prefix = "tinyjina"

    def __init__(self, config):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab, config.dim)
        self.img_proj = nn.Linear(3 * config.patch * config.patch, config.dim)
        self.post_init()

    def _ids(self, sentence):
        return [sum(map(ord, w)) % self.config.vocab for w in sentence.lower().split()] or [0]

    def _finish(self, x, convert_to_numpy, convert_to_tensor, normalize_embeddings, truncate_dim):
        if truncate_dim is not None:
            x = x[:, :truncate_dim]
        if normalize_embeddings:
            x = torch.nn.functional.normalize(x, dim=-1)
        if convert_to_tensor:
            return x
        return x.detach().cpu().numpy() if convert_to_numpy else list(x)

    @torch.inference_mode()
    def encode_text(self, sentences, task=None, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
                    convert_to_tensor=False, device=None, normalize_embeddings=True, truncate_dim=None):
        x = torch.stack([self.tok_emb(torch.tensor(self._ids(s))).mean(0) for s in sentences])
        return self._finish(x, convert_to_numpy, convert_to_tensor, normalize_embeddings, truncate_dim)

    @torch.inference_mode()
    def encode_image(self, images, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
                     convert_to_tensor=False, device=None, normalize_embeddings=True, truncate_dim=None):
        self.last_images = [np.array(im) for im in images]  # what the model's own processor received
        p = self.config.patch
        px = [torch.from_numpy(np.asarray(im.convert("RGB").resize((p, p)), dtype=np.float32) / 255.0) for im in images]
        x = self.img_proj(torch.stack(px).permute(0, 3, 1, 2).reshape(len(images), -1) - 0.5)
        return self._finish(x, convert_to_numpy, convert_to_tensor, normalize_embeddings, truncate_dim)
'''


def make_model_dir(d: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "configuration_tinyjina.py").write_text(textwrap.dedent(CONFIG_PY))
    (d / "modeling_tinyjina.py").write_text(textwrap.dedent(MODELING_PY))
    (d / "config.json").write_text(json.dumps({
        "model_type": "jina_clip", "architectures": ["TinyJinaModel"], "dim": 12, "vocab": 97, "patch": 4,
        "auto_map": {"AutoConfig": "configuration_tinyjina.TinyJinaConfig", "AutoModel": "modeling_tinyjina.TinyJinaModel"},
    }))
    g = torch.Generator().manual_seed(seed)
    save_file({"tok_emb.weight": torch.randn(97, 12, generator=g), "img_proj.weight": torch.randn(12, 48, generator=g),
               "img_proj.bias": torch.randn(12, generator=g) * 0.1}, str(d / "model.safetensors"))
    return d


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tinyjina"))


def _opts(path: Path, **kw) -> dict:
    return {"model_path": str(path), "trust_remote_code": True, **kw}


class TestJinaClipContract(RewardContract):
    reward_name = "jina_clip"

    @pytest.fixture(autouse=True)
    def _dir(self, jina_dir):
        self._path = jina_dir

    def make_reward(self, tmp_path):
        return registry("rewards").create("jina_clip", _opts(self._path))


def test_refuses_without_opt_in(jina_dir):
    reward = registry("rewards").create("jina_clip", {"model_path": str(jina_dir)})
    with pytest.raises(MiroError, match="trust_remote_code = true") as exc:
        reward.setup("cpu")
    assert "revision" in str(exc.value)
    assert reward.model is None


def test_hub_model_needs_pinned_commits(tmp_path):
    with pytest.raises(MiroError, match="pinned `revision`"):
        registry("rewards").create("jina_clip", {"trust_remote_code": True}).setup("cpu")
    with pytest.raises(MiroError, match="pinned `revision`"):
        registry("rewards").create("jina_clip", {"trust_remote_code": True, "revision": "main"}).setup("cpu")
    with pytest.raises(MiroError, match="pinned `code_revision`"):
        registry("rewards").create("jina_clip", {"trust_remote_code": True, "revision": "a" * 40}).setup("cpu")
    # pinned but absent from the (empty) cache: names the files, the revision and the download command
    r = registry("rewards").create("jina_clip", {"trust_remote_code": True, "revision": "a" * 40, "code_revision": "b" * 40,
                                                 "cache_dir": str(tmp_path / "hub")})
    with pytest.raises(MiroError, match="miro rewards download jina_clip"):
        r.setup("cpu")
    v1 = registry("rewards").create("jina_clip", {"model_id": "jinaai/jina-clip-v1", "trust_remote_code": True,
                                                  "revision": "c" * 40, "cache_dir": str(tmp_path / "hub")})
    assert [s.role for s in v1.weight_sources()] == ["model"]  # v1 ships its code in the model repo
    with pytest.raises(MiroError, match="jinaai/jina-clip-v1"):
        v1.setup("cpu")


def test_loads_remote_code_and_cosine_matches_independent(jina_dir):
    from PIL import Image
    from transformers import AutoModel

    reward = registry("rewards").create("jina_clip", _opts(jina_dir))
    reward.setup("cpu")
    assert type(reward.model).__name__ == "TinyJinaModel"
    assert type(reward.model).__module__.startswith("transformers_modules")  # loaded as remote code
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 20, 36, generator=g)
    prompts = ["a red circle", "two green triangles above a blue square", "a photo of a cat"]
    got = reward.score(images, prompts)

    independent = AutoModel.from_pretrained(str(jina_dir), trust_remote_code=True)
    pil = [Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in range(3)]
    t = independent.encode_text(prompts, normalize_embeddings=False)  # numpy, raw
    v = independent.encode_image(pil, normalize_embeddings=False)
    want = (t * v).sum(-1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(v, axis=-1))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert got.abs().max() <= 1.0 + 1e-6 and got.std() > 1e-3


def test_images_reach_the_model_as_the_original_bytes(jina_dir, tmp_path):
    """The reference feeds jina-clip's own processor PIL images opened from files: the model must receive exactly
    those 8-bit RGB pixels, from a uint8 batch and from its float (u8 / 255) twin."""
    from PIL import Image

    reward = registry("rewards").create("jina_clip", _opts(jina_dir))
    reward.setup("cpu")
    assert reward.accepts_uint8
    rng = np.random.default_rng(9)
    arrays = rng.integers(0, 256, size=(3, 37, 51, 3), dtype=np.uint8)
    opened = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        opened.append(np.asarray(Image.open(tmp_path / f"{i}.png").convert("RGB")))
    u8 = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    prompts = ["a", "b", "c"]
    s_u8 = reward.score(u8, prompts)
    assert len(reward.model.last_images) == 3
    assert all(np.array_equal(got, want) for got, want in zip(reward.model.last_images, opened))
    s_float = reward.score(u8.float() / 255.0, prompts)
    assert all(np.array_equal(got, want) for got, want in zip(reward.model.last_images, opened))
    assert torch.equal(s_u8, s_float)


def test_truncate_dim(jina_dir):
    reward = registry("rewards").create("jina_clip", _opts(jina_dir, truncate_dim=4))
    reward.setup("cpu")
    txt, img = reward.embed(torch.rand(2, 3, 16, 16), ["a cat", "a dog"])
    assert txt.shape == img.shape == (2, 4)


def test_not_a_jina_model(tmp_path):
    d = make_model_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("auto_map")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MiroError, match="auto_map"):
        registry("rewards").create("jina_clip", _opts(d)).setup("cpu")
    with pytest.raises(MiroError, match="does not exist"):
        registry("rewards").create("jina_clip", _opts(tmp_path / "missing")).setup("cpu")


@pytest.mark.real_weights
def test_real_model_if_cached():
    from miro_rewards._weights import is_present

    import os

    rev, code = os.environ.get("MIRO_JINA_CLIP_REVISION"), os.environ.get("MIRO_JINA_CLIP_CODE_REVISION")
    if not (rev and code):
        pytest.skip("set MIRO_JINA_CLIP_REVISION / MIRO_JINA_CLIP_CODE_REVISION to the cached commits")
    reward = registry("rewards").create("jina_clip", {"trust_remote_code": True, "revision": rev, "code_revision": code})
    if not all(is_present(s) for s in reward.weight_sources()):
        pytest.skip("jinaai/jina-clip-v2 not in the Hugging Face cache at those commits")
    reward.setup("cuda" if torch.cuda.is_available() else "cpu")
    img = torch.zeros(2, 3, 224, 224)
    img[:, 0] = 1.0
    s = reward.score(img, ["a plain red image", "a photo of a dog on a beach"])
    assert float(s[0]) > float(s[1])
