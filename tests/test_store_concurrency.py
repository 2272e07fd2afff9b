"""Concurrency: a reader while a writer appends and scores, two scoring jobs on disjoint shards of one store,
and a second job on the same rows refused (not interleaved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import StoreError  # noqa: E402
from miro_core._store_locks import StoreLocks, runs  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import RewardStore  # noqa: E402

HELPER = os.path.join(os.path.dirname(__file__), "test_scoring_helpers.py")


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


def _value(i: str) -> float:
    return float(int(i[1:]) * 0.5)


def test_reader_while_a_writer_appends_and_scores(tmp_path):
    """Every read sees a consistent table: num_rows ids, unique, a prefix of the final ids, and each row marked
    scored carries its final score."""
    url = str(tmp_path / "s")
    all_ids = [f"r{i:04d}" for i in range(8 * 10)]
    store = RewardStore.create(url, all_ids[:8], chunk_rows=8)
    store.ensure_reward("b", {"version": "1", "config": {}})
    store.write_scores("b", 0, [_value(i) for i in all_ids[:8]])
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        while not stop.is_set():
            try:
                r = RewardStore.open(url)
                n = r.num_rows
                ids = r.ids().tolist()
                st, sc = r.status("b"), r.scores("b")
                assert len(ids) == n and len(set(ids)) == n and ids == all_ids[:n], (n, ids[-3:])
                assert st.shape == (n,) and sc.shape == (n,)
                done = st == 1
                want = np.array([_value(i) for i in ids], np.float32)
                assert np.array_equal(sc[done], want[done]), "a row marked scored has another score"
                seen.append(n)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised in the test thread
                errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(1, 10):
            new = all_ids[8 * k : 8 * (k + 1)]
            store.append_rows(new)
            store.write_scores("b", 8 * k, [_value(i) for i in new])
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(seen) > 3 and len(set(seen)) > 2, seen  # the reader really ran during the appends
    final = RewardStore.open(url)
    assert final.num_rows == 80 and final.scored_mask("b").all()


def test_row_claims_are_exclusive_between_processes(tmp_path):
    """A second process claiming any claimed row is refused with the rows named; disjoint rows are fine."""
    url = str(tmp_path / "s")
    RewardStore.create(url, [f"x{i}" for i in range(20)], chunk_rows=4)
    locks = StoreLocks.get(url)
    locks.claim_rows("b", np.arange(4, 10), url)
    code = f"""
import sys, numpy as np
from miro_core._store_locks import StoreLocks
from miro_core import StoreError
locks = StoreLocks.get({url!r})
locks.claim_rows("b", np.arange(10, 20), {url!r})
locks.claim_rows("other", np.arange(0, 20), {url!r})
try:
    locks.claim_rows("b", np.array([2, 3, 9]), {url!r})
except StoreError as exc:
    print("REFUSED", exc)
"""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        locks.release_claims()
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED Rows 9..9 of reward 'b'" in proc.stdout and "another process" in proc.stdout
    assert runs(np.array([5, 1, 2, 3, 9, 8])) == [(1, 4), (5, 6), (8, 10)]


def _manifest(path, ids, img):
    path.write_text("".join(json.dumps({"id": i, "image": str(img), "caption": "red"}) + "\n" for i in ids))
    return path


def _helper(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, HELPER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_rows", [8, 64])
def test_two_jobs_on_disjoint_shards_of_one_store(tmp_path, chunk_rows):
    """Started together on a store that does not exist yet. chunk_rows 8: rows 16..23 share a chunk; 64: all
    rows are in one chunk, which both jobs write at their end (the chunk lock keeps both results)."""
    imgs = []
    for i, arr in enumerate(helpers.make_images(40, seed=3)):
        p = tmp_path / f"i{i}.png"
        p.write_bytes(helpers.png_bytes(arr))
        imgs.append(p)
    m0 = tmp_path / "m0.jsonl"
    m1 = tmp_path / "m1.jsonl"
    m0.write_text("".join(json.dumps({"id": f"a{i:02d}", "image": str(imgs[i]), "caption": "red"}) + "\n"
                          for i in range(20)))
    m1.write_text("".join(json.dumps({"id": f"b{i:02d}", "image": str(imgs[20 + i]), "caption": "red"}) + "\n"
                          for i in range(20)))
    url = str(tmp_path / "shared")
    common = ["--rewards", "brightness,redness", "--store", url, "--batch-size", "2", "--chunk-rows", str(chunk_rows),
              "--workers", "0", "--no-progress", "--reward-option", "brightness.sleep=0.2"]
    p0 = _helper("score", "--data", str(m0), *common)
    p1 = _helper("score", "--data", str(m1), *common)
    out0, err0 = p0.communicate(timeout=300)
    out1, err1 = p1.communicate(timeout=300)
    assert p0.returncode == 0, err0[-2000:]
    assert p1.returncode == 0, err1[-2000:]
    s = RewardStore.open(url)
    ids = s.ids().tolist()
    assert sorted(ids) == sorted([f"a{i:02d}" for i in range(20)] + [f"b{i:02d}" for i in range(20)])
    for manifest, ref_url in ((m0, tmp_path / "r0"), (m1, tmp_path / "r1")):
        score_dataset(str(manifest), ["brightness", "redness"], str(ref_url), workers=0, progress=False)
        ref = RewardStore.open(str(ref_url))
        rows = s.index_of(ref.ids().tolist())
        for r in ("brightness", "redness"):
            np.testing.assert_array_equal(s.scores(r)[rows], ref.scores(r))
            assert (s.status(r)[rows] == 1).all()
    assert len(s.attrs["history"]) == 2


@pytest.mark.slow
def test_second_job_on_the_same_rows_is_refused(tmp_path):
    root = tmp_path / "data"
    helpers.write_folder(root, 24)
    url = str(tmp_path / "s")
    argv = ["score", "--data", str(root), "--rewards", "brightness", "--store", url, "--batch-size", "2",
            "--chunk-rows", "4", "--workers", "0", "--no-progress", "--reward-option", "brightness.sleep=1.0"]
    first = _helper(*argv)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the first job is scoring (it has claimed its rows)
        try:
            if RewardStore.open(url).scored_mask("brightness").sum() >= 4:
                break
        except (StoreError, KeyError):
            pass
        time.sleep(0.1)
    second = _helper(*argv)
    out2, err2 = second.communicate(timeout=120)
    assert first.poll() is None, "the first job ended before the second one started: nothing was tested"
    assert second.returncode == 2, (out2, err2)
    assert "being scored by another process" in err2 and "Traceback" not in err2
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    s = RewardStore.open(url)
    ref = str(tmp_path / "ref")
    score_dataset(str(root), ["brightness"], ref, workers=0, progress=False)
    np.testing.assert_array_equal(s.scores("brightness"), RewardStore.open(ref).scores("brightness"))
    assert s.reward_counts("brightness")["scored"] == 24
    again = _helper(*argv)
    out3, err3 = again.communicate(timeout=120)
    assert again.returncode == 0 and "scored 0 rows" in out3, err3
