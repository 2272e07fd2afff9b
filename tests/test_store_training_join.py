"""The training data join against the real RewardStore (the training tests use a FakeStore that re-implements
binning, so without this the store -> training join was covered only end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from _miro_train_fakes import ShapesSource, miro_host  # noqa: F401
from miro_core import StoreError, registry
from miro_core.interfaces import Binner
from miro_core.store import RewardStore
from miro_core.training.config import DataConfig
from miro_core.training.data import prepare_data

pytestmark = pytest.mark.usefixtures("miro_host")


def _score(store, name, fn):
    store.ensure_reward(name, {"version": "1", "config": {}})
    ids = store.ids().tolist()
    values = np.array([fn(i) for i in ids], np.float32)
    for c in range(store.num_chunks()):
        lo, hi = store.chunk_bounds(c)
        if not store.scored_mask(name)[lo:hi].all():
            store.write_scores(name, lo, values[lo:hi])


def _aesthetic(i: str) -> float:
    return float("nan") if i == "s0005" else float(int(i[1:]) % 7)


def _pick(i: str) -> float:
    return float(-int(i[1:])) if i.startswith("s") else 0.0


def _prepare(tmp_path, store, rewards=("aesthetic", "pick")):
    cfg = DataConfig(spec="test_shapes", image_size=8, rewards=tuple(rewards), binner="quantile",
                     cache_dir=str(tmp_path / "cache"))
    te = registry("text_encoders").create("hash_text")
    ae = registry("autoencoders").create("pixel")
    from miro_core.model import ComponentSpec

    return prepare_data(cfg, te, ae, text_encoder_spec=ComponentSpec(name="hash_text"),
                        autoencoder_spec=ComponentSpec(name="pixel"), source=ShapesSource(ShapesSource.Config(n=32)),
                        store=store)


def test_levels_join_by_id_not_by_position(tmp_path):
    # store rows in another order than the source, two ids the source never yields, 8 source ids missing
    rng = np.random.default_rng(0)
    ids = [f"s{i:04d}" for i in rng.permutation(24)] + ["x1", "x2"]
    store = RewardStore.create(str(tmp_path / "store"), ids, chunk_rows=8)
    _score(store, "aesthetic", _aesthetic)
    _score(store, "pick", _pick)
    store.bin("quantile", {"num_bins": 4})
    data = _prepare(tmp_path, store)
    assert data.ids == [f"s{i:04d}" for i in range(24)]  # source order, those in the store only
    assert data.reward_names == ("aesthetic", "pick")
    index = store.id_index()
    for k, sid in enumerate(data.ids):
        row = index[sid]
        for j, r in enumerate(("aesthetic", "pick")):
            b = int(store.bins("quantile", r)[row])
            want = np.nan if b < 0 else b / 3.0
            got = float(data.levels[k, j])
            assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want), (sid, r, b, got)
    k5 = data.ids.index("s0005")
    assert np.isnan(float(data.levels[k5, 0])) and not np.isnan(float(data.levels[k5, 1]))  # failed = missing
    # pick = -index: a higher sample index is a lower level (checks the level belongs to the id, not the row)
    pick = data.levels[:, 1].numpy()
    assert np.all(np.diff(pick) <= 0) and pick[0] == 1.0 and pick[-1] == 0.0
    assert data.binner_states["pick"] == store.bin_state("quantile", "pick")
    assert Binner.levels(np.array([3], np.int16), 4)[0] == 1.0


def test_stale_bins_stop_training_until_rebinned(tmp_path):
    url = str(tmp_path / "store")
    store = RewardStore.create(url, [f"s{i:04d}" for i in range(16)], chunk_rows=8)
    _score(store, "aesthetic", _aesthetic)
    store.bin("quantile", {"num_bins": 4})
    assert len(_prepare(tmp_path, store, ("aesthetic",))) == 16
    store.append_rows([f"s{i:04d}" for i in range(16, 32)])
    _score(store, "aesthetic", _aesthetic)
    with pytest.raises(StoreError, match=r"stale.*miro bin --store"):
        _prepare(tmp_path, RewardStore.open(url), ("aesthetic",))
    store.bin("quantile", {"num_bins": 4})
    data = _prepare(tmp_path, RewardStore.open(url), ("all",))
    assert len(data) == 32 and data.reward_names == ("aesthetic",)
    lv = data.levels[:, 0].numpy()
    assert np.isnan(lv).sum() == 1 and np.isnan(lv[5])  # only the failed row; the 16 new rows have levels
