"""Encoded datasets (``miro encode``) and streaming training: shards equal to a direct encoding, resumable after a
crash, split across ranks; ranks stream disjoint shards whose union is the data set; exact resume of a streaming
run; ids missing from the store counted and skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from miro_core import registry
from miro_core.training import train
from miro_core.training.checkpoint import load_state_dict_file
from miro_core.training.encoded import StreamingData, encode_dataset, open_encoded

from _miro_train_fakes import FakeStore, make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")


def _encoders():
    te = registry("text_encoders").create("hash_text", {})
    ae = registry("autoencoders").create("pixel", {})
    te.setup("cpu")
    ae.setup("cpu")
    return te, ae


def _source(n=32):
    return registry("data_sources").create("test_shapes", {"n": n})


def _encode(url, rank=0, world=1, n=32, rows=6, **kw):
    te, ae = _encoders()
    return encode_dataset(_source(n), str(url), te, ae, data_spec="test_shapes", text_encoder_spec={"name": "hash_text"},
                          autoencoder_spec={"name": "pixel"}, image_size=8, rank=rank, world_size=world,
                          shard_rows=rows, batch_size=4, **kw)


def test_encoded_shards_equal_a_direct_encoding(tmp_path):
    from miro_core.training.data import preprocess_image
    from miro_core.training.encoded import _load

    import fsspec

    res = _encode(tmp_path / "enc")
    assert res == {"units": 6, "encoded": 6, "skipped": 0, "rows": 32}  # ceil(32 / 6) units, strided
    header = open_encoded(str(tmp_path / "enc"))
    assert header.latent_shape == (3, 8, 8)
    te, ae = _encoders()
    samples = {s.id: s for s in _source()}
    seen = []
    fs = fsspec.filesystem("file")
    for k in range(header.units):
        t, meta = _load(fs, str(tmp_path / "enc" / header.shard_name(k)))
        ids = json.loads(meta["ids"])
        assert ids == [f"s{i:04d}" for i in range(k, 32, 6)]  # unit k = samples i % 6 == k
        seen += ids
        imgs = torch.stack([preprocess_image(samples[i].image, 8) for i in ids])
        torch.testing.assert_close(t["latents"].float(), ae.encode(imgs).half().float(), rtol=0, atol=0)
        tok, msk = te.encode([samples[i].caption for i in ids])
        off = t["offsets"].tolist()
        for j in range(len(ids)):
            torch.testing.assert_close(t["text"][off[j]:off[j + 1]].float(), tok[j][msk[j]].half().float())
        assert t["latents"].dtype == torch.float16
    assert sorted(seen) == sorted(samples)


def test_encode_resumes_after_a_crash_and_splits_across_ranks(tmp_path, monkeypatch):
    import miro_core.training.encoded as enc

    real = enc._write_atomic
    calls = {"n": 0}

    def dies(fs, path, data):
        if path.endswith(".safetensors") and "shard-" in path:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # killed while the third shard is written
        real(fs, path, data)

    monkeypatch.setattr(enc, "_write_atomic", dies)
    with pytest.raises(KeyboardInterrupt):
        _encode(tmp_path / "a")
    monkeypatch.setattr(enc, "_write_atomic", real)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["empty.safetensors", "encoded.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    assert _encode(tmp_path / "a") == {"units": 6, "encoded": 4, "skipped": 2, "rows": 20}
    # two ranks (run one after the other here) write exactly the shards of one process
    _encode(tmp_path / "b", rank=1, world=2)
    with pytest.raises(Exception, match="incomplete"):
        open_encoded(str(tmp_path / "b"))
    _encode(tmp_path / "b", rank=0, world=2)
    import fsspec

    from miro_core.training.encoded import _load

    fs = fsspec.filesystem("file")
    for k in range(6):
        name = f"shard-{k:05d}.safetensors"
        (ta, ma), (tb, mb) = _load(fs, str(tmp_path / "a" / name)), _load(fs, str(tmp_path / "b" / name))
        assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[x], tb[x]) for x in ta)
    with pytest.raises(Exception, match="other data or other encoders"):
        _encode(tmp_path / "a", n=20)


def test_ranks_stream_disjoint_shards_covering_the_data_set(tmp_path):
    _encode(tmp_path / "enc")
    header = open_encoded(str(tmp_path / "enc"))
    store = make_store()
    streams = [StreamingData(header, store=store, rewards=("aesthetic",), binner="quantile", seed=3, rank=r,
                             world_size=2, buffer_shards=2) for r in (0, 1)]
    epochs = [s.take(0, s.epoch_size)["ids"] for s in streams]
    assert not set(epochs[0]) & set(epochs[1])
    assert sorted(epochs[0] + epochs[1]) == sorted(f"s{i:04d}" for i in range(32))
    # the stream is a pure function of (seed, rank, world): chunks and a fresh reader agree, across epochs
    s0 = streams[0]
    whole = s0.take(5, 30)
    again = StreamingData(header, store=store, rewards=("aesthetic",), binner="quantile", seed=3, rank=0,
                          world_size=2, buffer_shards=2)
    parts = [again.take(5 + 10 * i, 10) for i in range(3)]
    assert sum((p["ids"] for p in parts), []) == whole["ids"]
    torch.testing.assert_close(torch.cat([p["latents"] for p in parts]), whole["latents"])
    e = s0.epoch_size
    ep0, ep1 = s0.take(0, e)["ids"], s0.take(e, e)["ids"]
    assert sorted(ep0) == sorted(ep1) and ep0 != ep1  # every epoch: the same samples, in another order
    # levels are the store's, joined by id
    rows = {f"s{i:04d}": i for i in range(32)}
    want = store.levels(["aesthetic"], "quantile", np.array([rows[i] for i in whole["ids"]]))
    np.testing.assert_allclose(whole["levels"].numpy(), want)
    # a different seed gives a different order
    other = StreamingData(header, store=store, rewards=("aesthetic",), binner="quantile", seed=4, rank=0, world_size=2)
    assert other.take(0, other.epoch_size)["ids"] != epochs[0]


def test_ids_missing_from_the_store_are_counted_and_skipped(tmp_path):
    _encode(tmp_path / "enc")
    full = make_store()
    ids = list(full.ids())
    keep = [i for i in ids if i not in ("s0003", "s0010")]
    store = FakeStore(keep, {"aesthetic": full._scores["aesthetic"][[ids.index(i) for i in keep]]})
    s = StreamingData(open_encoded(str(tmp_path / "enc")), store=store, rewards=("aesthetic",), binner="quantile")
    assert s.skipped_not_in_store == 2 and s.epoch_size == 30
    got = s.take(0, 30)["ids"]
    assert sorted(got) == sorted(keep)


def test_streaming_training_resumes_exactly(tmp_path):
    over = {"data.encoded": str(tmp_path / "enc"), "data.shard_rows": 6, "data.buffer_shards": 2}
    cfg = tiny_config(tmp_path, steps=6, checkpoint_every=3, **over)
    full = train(cfg, tmp_path / "full", store=make_store(), progress=False)
    assert open_encoded(str(tmp_path / "enc")).units == 6  # training encoded what was missing
    out = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "checkpoints" / "latest").write_text("step_00000003\n")
    resumed = train(cfg, out, store=make_store(), progress=False, resume=True)
    a = {h["step"]: h["loss"] for h in full.history if "loss" in h}
    b = {h["step"]: h["loss"] for h in resumed.history if "loss" in h}
    assert sorted(b) == [4, 5, 6] and all(a[k] == b[k] for k in b)
    wa = load_state_dict_file(full.checkpoint_dir / "model.safetensors")
    wb = load_state_dict_file(resumed.checkpoint_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = [a[k] for k in sorted(a)]
    assert all(np.isfinite(losses))


def test_miro_encode_cli(tmp_path, capsys):
    from _miro_train_fakes import make_host
    from miro_core._plugins import reset_plugins
    from miro_core.cli import main

    reset_plugins(make_host(extra=("miro_core.cli.encode_cmd",)))
    try:
        args = ["encode", "--data", "test_shapes:n=10", "--out", str(tmp_path / "e"), "--shard-rows", "4",
                "--set", "model.text_encoder.name=hash_text", "--set", "data.image_size=8", "--no-progress"]
        assert main(args) == 0
        assert "encoded 3 shards (10 samples)" in capsys.readouterr().out
        assert open_encoded(str(tmp_path / "e")).units == 3
        assert main(args) == 0  # a re-run encodes nothing
        assert "encoded 0 shards (0 samples), 3 already there" in capsys.readouterr().out
    finally:
        reset_plugins(make_host(with_rin=True, with_binner=True))
