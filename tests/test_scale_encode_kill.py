"""``miro encode`` under a 2-rank ``torchrun`` on world shards, killed with SIGKILL mid-way (ranks and launcher) and
run again: the encoded dataset equals an uninterrupted run's (same files, same tensors bit for bit, same headers),
the resume encodes only the shards the kill left missing, each once, and removes the temporary file of the shard
that was being written when the kill landed. And a JSONL manifest is encoded in byte-range units (each rank reads
about its share of it), an encode begun with the old strided units resuming with them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from miro_core.training.encoded import open_encoded

from _miro_train_fakes import miro_host_module  # noqa: F401
from _torchrun_kill import kill_torchrun

pytestmark = pytest.mark.usefixtures("miro_host_module")
TESTS = Path(__file__).resolve().parent
SHARDS, PER = 12, 6

DRIVER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from _miro_train_fakes import make_host
from miro_core._plugins import reset_plugins
reset_plugins(make_host(extra=("miro_core.cli.encode_cmd", "miro_core.data.sources")))
if {slow!r}:
    import miro_models.autoencoders.pixel as px
    real = px.Pixel.encode
    def slow_encode(self, images):
        time.sleep(0.3)  # room for the kill to land mid-run
        return real(self, images)
    px.Pixel.encode = slow_encode
    from fsspec.implementations.local import LocalFileSystem
    real_mv = LocalFileSystem.mv
    def slow_mv(self, *a, **k):
        time.sleep(0.4)  # a shard's temporary file sits there a while: the kill can land mid-write
        return real_mv(self, *a, **k)
    LocalFileSystem.mv = slow_mv
from miro_core.cli import main
code = main(["encode", "--data", {data!r}, "--out", {out!r}, "--set", "model.text_encoder.name=hash_text",
             "--set", "model.autoencoder.name=pixel", "--set", "data.image_size=16",
             "--set", "data.encode_batch_size=2", "--no-progress"])
sys.exit(code)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from miro_world.export import export_world

    d = tmp_path_factory.mktemp("world")
    pattern = f"{d}/{{00000..{SHARDS - 1:05d}}}.tar"
    export_world(pattern, SHARDS * PER, seed=5)
    return pattern


def _launch(tmp_path, name, data, out, slow):
    script = tmp_path / f"{name}.py"
    script.write_text(DRIVER.format(tests=str(TESTS), data=data, out=str(out), slow=slow))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIRO_LOAD_PLUGINS": ""}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _finish(proc) -> str:
    out, _ = proc.communicate(timeout=240)
    text = out.decode()
    assert proc.returncode == 0, text[-4000:]
    return text


def _shards(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("shard-") and p.name.endswith(".safetensors"))


def _encoded_per_rank(text: str) -> dict[int, tuple[int, int]]:
    """``{rank: (encoded, skipped)}`` from the command's summary lines, found anywhere in the output: both ranks and
    their logs share one pipe, so a summary need not start a line (another process's write may precede it)."""
    out = {}
    for m in re.finditer(r"rank (\d+): encoded (\d+) shards \(\d+ samples\), (\d+) already there", text):
        out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return out


@pytest.mark.slow
def test_kill9_a_torchrun_encode_then_resume_equals_uninterrupted(world, tmp_path):
    from safetensors.torch import load_file

    full = tmp_path / "full"
    text_full = _finish(_launch(tmp_path, "full", world, full, False))
    done_full = _encoded_per_rank(text_full)
    assert done_full == {0: (SHARDS // 2, 0), 1: (SHARDS // 2, 0)}, (done_full, text_full[-3000:])

    out = tmp_path / "killed"
    proc = _launch(tmp_path, "killed", world, out, True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        names = [p.name for p in out.iterdir()] if out.exists() else []
        if names and len(_shards(out)) >= 4 and any(".safetensors.tmp-" in n for n in names):
            break  # some shards done, one being written
        time.sleep(0.02)
    assert proc.poll() is None, "the encode ended before the kill"
    kill_torchrun(proc)
    before = _shards(out)
    assert 4 <= len(before) < SHARDS, before
    left = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert left, "the kill was meant to land while a shard was being written"
    with pytest.raises(Exception, match="incomplete"):
        open_encoded(str(out))

    done = _encoded_per_rank(_finish(_launch(tmp_path, "resumed", world, out, False)))
    # only the missing shards were encoded, each by the rank that owns it, and nothing twice
    assert sum(e for e, _ in done.values()) == SHARDS - len(before)
    assert sum(s for _, s in done.values()) == len(before)
    for r in (0, 1):
        mine = {f"shard-{k:05d}.safetensors" for k in range(r, SHARDS, 2)}
        assert done[r] == (len(mine - set(before)), len(mine & set(before)))

    # the same files (no temporary left behind), the same header, the same tensors bit for bit
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
    assert json.loads((out / "encoded.json").read_text()) == json.loads((full / "encoded.json").read_text())
    assert open_encoded(str(out)).units == SHARDS
    for name in _shards(full) + ["empty.safetensors"]:
        a, b = load_file(str(full / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), name
        from miro_core.training.encoded import _read_header

        import fsspec

        fs = fsspec.filesystem("file")
        ha, hb = _read_header(fs, str(full / name)), _read_header(fs, str(out / name))
        # shapes, dtypes, offsets and metadata (ids, captions, rows, unit); the file bytes may differ only in the
        # order of the metadata keys (safetensors writes them from a hash map)
        assert ha == hb, name
    ids = [i for name in _shards(out) for i in json.loads(_read_header(fs, str(out / name))["__metadata__"]["ids"])]
    assert len(ids) == len(set(ids)) == SHARDS * PER  # every sample once


# ------------------------------------------------------------------------- a JSONL manifest: byte-range units
def _jsonl(tmp_path, n=400) -> str:
    sys.path.insert(0, str(TESTS))
    import test_scoring_helpers as helpers

    (tmp_path / "img").mkdir()
    for i, arr in enumerate(helpers.make_images(3)):
        (tmp_path / "img" / f"{i}.png").write_bytes(helpers.png_bytes(arr))
    lines = [json.dumps({"id": f"j{i:03d}", "image": f"img/{i % 3}.png", "caption": f"caption {i} é"},
                        ensure_ascii=False) for i in range(n)]
    path = tmp_path / "m.jsonl"
    path.write_bytes(("\n".join(lines[:200]) + "\r\n\n" + "\r\n".join(lines[200:])).encode())
    return str(path)


def _encode_jsonl(path, out, rank, world, rows=40, wrap=lambda src: src):
    from miro_core import registry
    from miro_core.data.sources import JsonlSource
    from miro_core.training.encoded import encode_dataset

    te = registry("text_encoders").create("hash_text", {})
    ae = registry("autoencoders").create("pixel", {})
    te.setup("cpu")
    ae.setup("cpu")
    return encode_dataset(wrap(JsonlSource(JsonlSource.Config(path=path))), str(out), te, ae, data_spec=path,
                          text_encoder_spec={"name": "hash_text"}, autoencoder_spec={"name": "pixel"}, image_size=8,
                          rank=rank, world_size=world, shard_rows=rows, batch_size=4)


def test_a_jsonl_manifest_is_encoded_in_byte_range_units_each_rank_reading_its_own(tmp_path, monkeypatch):
    """Units of a manifest are byte ranges: the shards in unit order hold its samples in file order, once each,
    and a rank reads about its share of the manifest (plus the probe of its start); an encode begun with the old
    strided units (a header without ``layout``) resumes with them."""
    import fsspec

    from miro_core.data import sources
    from miro_core.data.sources import JsonlSource
    import miro_core.training.encoded as enc

    path = _jsonl(tmp_path)
    size = os.path.getsize(path)
    ids = [s.id for s in JsonlSource(JsonlSource.Config(path=path))]
    monkeypatch.setattr(enc, "_JSONL_PROBE", 600)  # the probe of the manifest's start: a few lines
    reads: dict = {}
    real = sources._open_bin

    class Counting:
        def __init__(self, f, rank):
            self.f, self.rank = f, rank

        def read(self, n=-1):
            b = self.f.read(n)
            reads[self.rank] = reads.get(self.rank, 0) + len(b)
            return b

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    out = tmp_path / "enc"
    for rank in (1, 0):
        monkeypatch.setattr(sources, "_open_bin", lambda p, rank=rank: Counting(real(p), rank))
        res = _encode_jsonl(path, out, rank, 2)
        assert res["encoded"] == res["units"] // 2 + (rank == 0 and res["units"] % 2)
        # its units' bytes (about half), the probe, and per unit the line before it and the end of its last line
        mine = res["encoded"]
        assert reads[rank] < size * mine / res["units"] + 600 + mine * 400, (rank, reads[rank], size, res)
        assert reads[rank] < 0.7 * size
    header = open_encoded(str(out))
    assert header.meta["layout"] == "bytes" and header.units == res["units"] >= 4
    fs = fsspec.filesystem("file")
    got = [i for k in range(header.units)
           for i in json.loads(enc._read_header(fs, str(out / header.shard_name(k)))["__metadata__"]["ids"])]
    assert got == ids  # file order, each sample once
    assert _encode_jsonl(path, out, 0, 1)["encoded"] == 0  # complete: nothing again

    # an encode made before byte ranges (no "layout"): resumed with its strided units, as it was begun
    old = tmp_path / "old"
    monkeypatch.setattr(sources, "_open_bin", real)
    units = -(-len(ids) // 40)

    class Before:  # the manifest as encode saw it before byte ranges: a length and strided positions
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def iter_samples(self, k, n):
            return self.src.iter_samples(k, n)

    _encode_jsonl(path, old, 0, 1, wrap=Before)
    meta = json.loads((old / "encoded.json").read_text())
    assert "layout" not in meta and meta["units"] == units
    (old / header.shard_name(1)).unlink()
    assert _encode_jsonl(path, old, 0, 1) == {"units": units, "encoded": 1, "skipped": units - 1, "rows": 40}
    first = json.loads(enc._read_header(fs, str(old / header.shard_name(1)))["__metadata__"]["ids"])
    assert first == ids[1::units]
