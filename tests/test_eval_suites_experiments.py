"""An experiment suite through the suite contract (registered, options round-trip, metrics.json = return value,
re-run reuses its cache), on a fake generator and the tiny preset's settings, with the real plugins."""

from __future__ import annotations

import pytest
import torch

from miro_core._plugins import reset_plugins
from miro_core.testing import SuiteContract


@pytest.fixture(autouse=True, scope="module")
def _real_plugins():
    reset_plugins(None)
    yield
    reset_plugins(None)


class TestGuidanceSweepContract(SuiteContract):
    suite_name = "guidance_sweep"
    options = {"preset": "tiny", "overrides": {"experiments": {"guidance_sweep_scales": [0.0, 3.0]},
                                               "eval": {"geneval_options": {"images_per_category": 1}}}}


def test_guidance_sweep_alone_on_a_plain_generator(tmp_path):
    """A model without rewards is the baseline; its sweep is its main evaluation at each scale."""
    import json

    from miro_core import registry
    from miro_core.testing import fake_generate

    def generate(prompts, guidance_scale=1.0, **_):  # the guidance scale sets the colour's saturation
        img = torch.zeros(len(prompts), 3, 16, 16)
        img[:, 0] = 0.3 + 0.2 * float(guidance_scale)
        img[:, 1:] = 0.3
        img[:, :, 4:12, 4:12] = 0.9
        return img.clamp(0, 1)

    suite = registry("suites").create("guidance_sweep", dict(TestGuidanceSweepContract.options))
    data = suite.run(tmp_path / "o", pipeline=generate)
    gs = data["guidance_sweep"]
    assert data["model_rewards"] == {"baseline": []} and list(gs["series"]) == ["baseline (text CFG)"]
    assert gs["scales"] == [0.0, 3.0] and "geneval/overall" in gs["metrics"]
    viv = gs["series"]["baseline (text CFG)"]["world_vividness/mean"]
    assert viv[0] != viv[1]  # the two scales are different samplers
    assert data["metrics"]["baseline (text CFG)/world_vividness/mean@w=0"] == viv[0]
    assert data["metrics"]["baseline (text CFG)/world_vividness/mean@w=3"] == viv[1]
    folder = tmp_path / "o" / "experiments" / "guidance_sweep"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(stamps) == ["baseline_baseline_3.json", "baseline_unguided_0.json"]
    again = registry("suites").create("guidance_sweep", dict(TestGuidanceSweepContract.options)).run(
        tmp_path / "o", pipeline=generate)
    assert again["guidance_sweep"] == gs
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # a re-run reuses every point
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["suite"] == "guidance_sweep"
    with pytest.raises(Exception, match="needs the model miro"):
        registry("suites").create("tradeoff", {"preset": "tiny"}).run(tmp_path / "t", pipeline=fake_generate)
