"""score_dataset: end to end on real files, failure isolation, captions, resume, adding rewards."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import MiroError, StoreError  # noqa: E402
from miro_core.data import to_tensor  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import STATUS, RewardStore  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    helpers.write_folder(root, 23)
    return root


def _expected_brightness(root, ids):
    return np.array([float(to_tensor(str(root / f"{i}.png")).mean()) for i in ids], np.float32)


def test_scores_match_direct_computation(folder, tmp_path):
    url = str(tmp_path / "store")
    out = score_dataset(str(folder), ["brightness", "redness"], url, batch_size=4, chunk_rows=5, progress=False)
    assert out["rows_processed"] == 23 and out["rewards"]["brightness"]["scored"] == 23
    s = RewardStore.open(url)
    ids = s.ids().tolist()
    assert ids == sorted(ids) and len(ids) == 23
    np.testing.assert_allclose(s.scores("brightness"), _expected_brightness(folder, ids), rtol=1e-6)
    meta = s.reward_metadata("brightness")
    assert meta["version"] == "1" and meta["config"] == {"scale": 1.0, "sleep": 0.0}
    assert meta["distribution"] and meta["count_scored"] == 23 and meta["uses_text"] is False
    assert s.attrs["config"]["rewards"] == {"brightness": {"scale": 1.0, "sleep": 0.0}, "redness":
                                            {"fail_on_word": "", "nan_on_word": ""}}
    assert s.attrs["history"][0]["data"] == str(folder)
    # a second run has nothing left to do
    again = score_dataset(str(folder), ["brightness"], url, progress=False)
    assert again["rows_processed"] == 0


def test_failure_isolation(folder, tmp_path):
    (folder / "img_0005.png").write_bytes(b"\x89PNG garbage")
    (folder / "img_0009.txt").write_text("a doomed caption")
    (folder / "img_0013.txt").write_text("a nan caption")
    url = str(tmp_path / "store")
    rewards = {"brightness": {}, "redness": {"fail_on_word": "doomed", "nan_on_word": "nan"}}
    score_dataset(str(folder), rewards, url, batch_size=8, chunk_rows=4, progress=False)
    s = RewardStore.open(url)
    fb = dict(s.failures("brightness"))
    assert list(fb) == ["img_0005"] and "image decode failed" in fb["img_0005"]
    fr = dict(s.failures("redness"))
    assert set(fr) == {"img_0005", "img_0009", "img_0013"}
    assert "RuntimeError" in fr["img_0009"] and "non-finite" in fr["img_0013"]
    r = s.scores("redness")
    idx = s.index_of(["img_0005", "img_0009", "img_0013"])
    assert np.isnan(r[idx]).all() and np.isfinite(np.delete(r, idx)).all()
    assert s.info()["rewards"]["redness"] == {"scored": 20, "failed": 3, "missing": 0, "truncated": 0,
                                              "short_caption": 0}
    # failures count as done: a rerun does not retry them
    assert score_dataset(str(folder), rewards, url, progress=False)["rows_processed"] == 0


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_broken_reward_raises_and_marks_nothing(folder, tmp_path, batch_size):
    """The guard counts failures over the first K samples whatever the batch size; chunks of 2 rows complete
    long before K = 8 samples, and still nothing of the job is written (a healthy reward beside it included)."""
    url = str(tmp_path / "store")
    with pytest.raises(MiroError, match=r"failed on each of the first \d+ samples") as err:
        score_dataset(str(folder), ["brightness", "broken"], url, batch_size=batch_size, chunk_rows=2, workers=0,
                      progress=False)
    import re

    seen = int(re.search(r"first (\d+) samples", str(err.value)).group(1))
    assert 8 <= seen < 8 + batch_size  # stops at the first batch that reaches K = 8 attempts
    s = RewardStore.open(url)
    assert not s.scored_mask("broken").any() and not s.scored_mask("brightness").any()
    # a rerun does the same (nothing was marked failed, so nothing is skipped)
    with pytest.raises(MiroError, match="looks broken"):
        score_dataset(str(folder), ["broken"], url, batch_size=batch_size, workers=0, progress=False)


def test_guard_threshold_is_the_job_size_when_smaller(folder, tmp_path):
    url = str(tmp_path / "store")
    with pytest.raises(MiroError, match="first 3 samples"):
        score_dataset(str(folder), ["broken"], url, batch_size=1, limit=3, workers=0, progress=False)
    # a single pending sample cannot tell a broken reward from a bad sample: it is recorded as failed
    url1 = str(tmp_path / "one")
    score_dataset(str(folder), ["broken"], url1, batch_size=1, limit=1, workers=0, progress=False)
    assert RewardStore.open(url1).reward_counts("broken")["failed"] == 1


def test_guard_passes_a_reward_that_fails_only_at_first(folder, tmp_path):
    """7 failures then a success (batch size 1): below K = 8, so the reward is trusted and the 7 are recorded."""
    for i in range(7):
        (folder / f"img_{i:04d}.txt").write_text("a doomed caption")
    url = str(tmp_path / "store")
    out = score_dataset(str(folder), {"redness": {"fail_on_word": "doomed"}}, url, batch_size=1, workers=0,
                        progress=False)
    assert out["rewards"]["redness"] == {"scored": 16, "failed": 7, "missing": 0, "truncated": 0, "short_caption": 0}


def test_retry_failed_rescores_only_failed_rows(folder, tmp_path):
    (folder / "img_0009.txt").write_text("a doomed caption")
    (folder / "img_0013.txt").write_text("another doomed caption")
    url = str(tmp_path / "store")
    score_dataset(str(folder), {"brightness": {}, "redness": {"fail_on_word": "doomed"}}, url, batch_size=4,
                  chunk_rows=4, workers=0, progress=False)
    s = RewardStore.open(url)
    before_r, before_b = s.scores("redness").copy(), s.scores("brightness").copy()
    failed = s.index_of(["img_0009", "img_0013"])
    assert sorted(dict(s.failures("redness"))) == ["img_0009", "img_0013"]
    # the cause is fixed (the option that made it fail is gone from the data): a plain rerun does nothing ...
    (folder / "img_0009.txt").write_text("a fixed caption")
    (folder / "img_0013.txt").write_text("another fixed caption")
    assert score_dataset(str(folder), {"brightness": {}, "redness": {"fail_on_word": "doomed"}}, url,
                         workers=0, progress=False)["rows_processed"] == 0
    # ... --retry-failed rescores exactly the two failed rows, nothing else
    out = score_dataset(str(folder), {"brightness": {}, "redness": {"fail_on_word": "doomed"}}, url,
                        retry_failed=True, batch_size=3, workers=0, progress=False)
    assert out["rows_processed"] == 2 and out["this_run"]["redness"]["scored"] == 2
    assert out["this_run"]["brightness"]["scored"] == 0
    s = RewardStore.open(url)
    assert s.failures("redness") == [] and s.reward_counts("redness")["scored"] == 23
    after = s.scores("redness")
    keep = np.setdiff1d(np.arange(23), failed)
    np.testing.assert_array_equal(after[keep], before_r[keep])  # bit for bit: not rescored
    assert np.isfinite(after[failed]).all() and np.isnan(before_r[failed]).all()
    np.testing.assert_array_equal(s.scores("brightness"), before_b)
    # the row that still fails gets its new reason
    (folder / "img_0013.txt").write_text("doomed again")
    s2 = RewardStore.open(url, "a")
    s2.record_failures("redness", ["img_0013"], ["old reason"])
    score_dataset(str(folder), {"redness": {"fail_on_word": "doomed"}}, url, retry_failed=True, workers=0,
                  progress=False)
    (why,) = [r for i, r in RewardStore.open(url).failures("redness") if i == "img_0013"]
    assert "cannot score prompts with 'doomed'" in why


def test_long_captions_use_short_or_count_truncated(folder, tmp_path):
    long = "one two three four five six seven eight nine ten"
    (folder / "img_0001.txt").write_text(long)
    (folder / "img_0001.short.txt").write_text("short red")
    (folder / "img_0002.txt").write_text(long)
    url = str(tmp_path / "store")
    out = score_dataset(str(folder), ["redness", "brightness"], url, batch_size=4, progress=False)
    assert out["this_run"]["redness"]["short_caption"] == 1 and out["this_run"]["redness"]["truncated"] == 1
    assert out["this_run"]["brightness"]["truncated"] == 0  # ignores text
    s = RewardStore.open(url)
    st = s.status("redness")
    assert st[s.index_of(["img_0001"])[0]] == STATUS["short_caption"]
    assert st[s.index_of(["img_0002"])[0]] == STATUS["truncated"]
    assert s.reward_metadata("redness")["count_truncated"] == 1
    assert s.short_captions()[1] == "short red"
    # the short caption was used: score = redness + 0.001 * 2 words
    img = to_tensor(str(folder / "img_0001.png"))
    expected = float(img[0].mean() - img[1:].mean()) + 0.002
    assert abs(float(s.scores("redness")[1]) - expected) < 1e-5


def test_add_reward_and_resume(folder, tmp_path):
    url = str(tmp_path / "store")
    score_dataset(str(folder), ["brightness"], url, limit=10, chunk_rows=4, progress=False)
    s = RewardStore.open(url)
    assert s.num_rows == 10
    first = s.scores("brightness").copy()
    # more data + a new reward: brightness only for the 13 new rows, redness for all 23
    out = score_dataset(str(folder), ["brightness", "redness"], url, batch_size=5, progress=False)
    assert out["this_run"]["brightness"]["scored"] == 13 and out["this_run"]["redness"]["scored"] == 23
    s = RewardStore.open(url)
    np.testing.assert_array_equal(s.scores("brightness")[:10], first)
    ids = s.ids().tolist()
    assert len(set(ids)) == 23
    np.testing.assert_allclose(s.scores("brightness"), _expected_brightness(folder, ids), rtol=1e-6)
    # a partially written job: pretend chunk 1 never got its done marks
    st = RewardStore.open(url, "a")._arr("done/redness")
    st[4:8] = np.zeros(4, np.uint8)
    out = score_dataset(str(folder), ["redness"], url, progress=False)
    assert out["rows_processed"] == 4 and out["rewards"]["redness"]["scored"] == 23


def test_version_mismatch_is_refused(folder, tmp_path):
    url = str(tmp_path / "store")
    score_dataset(str(folder), ["brightness"], url, limit=4, progress=False)
    with pytest.raises(StoreError, match="scale"):
        score_dataset(str(folder), {"brightness": {"scale": 2.0}}, url, progress=False)


def test_workers_and_memory_store_match(folder, tmp_path):
    a = str(tmp_path / "a")
    b = f"memory://scoring-{os.getpid()}/b"
    score_dataset(str(folder), ["brightness", "redness"], a, batch_size=3, chunk_rows=4, workers=0, progress=False)
    score_dataset(str(folder), ["brightness", "redness"], b, batch_size=7, chunk_rows=6, workers=2, progress=False)
    sa, sb = RewardStore.open(a), RewardStore.open(b)
    assert sa.ids().tolist() == sb.ids().tolist()
    for r in ("brightness", "redness"):
        np.testing.assert_allclose(sa.scores(r), sb.scores(r), rtol=1e-6)


def test_mixed_image_sizes(tmp_path):
    class Src(miro_core.DataSource):
        name = "mixed_test"

        def __iter__(self):
            for i in range(6):
                yield miro_core.Sample(id=f"m{i}", caption="c", image=torch.full((3, 8 + 4 * (i % 2), 8), i / 10))

    out = score_dataset(Src(), ["brightness"], str(tmp_path / "s"), batch_size=4, progress=False)
    s = RewardStore.open(str(tmp_path / "s"))
    assert out["rewards"]["brightness"]["scored"] == 6
    np.testing.assert_allclose(s.scores("brightness"), [i / 10 for i in range(6)], rtol=1e-6)


def test_workers_read_their_own_slices_and_deliver_every_wanted_row_once(folder, tmp_path):
    """Two workers read contiguous halves of the folder (nothing else); the loader yields every wanted row once."""
    from miro_core.data import resolve_data
    from miro_core.data.parts import source_parts
    from miro_core.scoring import DecodedBatches, _identity

    src = resolve_data(str(folder))
    ids = [s.id for s in src]
    parts = source_parts(src)
    pieces = parts.rank_pieces(0, 1)
    rows = [np.arange(len(ids), dtype=np.int64)]
    wanted = np.ones(len(ids), bool)
    wanted[[2, 3, 11]] = False
    ds = DecodedBatches(parts, pieces, rows, wanted, 4)
    n = len(ids)
    assert [p for p, _ in ds.worker_share(0, 2)] == [(0, 0, n // 2)]
    assert [p for p, _ in ds.worker_share(1, 2)] == [(0, n // 2, n)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=_identity)
    batches = list(loader)
    rows_seen = np.concatenate([b["rows"] for b in batches]).tolist()
    assert sorted(rows_seen) == np.flatnonzero(wanted).tolist()
    first = batches[0]
    (idx, imgs), = first["groups"]
    expected = torch.stack([to_tensor(str(folder / f"{ids[r]}.png")) for r in first["rows"]])
    assert idx.tolist() == [0, 1, 2, 3] and imgs.is_contiguous() and torch.equal(imgs, expected)


def test_auto_workers(monkeypatch, folder, tmp_path):
    from miro_core.scoring import auto_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers("cpu") == 2 and auto_workers("cuda") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert auto_workers("cpu") == 1 and auto_workers("cuda") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert auto_workers("cpu") == 0
    with pytest.raises(MiroError, match="workers"):
        score_dataset(str(folder), ["brightness"], str(tmp_path / "s"), workers=-1, progress=False)
    assert not (tmp_path / "s").exists()
