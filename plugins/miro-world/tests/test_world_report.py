"""``miro_world.report.bin_composition``: what the bottom / top bins of a scored world table are made of."""

from __future__ import annotations

import numpy as np
import pytest

from miro_core import ConfigError
from miro_core.scoring import score_dataset
from miro_core.store import RewardStore
from miro_world.report import bin_composition
from miro_world.source import WorldSource, make_sample


def test_bin_composition_matches_the_regenerated_ground_truth(tmp_path):
    url = str(tmp_path / "store.zarr")
    spec = "world:num_samples=160,image_size=16,p_backdrop=0.3"
    score_dataset(spec, ["world_vividness"], url, batch_size=64, progress=False, data_spec=spec)
    RewardStore.open(url, "a").bin("quantile", {"num_bins": 4})
    out = bin_composition(url)
    v = out["rewards"]["world_vividness"]
    assert v["num_bins"] == 4 and out["all"]["rows"] == 160
    # recompute the top bin's backdrop share by hand from the ids and the same world config
    store = RewardStore.open(url)
    cfg = WorldSource.Config(num_samples=160, image_size=16, p_backdrop=0.3)
    top = np.asarray(store.bins("quantile", "world_vividness")) == 3
    truth = [make_sample(0, int(str(i).rsplit("-", 1)[1]), cfg).meta["scene"]["backdrop"] is not None for i in store.ids()]
    assert v["top_bin"]["rows"] == int(top.sum())
    assert v["top_bin"]["backdrop"] == pytest.approx(np.mean(np.array(truth)[top]))
    assert out["all"]["backdrop"] == pytest.approx(np.mean(truth))
    # the vividness reward puts saturated backdrops at the top (what docs/results explain MIRO's samples with)
    assert v["top_bin"]["backdrop"] > v["bottom_bin"]["backdrop"]
    assert sum(v["top_bin"]["caption"].values()) == pytest.approx(1.0)


def test_bin_composition_errors(tmp_path):
    url = str(tmp_path / "store.zarr")
    spec = "world:num_samples=16,image_size=16"
    score_dataset(spec, ["world_vividness"], url, batch_size=16, progress=False, data_spec=spec)
    with pytest.raises(ConfigError, match="no `quantile` bins"):
        bin_composition(url)
