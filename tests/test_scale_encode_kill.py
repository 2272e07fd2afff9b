"""``miro encode`` under a 2-rank ``torchrun`` on world shards, killed with SIGKILL mid-way (ranks and launcher) and
run again: the encoded dataset equals an uninterrupted run's (same files, same tensors bit for bit, same headers),
the resume encodes only the shards the kill left missing, each once, and removes the temporary file of the shard
that was being written when the kill landed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from miro_core.training.encoded import open_encoded

from _miro_train_fakes import miro_host_module  # noqa: F401

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


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _shards(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("shard-") and p.name.endswith(".safetensors"))


def _encoded_per_rank(text: str) -> dict[int, tuple[int, int]]:
    """``{rank: (encoded, skipped)}`` from the command's last lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("rank ") and " already there" in line:
            head = line.split(":", 1)
            rank = int(head[0].split()[1])
            words = head[1].split()
            out[rank] = (int(words[1]), int(words[5]))
    return out


@pytest.mark.slow
def test_kill9_a_torchrun_encode_then_resume_equals_uninterrupted(world, tmp_path):
    from safetensors.torch import load_file

    full = tmp_path / "full"
    done_full = _encoded_per_rank(_finish(_launch(tmp_path, "full", world, full, False)))
    assert done_full == {0: (SHARDS // 2, 0), 1: (SHARDS // 2, 0)}, done_full

    out = tmp_path / "killed"
    proc = _launch(tmp_path, "killed", world, out, True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        names = [p.name for p in out.iterdir()] if out.exists() else []
        if names and len(_shards(out)) >= 4 and any(".safetensors.tmp-" in n for n in names):
            break  # some shards done, one being written
        time.sleep(0.02)
    assert proc.poll() is None, "the encode ended before the kill"
    ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own: kill them by pid
    assert len(ranks) == 2, ranks
    for pid in [*ranks, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
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
