"""SciScore reward: tiny CLIPModel with its own processor in one hub-cache snapshot; formula parity; load errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.testing import RewardContract
from miro_rewards._weights import WeightsError, is_present
from miro_rewards.testing import FAKE_SHA, save_tiny_clip, write_dir_to_hub_cache

MODEL = "Jialuo21/SciScore"


@pytest.fixture(scope="module")
def sci_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sci")
    model_dir = save_tiny_clip(root / "model", seed=1, logit_scale=80.0)
    cache = root / "cache"
    write_dir_to_hub_cache(cache, MODEL, model_dir, revision=FAKE_SHA)  # refs/main -> FAKE_SHA
    return {"cache": cache, "model": model_dir}


class TestSciScoreContract(RewardContract):
    reward_name = "sciscore"

    @pytest.fixture(autouse=True)
    def _files(self, sci_files):
        self.files = sci_files

    def make_reward(self, tmp_path):  # default revision "main" resolved through refs/main
        return registry("rewards").create("sciscore", {"cache_dir": str(self.files["cache"]), "batch_size": 2})


def test_score_is_logit_scale_times_cosine(sci_files):
    from transformers import CLIPModel, CLIPProcessor

    r = registry("rewards").create("sciscore", {"cache_dir": str(sci_files["cache"])})
    r.setup("cpu")
    model = CLIPModel.from_pretrained(str(sci_files["model"])).eval()
    proc = CLIPProcessor.from_pretrained(str(sci_files["model"]))
    prompts = ["a glass of water left in the sun for a week", "ice melting on a hot pan"]
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for _ in prompts]
    with torch.no_grad():
        img = model.get_image_features(**proc(images=arrays, return_tensors="pt")).pooler_output
        txt = model.get_text_features(**proc(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")).pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (img * txt).sum(-1)
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    torch.testing.assert_close(r.score(images, prompts), expected, atol=1e-4, rtol=1e-4)
    meta = r.metadata()
    json.dumps(meta)
    assert meta["model_commit"] == FAKE_SHA and meta["processor_id"] == MODEL


def test_remote_code_and_wrong_model_type_refused(tmp_path, sci_files):
    import shutil

    local = tmp_path / "local"
    shutil.copytree(sci_files["model"], local)
    cfg = json.loads((local / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_sci.SciModel"}
    (local / "config.json").write_text(json.dumps(cfg))
    r = registry("rewards").create("sciscore", {"model_path": str(local)})
    with pytest.raises(WeightsError, match="remote code"):
        r.setup("cpu")
    cfg.pop("auto_map")
    cfg["model_type"] = "siglip"
    (local / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="model_type 'siglip'"):
        registry("rewards").create("sciscore", {"model_path": str(local)}).setup("cpu")


def test_truncated_checkpoint_is_refused(tmp_path, sci_files):
    """A checkpoint missing tensors must not load with random weights silently."""
    import shutil

    from safetensors.torch import load_file, save_file

    local = tmp_path / "local"
    shutil.copytree(sci_files["model"], local)
    state = load_file(str(local / "model.safetensors"))
    state.pop("visual_projection.weight")
    save_file(state, str(local / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing"):
        registry("rewards").create("sciscore", {"model_path": str(local)}).setup("cpu")


@pytest.mark.real_weights
def test_real_sciscore():
    r = registry("rewards").create("sciscore")
    if any(is_present(s) is None for s in r.weight_sources()):
        pytest.skip("Jialuo21/SciScore not in the Hugging Face cache (miro rewards download sciscore)")
    r.setup("cuda" if torch.cuda.is_available() else "cpu")
    s = r.score(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)), ["noise", "ice melting in the sun"])
    assert torch.isfinite(s).all()
