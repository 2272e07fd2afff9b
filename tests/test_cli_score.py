"""`miro score`, `miro bin`, `miro store info`: exit codes, messages, kill -9 resume, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core.cli import main  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import RewardStore  # noqa: E402

HELPER = os.path.join(os.path.dirname(__file__), "test_scoring_helpers.py")
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    helpers.write_folder(root, 12)
    return root


def _miro(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_score_info_bin_roundtrip(folder, tmp_path, capsys):
    url = str(tmp_path / "store")
    rc, out, err = _miro(capsys, "score", "--data", str(folder), "--rewards", "brightness,redness", "--store", url,
                         "--batch-size", "5", "--no-progress", "--reward-option", "brightness.scale=2.0")
    assert rc == 0, err
    assert "brightness: 12 scored, 0 failed, 0 missing" in out
    rc, out, _ = _miro(capsys, "store", "info", url, "--json")
    info = json.loads(out)
    assert rc == 0 and info["num_rows"] == 12
    assert info["rewards"]["redness"] == {"scored": 12, "failed": 0, "missing": 0, "truncated": 0, "short_caption": 0}
    assert info["binners"] == {}
    assert RewardStore.open(url).reward_metadata("brightness")["config"]["scale"] == 2.0
    rc, out, err = _miro(capsys, "bin", "--store", url, "--binner", "equal_width_test", "--bins", "3",
                         "--rewards", "redness")
    assert rc == 0, err
    rc, out, _ = _miro(capsys, "store", "info", url)
    assert "redness: 12 scored, 0 failed, 0 missing" in out and "bins/equal_width_test: redness" in out
    assert RewardStore.open(url).bin_attrs("equal_width_test", "redness")["num_bins"] == 3


@pytest.mark.parametrize(
    "rewards_arg, message",
    [
        ("brightnes", "Did you mean 'brightness'"),
        ("brightness,,redness", "is malformed (an empty item)"),
        (" ", "is malformed"),
        ("brightness, redness", "is malformed"),
        ("all", "not accepted here"),
        ("brightness,brightness", "more than once"),
    ],
)
def test_bad_rewards_exit_2(folder, tmp_path, capsys, rewards_arg, message):
    rc, _, err = _miro(capsys, "score", "--data", str(folder), "--rewards", rewards_arg, "--store",
                       str(tmp_path / "s"), "--no-progress")
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing created for a bad request


def test_other_user_errors_exit_2(folder, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (["score", "--data", str(folder), "--rewards", "brightness", "--store", str(blocker / "s")], "writable"),
        (["score", "--data", str(tmp_path / "nope"), "--rewards", "brightness", "--store", str(tmp_path / "s")],
         "Cannot interpret --data"),
        (["score", "--data", str(folder), "--rewards", "brightness", "--store", str(tmp_path / "s"),
          "--reward-option", "redness.x=1"], "not in --rewards"),
        (["score", "--data", str(folder), "--rewards", "brightness", "--store", str(tmp_path / "s"),
          "--reward-option", "brightness.bogus=1"], "unknown key"),
        (["score", "--data", str(folder), "--rewards", "brightness", "--store", str(tmp_path / "s"),
          "--workers", "lots"], "'auto' or an integer"),
        (["store", "info", str(tmp_path / "missing")], "No reward store"),
        (["bin", "--store", str(tmp_path / "missing"), "--binner", "equal_width_test"], "No reward store"),
        (["bin", "--store", str(tmp_path / "missing"), "--binner", "quantil"], "Unknown binner"),
    ]
    for argv, message in cases:
        rc, _, err = _miro(capsys, *argv, *(["--no-progress"] if argv[0] == "score" else []))
        assert rc == 2 and message in err and "Traceback" not in err, (argv, err)
    url = str(tmp_path / "v")
    assert _miro(capsys, "score", "--data", str(folder), "--rewards", "brightness", "--store", url, "--no-progress")[0] == 0
    rc, _, err = _miro(capsys, "score", "--data", str(folder), "--rewards", "brightness", "--store", url,
                       "--reward-option", "brightness.scale=3", "--no-progress")
    assert rc == 2 and "different reward version or configuration" in err
    rc, _, err = _miro(capsys, "bin", "--store", url, "--binner", "equal_width_test", "--rewards", "redness")
    assert rc == 2 and "no scores" in err


def _run_helper(*argv, **kw):
    return subprocess.Popen([sys.executable, HELPER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _done_rows(url):
    try:
        s = RewardStore.open(url)
        return int(s.scored_mask("brightness").sum()) if "brightness" in s.rewards() else 0
    except miro_core.MiroError:
        return 0


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "data"
    helpers.write_folder(root, 40)
    url = str(tmp_path / "killed")
    argv = ["score", "--data", str(root), "--rewards", "brightness,redness", "--store", url, "--batch-size", "2",
            "--chunk-rows", "4", "--reward-option", "brightness.sleep=0.15", "--no-progress"]
    proc = _run_helper(*argv)
    deadline = time.time() + 90
    while _done_rows(url) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _done_rows(url)
    assert 8 <= partial < 40
    killed = RewardStore.open(url)
    # a row is rescored while any of its rewards is pending (a kill can fall between two rewards' chunk writes)
    done_before = killed.scored_mask("brightness") & killed.scored_mask("redness")
    scores_before = {r: killed.scores(r) for r in ("brightness", "redness")}
    bright_before = int(killed.scored_mask("brightness").sum())  # (a store handle reads lazily: snapshot now)
    proc = _run_helper(*argv, "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    # the resumed run scored exactly the rows that were not done when it was killed
    assert summary["rows_processed"] == 40 - int(done_before.sum())
    assert summary["this_run"]["brightness"]["scored"] == 40 - bright_before
    ref = str(tmp_path / "ref")
    score_dataset(str(root), {"brightness": {"sleep": 0.15}, "redness": {}}, ref, batch_size=8, chunk_rows=4,
                  progress=False)
    a, b = RewardStore.open(url), RewardStore.open(ref)
    assert a.ids().tolist() == b.ids().tolist() and len(set(a.ids().tolist())) == 40
    for r in ("brightness", "redness"):
        np.testing.assert_array_equal(a.scores(r), b.scores(r))
        assert a.scored_mask(r).all() and a.failures(r) == []
        # what was on disk before the kill was kept as it was
        np.testing.assert_array_equal(a.scores(r)[done_before], scores_before[r][done_before])
    assert len(a.attrs["history"]) == 2  # one record per job


@pytest.mark.slow
def test_torchrun_two_ranks_equals_single_process(tmp_path):
    root = tmp_path / "data"
    helpers.write_folder(root, 30)
    (root / "img_0007.png").write_bytes(b"broken")
    url = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [os.path.join(VENV_BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
         HELPER, "score", "--data", str(root), "--rewards", "brightness,redness", "--store", url,
         "--batch-size", "3", "--chunk-rows", "4", "--no-progress"],
        capture_output=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    ref = str(tmp_path / "ref")
    score_dataset(str(root), ["brightness", "redness"], ref, batch_size=5, chunk_rows=4, progress=False)
    a, b = RewardStore.open(url), RewardStore.open(ref)
    assert a.ids().tolist() == b.ids().tolist()
    for r in ("brightness", "redness"):
        np.testing.assert_array_equal(a.scores(r), b.scores(r))
        np.testing.assert_array_equal(a.status(r), b.status(r))
        assert a.failures(r) == b.failures(r) and len(a.failures(r)) == 1
        assert a.reward_metadata(r)["count_scored"] == 29
