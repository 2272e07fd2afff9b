"""Store preparation at scale: rank 0 holds hashes, not ids and captions (issue 12).

The ids pass spools each rank's ids and captions to ``<store>/.miro-spool/<job>/``; rank 0 decides the rows
from 64-bit id hashes and copies the new rows block by block. These tests check the memory of that (tracemalloc
against the size of the captions), that the rows equal the source in its order (the source itself is the
reference), that duplicates / unusable ids / hash clashes are handled as before, and the streaming append of
the store (commit at the end, nothing committed on failure).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from miro_core import DataSource, Sample, config
from miro_core._errors import MiroError, StoreError
from miro_core.data.parts import source_parts
from miro_core.scoring import _prepare_store, _read_texts
from miro_core.store import IdIndex, RewardStore, hash_ids


class LongCaptions(DataSource):
    """``n`` samples with ``caption_len``-character captions and no image (the ids pass never decodes one)."""

    name = "test_long_captions"

    @config
    class Config:
        n: int = 100
        caption_len: int = 2000
        bad: tuple = ()  # positions whose id is unusable
        dup: tuple = ()  # positions that repeat the id of position 0

    def _id(self, i: int) -> str:
        if i in self.config.bad:
            return f"bad\x01{i}"
        if i in self.config.dup:
            return "row-0"
        return f"row-{i}"

    def caption(self, i: int) -> str:
        base = f"caption {i} "
        return (base * (self.config.caption_len // len(base) + 1))[: self.config.caption_len]

    def __getitem__(self, i: int) -> Sample:
        return Sample(id=self._id(i), caption=self.caption(i), image=None)

    def __len__(self) -> int:
        return self.config.n

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _src(**kw) -> LongCaptions:
    return LongCaptions(LongCaptions.Config(**kw))


def _prepare(src, url, world_size=1, limit=None):
    """The ids pass of every rank, then rank 0's preparation (what score_dataset does, without rewards)."""
    parts = source_parts(src)
    shares = [parts.rank_pieces(r, world_size, limit) for r in range(world_size)]
    texts = [_read_texts(parts, shares[r], limit, url, "job", r) for r in range(world_size)]
    return _prepare_store(url, "job", parts, shares, texts, {}, limit, 512, {"data": "test"})


def test_rank_zero_holds_hashes_not_the_captions(tmp_path):
    n, cap = 16000, 5000  # 80 MB of captions
    src = _src(n=n, caption_len=cap)
    url = str(tmp_path / "s.zarr")
    tracemalloc.start()
    try:
        store, rows = _prepare(src, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # hashes, flags and rows are ~40 bytes a row (0.8 MB); a block of text is at most 4 MB (a few copies of it
    # exist while zarr encodes it); the whole data set's captions (what rank 0 held before) are 40 MB
    assert peak < 0.5 * n * cap, f"peak {peak / 1e6:.1f} MB for {n * cap / 1e6:.0f} MB of captions"
    s = RewardStore.open(url)
    assert s.num_rows == n
    assert s.ids().tolist() == [f"row-{i}" for i in range(n)]
    caps = s.captions()
    for i in (0, 1, 4095, 4096, 8191, n - 1):
        assert caps[i] == src.caption(i)
    np.testing.assert_array_equal(rows[0][0], np.arange(n))
    assert not (tmp_path / "s.zarr" / ".miro-spool").exists()  # the spool is removed


def test_memory_is_flat_in_the_number_of_rows(tmp_path):
    """Four times the rows: the peak grows by the ~40 bytes a row of hashes and rows, not by the captions (the
    rows of a caption list cost ~100 bytes + the text; both sizes are past one block, 4096 rows)."""
    peaks = {}
    _prepare(_src(n=100, caption_len=300), str(tmp_path / "warm.zarr"))  # imports and caches outside the count
    for n in (12000, 48000):
        tracemalloc.start()
        try:
            _prepare(_src(n=n, caption_len=100), str(tmp_path / f"s{n}.zarr"))
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    per_row = (peaks[48000] - peaks[12000]) / 36000
    assert per_row < 100, f"{per_row:.0f} bytes per row (peaks {peaks})"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rows_duplicates_and_unusable_ids_match_the_source_order(tmp_path, world_size):
    n = 50
    src = _src(n=n, caption_len=10, bad=(3, 40), dup=(7, 31))
    url = str(tmp_path / "s.zarr")
    store, rows = _prepare(src, url, world_size)
    s = RewardStore.open(url)
    # the reference: walk the source in order, keep the first of each id, skip unusable ones
    want, first = [], {}
    for i in range(n):
        sid = src[i].id
        if i in (3, 40) or sid in first:
            continue
        first[sid] = i
        want.append(sid)
    assert s.ids().tolist() == want
    rej = s.rejected()
    assert rej["count"] == 4 and rej["by_reason"] == {"unusable id": 2, "duplicate id": 2}
    ex = rej["by_data"]["test"]["examples"]
    assert [e[1].split(":")[0] for e in ex] == ["unusable id", "duplicate id", "duplicate id", "unusable id"]
    assert "sample 7 of the data repeats the id of sample 0" in ex[1][1]
    # every rank's positions map to the row of their id (duplicates and unusable ids: -1)
    parts = source_parts(src)
    index = {sid: r for r, sid in enumerate(want)}
    for r in range(world_size):
        for (_, lo, hi), got in zip(parts.rank_pieces(r, world_size, None), rows[r]):
            exp = [(-1 if (i in (3, 40) or i in (7, 31)) else index[src[i].id]) for i in range(lo, hi)]
            assert got.tolist() == exp


def test_a_second_job_appends_only_the_new_ids_and_maps_the_old_ones(tmp_path):
    url = str(tmp_path / "s.zarr")
    _prepare(_src(n=30, caption_len=5), url)
    before = RewardStore.open(url).ids().tolist()
    _, rows = _prepare(_src(n=45, caption_len=5), url)
    s = RewardStore.open(url)
    assert s.ids().tolist() == before + [f"row-{i}" for i in range(30, 45)]
    assert rows[0][0].tolist() == list(range(45))


def test_limit_counts_positions_in_the_source_order(tmp_path):
    url = str(tmp_path / "s.zarr")
    _, rows = _prepare(_src(n=40, caption_len=5, bad=(2,)), url, limit=10)
    assert RewardStore.open(url).ids().tolist() == [f"row-{i}" for i in range(10) if i != 2]


def test_two_ids_with_one_hash_are_an_error_not_a_merge(tmp_path, monkeypatch):
    import miro_core.store as store_mod

    weak = lambda ids: np.array([len(str(i)) for i in ids], dtype=np.uint64)  # noqa: E731 - clashes on purpose
    monkeypatch.setattr(store_mod, "hash_ids", weak)
    with pytest.raises(MiroError, match="share a 64-bit hash"):
        _prepare(_src(n=12, caption_len=5), str(tmp_path / "s.zarr"))


def test_the_spool_does_not_outlive_a_failed_ids_pass(tmp_path):
    from miro_core.scoring import score_dataset

    url = tmp_path / "s.zarr"
    with pytest.raises(MiroError, match="has a usable id"):
        score_dataset(_src(n=5, caption_len=5, bad=(0, 1, 2, 3, 4)), ["world_sharpness"], str(url),
                      workers=0, progress=False)
    assert not url.exists()


def test_the_next_job_removes_the_spool_of_a_killed_job_and_keeps_a_live_one(tmp_path, caplog):
    import os
    import time

    from miro_core.scoring import SPOOL_STALE_S, score_dataset

    url = tmp_path / "s.zarr"
    killed, live = url / ".miro-spool" / "killedjob", url / ".miro-spool" / "livejob"
    for d, age in ((killed, SPOOL_STALE_S + 60), (live, SPOOL_STALE_S - 600)):
        d.mkdir(parents=True)
        f = d / "r0.jsonl.tmp"
        f.write_text('["a", "b", null]\n')
        stamp = time.time() - age
        os.utime(f, (stamp, stamp))
    done = live / "r1.jsonl"  # a rank that finished long ago: the job's newest file decides
    done.write_text("")
    os.utime(done, (time.time() - 10 * SPOOL_STALE_S,) * 2)
    with caplog.at_level("WARNING", logger="miro_core.scoring"), pytest.raises(MiroError, match="has a usable id"):
        score_dataset(_src(n=3, caption_len=5, bad=(0, 1, 2)), ["world_sharpness"], str(url), workers=0,
                      progress=False)
    assert not killed.exists()
    assert (live / "r0.jsonl.tmp").exists()  # a job that wrote within the window may still be running
    assert "killedjob" in caplog.text and "livejob" not in caplog.text


# -- the streaming append of the store -------------------------------------------------------------------
def _blocks(ids, size):
    for s in range(0, len(ids), size):
        yield ids[s:s + size], [f"c {i}" for i in ids[s:s + size]], None


def test_append_blocks_commits_at_the_end_and_not_on_failure(tmp_path):
    url = str(tmp_path / "s.zarr")
    s = RewardStore.create(url, ["a", "b"], ["ca", "cb"], chunk_rows=4)
    s.ensure_reward("r", {"version": 1})

    def broken():
        yield from _blocks([f"x{i}" for i in range(6)], 3)
        raise OSError("disk went away")

    with pytest.raises(OSError):
        s.append_blocks(10, broken())
    s = RewardStore.open(url, "a")
    assert s.ids().tolist() == ["a", "b"]  # nothing committed
    with pytest.raises(StoreError, match="Duplicate sample id 'a'"):
        s.append_blocks(3, _blocks(["y0", "a", "y1"], 2))
    with pytest.raises(StoreError, match="unique"):
        s.append_blocks(3, _blocks(["y0", "y1", "y0"], 2))
    assert RewardStore.open(url).ids().tolist() == ["a", "b"]
    start = s.append_blocks(7, _blocks([f"z{i}" for i in range(7)], 3))
    s = RewardStore.open(url)
    assert start == 2 and s.ids().tolist() == ["a", "b"] + [f"z{i}" for i in range(7)]
    assert s.captions().tolist()[2:] == [f"c z{i}" for i in range(7)]
    assert (s.status("r")[2:] == 0).all() and np.isnan(s.scores("r")[2:]).all()  # new rows are pending
    np.testing.assert_array_equal(s.index_of(["z6", "a"]), [8, 0])
    with pytest.raises(StoreError, match="'nope' is not in store"):
        s.index_of(["a", "nope"])


def test_id_index_against_a_dict():
    ids = [f"id-{i}" for i in range(1000)] + ["é", "日本", "a b"]
    idx = IdIndex(hash_ids(ids))
    ref = {x: i for i, x in enumerate(ids)}
    probe = ids[::7] + ["missing", ""]
    assert idx.rows_of(probe).tolist() == [ref.get(x, -1) for x in probe]
    with pytest.raises(StoreError, match="share a 64-bit hash"):
        IdIndex(hash_ids(["a", "b", "a"]))
