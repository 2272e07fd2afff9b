"""Streaming training at scale: the prefetch thread changes nothing but the timing, ids missing from the store are
counted in the run's metadata, a store whose bins are older than its scores is refused, and a streaming run under
torchrun killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from miro_core import StoreError, registry, structure
from miro_core.distributed import DistInfo
from miro_core.store import RewardStore
from miro_core.training import train
from miro_core.training.checkpoint import load_state_dict_file
from miro_core.training.config import TrainConfig
from miro_core.training.encoded import StreamingData, encode_dataset, open_encoded
from miro_core.training.loop import StreamBatcher

from _miro_train_fakes import FakeStore, make_store, miro_host_module, tiny_config  # noqa: F401
from _torchrun_kill import kill_torchrun

pytestmark = pytest.mark.usefixtures("miro_host_module")
TESTS = Path(__file__).resolve().parent


def _encode(url, n=32, rows=6):
    te = registry("text_encoders").create("hash_text", {})
    ae = registry("autoencoders").create("pixel", {})
    te.setup("cpu")
    ae.setup("cpu")
    return encode_dataset(registry("data_sources").create("test_shapes", {"n": n}), str(url), te, ae,
                          data_spec="test_shapes", text_encoder_spec={"name": "hash_text"},
                          autoencoder_spec={"name": "pixel"}, image_size=8, shard_rows=rows, batch_size=4)


def test_prefetch_thread_gives_the_batches_of_no_prefetch_and_reads_ahead(tmp_path):
    _encode(tmp_path / "enc")
    header = open_encoded(str(tmp_path / "enc"))
    cfg = structure({"batch_size": 8, "data": {"encoded": str(tmp_path / "enc")}}, TrainConfig)

    def batches(prefetch, steps):
        stream = StreamingData(header, store=make_store(), rewards=("aesthetic",), binner="quantile", seed=1,
                               buffer_shards=2)
        b = StreamBatcher(stream, cfg, DistInfo(), torch.device("cpu"), prefetch=prefetch)
        fetched = []
        real = b.fetch

        def fetch(step):
            fetched.append((step, threading.current_thread().name))
            return real(step)

        b.fetch = fetch
        g = torch.Generator().manual_seed(0)
        out = []
        for s in steps:
            out.append(b(s, g))
            if prefetch:
                deadline = time.monotonic() + 5
                while not any(f[0] == s + 1 for f in fetched) and time.monotonic() < deadline:
                    time.sleep(0.01)
        b.close()
        return out, fetched

    steps = [0, 1, 2, 3, 9, 10, 2]  # a jump (a resume) and a step back restart the thread there
    ref, _ = batches(0, steps)
    got, fetched = batches(2, steps)
    for a, b in zip(ref, got):
        for ma, mb in zip(a, b):
            assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert {name for _, name in fetched} == {"miro-stream-prefetch"}  # the training thread read nothing itself
    assert {s for s, _ in fetched} >= {1, 2, 3, 4, 10, 11}  # the step after each one asked for was read ahead


def test_ids_missing_from_the_store_are_in_the_run_metadata(tmp_path):
    full = make_store()
    ids = list(full.ids())
    keep = [i for i in ids if i not in ("s0003", "s0010")]
    store = FakeStore(keep, {r: full._scores[r][[ids.index(i) for i in keep]] for r in full._scores})
    cfg = tiny_config(tmp_path, steps=2, checkpoint_every=0, **{"data.encoded": str(tmp_path / "enc"),
                                                                 "data.shard_rows": 6})
    res = train(cfg, tmp_path / "run", store=store, progress=False)
    meta = json.loads((res.checkpoint_dir / "config.json").read_text())
    assert meta["data"]["skipped_not_in_store"] == 2 and meta["data"]["num_samples"] == 30


def test_a_store_whose_bins_are_older_than_its_scores_is_refused_by_streaming(tmp_path):
    _encode(tmp_path / "enc")
    url = str(tmp_path / "store")
    ids = [f"s{i:04d}" for i in range(32)]
    store = RewardStore.create(url, ids, chunk_rows=8)
    store.ensure_reward("aesthetic", {"version": "1", "config": {}})
    vals = np.arange(32, dtype=np.float32) % 7
    for c in range(store.num_chunks()):
        lo, hi = store.chunk_bounds(c)
        store.write_scores("aesthetic", lo, vals[lo:hi])
    store.bin("quantile", {"num_bins": 4})
    header = open_encoded(str(tmp_path / "enc"))
    ok = StreamingData(header, store=RewardStore.open(url), rewards=("aesthetic",), binner="quantile")
    assert ok.epoch_size == 32
    store.write_scores("aesthetic", 0, vals[:8][::-1].copy())  # rescored after binning: same rows, other values
    with pytest.raises(StoreError, match=r"stale.*miro bin --store"):
        StreamingData(header, store=RewardStore.open(url), rewards=("aesthetic",), binner="quantile")


SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from _miro_train_fakes import make_host, make_store
from miro_core._plugins import reset_plugins
import miro_core.training.loop as loop
reset_plugins(make_host())
if {slow!r}:
    real = loop.train_step
    def slow_step(*a, **k):
        time.sleep(0.25)  # room for the kill to land mid-run
        return real(*a, **k)
    loop.train_step = slow_step
cfg = json.loads({cfg!r})
r = loop.train(cfg, {out!r}, store=make_store(), progress=False, resume={resume!r})
if os.environ.get("RANK") == "0":
    open({hist!r}, "w").write(json.dumps(r.history))
"""


def _launch(tmp_path, name, cfg, out, resume, slow):
    script, hist = tmp_path / f"{name}.py", tmp_path / f"{name}.json"
    script.write_text(SCRIPT.format(tests=str(TESTS), cfg=json.dumps(cfg), out=str(out), resume=resume, slow=slow,
                                    hist=str(hist)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIRO_LOAD_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return proc, hist


def _finish(proc, hist) -> list[dict]:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-4000:]
    return json.loads(hist.read_text())


@pytest.mark.slow
def test_kill9_a_streaming_torchrun_run_then_resume_equals_uninterrupted(tmp_path):
    steps = 14
    over = {"optim.grad_clip": 0.0, "data.encoded": str(tmp_path / "enc"), "data.shard_rows": 4,
            "data.buffer_shards": 2, "keep_checkpoints": 0}
    cfg = tiny_config(tmp_path, steps=steps, checkpoint_every=2, **over)
    full = _finish(*_launch(tmp_path, "full", cfg, tmp_path / "full", False, False))

    out = tmp_path / "killed"
    proc, _ = _launch(tmp_path, "killed", cfg, out, False, True)
    deadline = time.monotonic() + 180
    ckpts = out / "checkpoints"
    while time.monotonic() < deadline and proc.poll() is None:
        if (ckpts / "step_00000006").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill"
    kill_torchrun(proc)
    done = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_") and ".tmp" not in p.name)
    assert done and done[-1] < f"step_{steps:08d}", done
    resumed = _finish(*_launch(tmp_path, "resumed", cfg, out, True, False))
    first = min(h["step"] for h in resumed if "loss" in h)
    assert 6 < first <= steps  # it went on from a checkpoint at or after step 6, not from scratch
    a = {h["step"]: h["loss"] for h in full if "loss" in h}
    b = {h["step"]: h["loss"] for h in resumed if "loss" in h}
    assert sorted(b) == list(range(first, steps + 1))
    for s in b:
        assert b[s] == pytest.approx(a[s], rel=1e-6, abs=1e-7)  # the same samples after the resume point
    wa = load_state_dict_file(tmp_path / "full" / "checkpoints" / f"step_{steps:08d}" / "model.safetensors")
    wb = load_state_dict_file(out / "checkpoints" / f"step_{steps:08d}" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
