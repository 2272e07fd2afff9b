"""RewardStore: layout, rows, rewards, crash-safety, bins, provenance, fsspec URLs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import zarr

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import StoreError  # noqa: E402
from miro_core.store import STATUS, RewardStore  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


def _ids(n):
    return [f"s{i:03d}" for i in range(n)]


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://miro-test-{os.getpid()}-{id(request)}/store"


def test_create_open_rows(url):
    s = RewardStore.create(url, _ids(10), [f"cap {i}" for i in range(10)], chunk_rows=4, config={"job": "t"})
    assert s.num_rows == 10 and s.chunk_rows == 4
    r = RewardStore.open(url)
    assert r.ids().tolist() == _ids(10)
    assert r.captions()[3] == "cap 3"
    assert r.short_captions() is None
    assert r.index_of(["s007", "s001"]).tolist() == [7, 1]
    with pytest.raises(StoreError, match="not in store"):
        r.index_of(["nope"])
    assert r.attrs["format_version"] == 1 and r.attrs["config"] == {"job": "t"}
    with pytest.raises(StoreError, match="read-only"):
        r.append_rows(["x"])
    with pytest.raises(StoreError, match="already exists"):
        RewardStore.create(url, _ids(3))
    assert RewardStore.create(url, _ids(3), overwrite=True).num_rows == 3


def test_errors_on_bad_locations(tmp_path):
    with pytest.raises(StoreError, match="No reward store"):
        RewardStore.open(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="No reward store"):
        RewardStore.open(str(tmp_path / "empty"), "a")
    zarr.open_group(str(tmp_path / "other"), mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a MIRO reward store"):
        RewardStore.open(str(tmp_path / "other"))
    with pytest.raises(StoreError, match="Duplicate sample id"):
        RewardStore.create(str(tmp_path / "dup"), ["a", "b", "a"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="writable|create"):
        RewardStore.create(str(blocker / "store"), ["a"])


def test_append_grows_every_array_and_consolidates(url):
    s = RewardStore.create(url, _ids(5), ["c"] * 5, chunk_rows=4)
    s.ensure_reward("brightness", {"version": "1", "config": {}})
    s.write_scores("brightness", 0, np.arange(4, dtype=np.float32))
    s.append_rows(["n1", "n2", "n3"], ["x", "y", "z"], short_captions=["sx", None, "sz"])
    assert s.num_rows == 8
    with pytest.raises(StoreError, match="Duplicate"):
        s.append_rows(["n1"])
    r = RewardStore.open(url)  # read path uses the consolidated metadata
    assert r._group["scores/brightness"].shape[0] >= 8
    assert r.ids().tolist()[-3:] == ["n1", "n2", "n3"]
    assert r.short_captions().tolist() == [""] * 5 + ["sx", "", "sz"]
    np.testing.assert_array_equal(r.scored_mask("brightness"), [True] * 4 + [False] * 4)
    assert np.isnan(r.scores("brightness")[4:]).all()
    consolidated = r._group.metadata.consolidated_metadata
    assert consolidated is not None and consolidated.metadata["ids"].shape[0] >= 8


def test_interrupted_append_is_not_counted(tmp_path):
    url = str(tmp_path / "s")
    s = RewardStore.create(url, _ids(4), chunk_rows=2)
    # simulate a crash after the resize and the id write but before num_rows was committed
    g = zarr.open_group(url, mode="r+")
    g["ids"].resize((6,))
    g["ids"][4:6] = np.array(["junk1", "junk2"], dtype=np.dtypes.StringDType())
    s = RewardStore.open(url, "a")
    assert s.num_rows == 4 and "junk1" not in s.ids()
    s.append_rows(["n1"])
    assert s.ids().tolist() == _ids(4) + ["n1"]


def test_write_scores_alignment_and_done_last(url):
    s = RewardStore.create(url, _ids(10), chunk_rows=4)
    s.ensure_reward("r", {"version": "1", "config": {}})
    with pytest.raises(StoreError, match="chunk-aligned"):
        s.write_scores("r", 2, [1.0, 2.0])
    with pytest.raises(StoreError, match="chunk-aligned"):
        s.write_scores("r", 0, [1.0, 2.0, 3.0])
    s.write_scores("r", 8, [1.0, float("nan")])  # last partial chunk is aligned at the end
    assert s.failures("r") == [("s009", "non-finite score")]
    assert s.status("r")[8:].tolist() == [STATUS["scored"], STATUS["failed"]]
    # scores on disk without their done marks (a crash in between) are still pending -> rescored
    s._arr("scores/r")[0:4] = np.ones(4, np.float32)
    assert not s.scored_mask("r")[:4].any()
    s.record_failures("r", ["s000"], ["corrupt"])
    assert ("s000", "corrupt") in s.failures("r") and s.scored_mask("r")[0]
    info = s.info()
    assert info["rewards"]["r"] == {"scored": 1, "failed": 2, "missing": 7, "truncated": 0, "short_caption": 0}


def test_reward_version_mismatch_and_drop(url):
    s = RewardStore.create(url, _ids(3), chunk_rows=2)
    meta = {"reward": "r", "version": "1", "config": {"a": 1}, "distribution": "x", "distribution_version": "0.1"}
    s.ensure_reward("r", meta)
    s.ensure_reward("r", {**meta, "distribution_version": "0.2"})  # plugin upgrade, same reward version: ok
    with pytest.raises(StoreError, match="different reward version"):
        s.ensure_reward("r", {**meta, "version": "2"})
    with pytest.raises(StoreError, match="config"):
        s.ensure_reward("r", {**meta, "config": {"a": 2}})
    attrs = s.reward_metadata("r")
    assert attrs["distribution"] == "x" and attrs["config"] == {"a": 1} and attrs["count_scored"] == 0
    s.drop_reward("r")
    assert s.rewards() == []
    s.ensure_reward("r", {**meta, "version": "2"})
    assert s.reward_metadata("r")["version"] == "2"


def test_bin_rebin_levels_subset(url):
    n = 50
    s = RewardStore.create(url, _ids(n), chunk_rows=16)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=n).astype(np.float32)
    scores[7] = np.nan
    for name, vals in (("a", scores), ("b", -scores)):
        s.ensure_reward(name, {"version": "1", "config": {}})
        for c in range(s.num_chunks()):
            lo, hi = s.chunk_bounds(c)
            s.write_scores(name, lo, vals[lo:hi])
    before = {r: (s.scores(r).copy(), s.status(r).copy()) for r in s.rewards()}
    states = s.bin("equal_width_test", {"num_bins": 4})
    assert set(states) == {"a", "b"} and s.binnings() == {"equal_width_test": ["a", "b"]}
    bins = s.bins("equal_width_test", "a")
    assert bins.dtype == np.int16 and bins[7] == -1 and bins.max() == 3 and bins[bins >= 0].min() == 0
    attrs = s.bin_attrs("equal_width_test", "a")
    assert attrs["num_bins"] == 4 and attrs["calibration_size"] == n - 1 and attrs["seed"] == 0
    assert s.bin_state("equal_width_test", "a") == states["a"]
    lv = s.levels(["b", "a"], "equal_width_test")
    assert lv.shape == (n, 2) and lv.dtype == np.float32 and np.isnan(lv[7]).all()
    np.testing.assert_allclose(lv[:, 1], np.where(bins >= 0, bins / 3.0, np.nan))
    np.testing.assert_array_equal(s.levels(["a"], "equal_width_test", rows=[3, 9])[:, 0], lv[[3, 9], 1])
    # rebin with other options and a seeded calibration subset: scores untouched
    s.bin("equal_width_test", {"num_bins": 8}, rewards=["a"], calibration_size=10, seed=3)
    attrs = s.bin_attrs("equal_width_test", "a")
    assert attrs["num_bins"] == 8 and attrs["calibration_size"] == 10 and attrs["seed"] == 3
    s.bin("equal_width_test", {"num_bins": 8}, rewards=["a"], calibration_size=10, seed=3)
    assert s.bin_attrs("equal_width_test", "a")["state"] == attrs["state"]  # same seed -> same subset
    for r, (sc, st) in before.items():
        np.testing.assert_array_equal(s.scores(r), sc)
        np.testing.assert_array_equal(s.status(r), st)
    with pytest.raises(StoreError, match="no scores"):
        s.bin("equal_width_test", rewards=["c"])
    with pytest.raises(StoreError, match="miro bin"):
        s.levels(["a"], "quantile_x")
    r = RewardStore.open(url)
    json.dumps(r.info())
    assert r.info()["binners"] == {"equal_width_test": ["a", "b"]}


# ------------------------------------------------------------------------------------------- stale bins
def _score_all(s, name, values):
    s.ensure_reward(name, {"version": "1", "config": {}})
    for c in range(s.num_chunks()):
        lo, hi = s.chunk_bounds(c)
        if not s.scored_mask(name)[lo:hi].all():
            s.write_scores(name, lo, values[lo:hi])


def test_bins_record_rows_and_fingerprint_and_stale_reads_fail(url):
    """The issue's sequence: score 16 rows, bin, score 16 more -> reading levels is an error naming `miro bin`."""
    from miro_core.store import scores_fingerprint

    rng = np.random.default_rng(1)
    vals = rng.normal(size=32).astype(np.float32)
    s = RewardStore.create(url, _ids(16), chunk_rows=8)
    _score_all(s, "a", vals[:16])
    s.bin("equal_width_test", {"num_bins": 4})
    attrs = s.bin_attrs("equal_width_test", "a")
    assert attrs["num_rows"] == 16 and attrs["scores_fingerprint"] == scores_fingerprint(vals[:16])
    assert s.stale_bins("equal_width_test") == {}
    before = s.levels(["a"], "equal_width_test")
    assert np.isfinite(before).all()
    s.append_rows([f"t{i:03d}" for i in range(16)])
    _score_all(s, "a", vals)
    r = RewardStore.open(url)
    assert "16 rows and the store now has 32" in r.stale_bins("equal_width_test")["a"]
    with pytest.raises(StoreError, match=r"stale.*fitted on 16 rows.*miro bin --store .* --binner equal_width_test"):
        r.levels(["a"], "equal_width_test")
    with pytest.raises(StoreError, match="stale"):
        r.levels(["a"], "equal_width_test", rows=[0, 1])  # even rows that were binned: the bins no longer fit
    assert r.info()["stale_bins"] == {"equal_width_test": {"a": r.stale_bins("equal_width_test")["a"]}}
    s.bin("equal_width_test", {"num_bins": 4})
    lv = RewardStore.open(url).levels(["a"], "equal_width_test")
    assert lv.shape == (32, 1) and np.isfinite(lv).all()  # the 16 new rows are not "missing score"
    assert RewardStore.open(url).info()["stale_bins"] == {}


def test_bins_stale_when_scores_change_with_same_rows(url):
    vals = np.linspace(0, 1, 8, dtype=np.float32)
    s = RewardStore.create(url, _ids(8), chunk_rows=4)
    _score_all(s, "a", vals)
    s.ensure_reward("b", {"version": "1", "config": {}})
    _score_all(s, "b", vals)
    s.bin("equal_width_test", {"num_bins": 2})
    changed = vals.copy()
    changed[4:8] = changed[4:8][::-1]  # same set of values, other rows: only a fingerprint of the column sees it
    s.write_scores("a", 4, changed[4:8])
    assert set(s.stale_bins("equal_width_test")) == {"a"}
    assert "scores changed after binning" in s.stale_bins("equal_width_test")["a"]
    s.levels(["b"], "equal_width_test")  # other rewards stay readable
    with pytest.raises(StoreError, match="--rewards a"):
        s.levels(["a", "b"], "equal_width_test")


def test_bins_without_fingerprint_are_stale(url):
    s = RewardStore.create(url, _ids(4), chunk_rows=4)
    _score_all(s, "a", np.arange(4, dtype=np.float32))
    s.bin("equal_width_test", {"num_bins": 2})
    arr = s._arr("bins/equal_width_test/a")
    legacy = {k: v for k, v in arr.attrs.asdict().items() if k not in ("num_rows", "scores_fingerprint")}
    arr.attrs.clear()
    arr.attrs.update(legacy)
    with pytest.raises(StoreError, match="older miro"):
        s.levels(["a"], "equal_width_test")


def test_scores_fingerprint_canonical_nan_and_order():
    from miro_core.store import scores_fingerprint

    a = np.array([1.0, np.nan, 2.0], np.float32)
    b = a.copy()
    b.view(np.uint32)[1] = 0x7FC00001  # another NaN payload: the same "missing"
    assert scores_fingerprint(a) == scores_fingerprint(b)
    assert scores_fingerprint(a) != scores_fingerprint(a[::-1])
    assert scores_fingerprint(a) != scores_fingerprint(np.array([1.0, 0.0, 2.0], np.float32))
    assert scores_fingerprint(a) != scores_fingerprint(a[:2])


# -------------------------------------------------------------------------------------- hostile stores
def test_crafted_store_with_pickle_array_is_refused_and_never_decoded(tmp_path):
    """A store whose 'ids' is a zarr v2 object array with a pickle filter: a payload that would create a
    file when unpickled. Opening refuses the store with a clear error; the file is not created."""
    import pickle

    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    root = tmp_path / "evil"
    (root / "ids").mkdir(parents=True)
    attrs = {"miro_store_format": "miro-reward-store", "format_version": 1, "num_rows": 1, "chunk_rows": 1}
    (root / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    (root / "ids" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None, "fill_value": None,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}))
    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    (root / "ids" / "0").write_bytes(pickle.dumps(arr, protocol=5))
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="not a valid MIRO reward store.*no 'ids' array"):
            RewardStore.open(str(root), mode)
    assert not target.exists()


def test_pickle_bytes_in_store_attributes_are_inert(tmp_path):
    """Attributes are JSON: a pickle payload stored in one is just a string, never unpickled."""
    import pickle

    target = tmp_path / "pwned_attr"

    class Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    url = str(tmp_path / "s")
    s = RewardStore.create(url, _ids(2), chunk_rows=2)
    blob = pickle.dumps(Payload()).decode("latin-1")
    zarr.open_group(url, mode="r+").attrs.update({"config": {"x": blob}, "history": [{"data": blob}]})
    s.ensure_reward("r", {"version": "1", "config": {"payload": blob}})
    r = RewardStore.open(url)
    info = r.info()
    assert r.attrs["config"]["x"] == blob and r.reward_metadata("r")["config"]["payload"] == blob
    assert info["num_rows"] == 2 and not target.exists()


def test_store_with_wrong_dtype_or_short_arrays_is_refused(tmp_path):
    url = str(tmp_path / "s")
    s = RewardStore.create(url, _ids(4), chunk_rows=2)
    s.ensure_reward("r", {"version": "1", "config": {}})
    g = zarr.open_group(url, mode="r+")
    g.create_array("scores/r", shape=(4,), chunks=(2,), dtype="int64", overwrite=True)
    zarr.consolidate_metadata(url)  # what a reader sees
    with pytest.raises(StoreError, match=r"scores/r.*dtype int64"):
        RewardStore.open(url)
    g.create_array("scores/r", shape=(4,), chunks=(2,), dtype="float32", overwrite=True)
    g.attrs["num_rows"] = 9
    with pytest.raises(StoreError, match="fewer than the 9 committed rows"):
        RewardStore.open(url, "a")
    g.attrs["num_rows"] = "lots"
    with pytest.raises(StoreError, match="num_rows"):
        RewardStore.open(url)
