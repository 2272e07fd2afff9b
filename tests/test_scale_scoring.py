"""Scoring at scale on world shards (``miro world export``): each (rank, worker) reads only its own shards,
2 ranks under torchrun write the table of one process, the ids pass reads no image bytes, bad shards give clear
errors or counted failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import MiroError  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import RewardStore  # noqa: E402

SHARDS, PER = 8, 10


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """8 world shards of 10 samples (32 px); the last one cut inside a member (its last samples are lost)."""
    from miro_world.export import export_world

    d = tmp_path_factory.mktemp("world")
    pattern = f"{d}/{{00000..{SHARDS - 1:05d}}}.tar"
    export_world(pattern, SHARDS * PER, seed=3)
    last = d / f"{SHARDS - 1:05d}.tar"
    with tarfile.open(last) as t:
        member = [m for m in t.getmembers() if m.name.endswith(".png")][6]
        cut = member.offset_data + member.size // 2
    last.write_bytes(last.read_bytes()[:cut])
    return d, pattern


# a counting open, installed by the torchrun driver (and in-process below): one line per shard file closed
COUNTING = '''
import os
from miro_core.data.sources import WebDatasetSource

_real_open = WebDatasetSource._open


class _Counting:
    def __init__(self, f, url, log):
        self.f, self.url, self.log, self.n = f, url, log, 0

    def read(self, *a):
        b = self.f.read(*a)
        self.n += len(b)
        return b

    def readinto(self, buf):
        k = self.f.readinto(buf)
        self.n += k or 0
        return k

    def close(self):
        import torch.utils.data as tud
        info = tud.get_worker_info()
        with open(self.log, "a") as out:
            out.write(f"{os.environ.get('RANK', '0')} {info.id if info else -1} {self.url} {self.n}\\n")
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def install_counting(log):
    WebDatasetSource._open = lambda self, url: _Counting(_real_open(self, url), url, log)
'''

DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
import test_scoring_helpers as helpers
helpers.install()
exec(compile({counting!r}, "counting", "exec"))
install_counting({log!r})
if {nolocks!r}:
    import miro_core._store_locks as L
    L.StoreLocks.enabled = False  # as a store without locks (an object store): shared chunks written in turn
from miro_core.scoring import score_dataset
out = score_dataset({data!r}, ["brightness", "redness"], {store!r}, batch_size=4, chunk_rows=7, workers=2,
                    progress=False)
open({summary!r} + "." + str(out["rank"]), "w").write(json.dumps({{k: out[k] for k in ("rank", "pieces_this_rank",
                                                                   "rows_processed")}}))
"""


def _opens(log: Path) -> list[tuple[int, int, str, int]]:
    out = []
    for line in log.read_text().splitlines():
        rank, worker, url, n = line.split(" ")
        out.append((int(rank), int(worker), url, int(n)))
    return out


def _image_bytes(url: str) -> int:
    with open(url, "rb") as f:
        data = f.read()
    import io

    n = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            n = sum(m.size for m in t.getmembers() if m.name.endswith(".png"))
    except tarfile.TarError:  # the cut shard: count what is there
        pass
    return n


def _same_table(a: RewardStore, b: RewardStore) -> None:
    assert a.ids().tolist() == b.ids().tolist()
    assert list(a.captions()) == list(b.captions())
    for r in ("brightness", "redness"):
        np.testing.assert_array_equal(a.scores(r), b.scores(r))
        np.testing.assert_array_equal(a.status(r), b.status(r))
        assert a.failures(r) == b.failures(r)
    assert a.rejected()["by_reason"] == b.rejected()["by_reason"]


@pytest.mark.slow
@pytest.mark.parametrize("nolocks", [False, True], ids=["locked", "nolocks"])
def test_two_ranks_read_only_their_shards_and_write_the_table_of_one_process(world, tmp_path, nolocks):
    d, pattern = world
    log, store, summary = tmp_path / "opens.log", str(tmp_path / "ddp.zarr"), str(tmp_path / "summary")
    script = tmp_path / "drive.py"
    script.write_text(DRIVER.format(tests=str(TESTS), counting=COUNTING, log=str(log), nolocks=nolocks,
                                    data=pattern, store=store, summary=summary))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = str(tmp_path / "one.zarr")
    score_dataset(pattern, ["brightness", "redness"], ref, batch_size=5, chunk_rows=7, workers=0, progress=False)
    a, b = RewardStore.open(store), RewardStore.open(ref)
    _same_table(a, b)
    assert a.reward_counts("brightness")["scored"] == SHARDS * PER - 4  # the cut shard lost its last 4 samples
    assert a.rejected()["by_reason"] == {"unreadable shard": 1}

    urls = sorted(str(d / f"{k:05d}.tar") for k in range(SHARDS))
    sizes = {u: os.path.getsize(u) for u in urls}
    opens = _opens(log)
    for rank in (0, 1):
        own = {u for k, u in enumerate(urls) if k % 2 == rank}
        mine = [o for o in opens if o[0] == rank]
        assert {o[2] for o in mine} == own  # the ids pass and the workers of this rank: its own shards only
        ids_pass = [o for o in mine if o[1] == -1]
        assert sorted(o[2] for o in ids_pass) == sorted(own)  # once each, in the main process
        # headers and captions: the ids pass read none of the image bytes
        assert sum(o[3] for o in ids_pass) <= sum(sizes[u] - _image_bytes(u) for u in own)
        for w in (0, 1):  # worker w reads the rank's shards j % 2 == w, each once
            expect = sorted(u for j, u in enumerate(sorted(own)) if j % 2 == w)
            assert sorted(o[2] for o in mine if o[1] == w) == expect
        read = sum(o[3] for o in mine if o[1] >= 0)  # the scoring pass: about half the bytes of the data set
        assert read <= sum(sizes[u] for u in own) and 0.4 < read / sum(sizes.values()) < 0.6, (rank, read)
    ranks = [json.loads(Path(f"{summary}.{r}").read_text()) for r in (0, 1)]
    assert [r["pieces_this_rank"] for r in ranks] == [4, 4]


def test_one_process_workers_read_disjoint_shards_and_finished_shards_are_not_reopened(world, tmp_path):
    d, pattern = world
    ns: dict = {}
    exec(compile(COUNTING, "counting", "exec"), ns)
    from miro_core.data.sources import WebDatasetSource

    real = WebDatasetSource._open
    log = tmp_path / "opens.log"
    try:
        ns["install_counting"](str(log))
        url = str(tmp_path / "s.zarr")
        score_dataset(pattern, ["brightness"], url, batch_size=4, chunk_rows=10, workers=2, progress=False)
        opens = _opens(log)
        by_worker = {w: sorted(o[2] for o in opens if o[1] == w) for w in (0, 1)}
        urls = sorted(str(d / f"{k:05d}.tar") for k in range(SHARDS))
        assert by_worker == {0: urls[0::2], 1: urls[1::2]}
        # the store was made from the first 4 shards; scoring all 8 appends the rows of shards 4-7 and reads
        # (beyond the ids pass) only those: the finished shards are not opened by a worker
        first = str(tmp_path / "t.zarr")
        score_dataset(f"{d}/{{00000..00003}}.tar", ["brightness"], first, batch_size=4, workers=0, progress=False)
        log.unlink()
        score_dataset(pattern, ["brightness"], first, batch_size=4, workers=2, progress=False)
        assert sorted(o[2] for o in _opens(log) if o[1] >= 0) == urls[4:]
        assert RewardStore.open(first).reward_counts("brightness")["scored"] == SHARDS * PER - 4
    finally:
        WebDatasetSource._open = real


def test_a_missing_shard_is_a_clear_error_naming_it(world, tmp_path):
    d, _ = world
    pattern = f"{d}/{{00000..{SHARDS:05d}}}.tar"  # one past the last shard
    with pytest.raises(MiroError, match=rf"Cannot open webdataset shard .*{SHARDS:05d}\.tar.*brace range"):
        score_dataset(pattern, ["brightness"], str(tmp_path / "s.zarr"), workers=0, progress=False)
    assert not (tmp_path / "s.zarr").exists()  # the ids pass failed: nothing was created


def test_a_truncated_member_is_counted_and_the_ids_pass_agrees_with_reading(world):
    """The ids pass (seeking over images) and a full read see the same samples of the cut shard."""
    from miro_core.data import resolve_data
    from miro_core.data.parts import source_parts

    d, pattern = world
    src = resolve_data(pattern)
    parts = source_parts(src)
    k = SHARDS - 1
    fast = [s.id for s in parts.texts((k, 0, None))]
    full = [s.id for _, s in parts.samples((k, 0, None))]
    assert fast == full and len(fast) == PER - 4
    assert [p[1].split(" (")[0] for p in src.problems] == ["unreadable shard: it broke after 6 samples"] * 2


def test_ids_pass_reads_no_image(monkeypatch, tmp_path):
    """Preparing the store decodes no image (image folder and JSONL: no image file is opened)."""
    root = tmp_path / "data"
    helpers.write_folder(root, 10)
    import miro_core.data._decode as dec

    calls = {"n": 0}
    real = dec.decode_raw

    def counting(x):
        calls["n"] += 1
        return real(x)

    monkeypatch.setattr(dec, "decode_raw", counting)
    from miro_core.data import resolve_data
    from miro_core.data.parts import source_parts

    parts = source_parts(resolve_data(str(root)))
    assert parts.kind == "slices"
    texts = list(parts.texts(parts.rank_pieces(0, 1)[0]))
    assert len(texts) == 10 and calls["n"] == 0
    assert [p for p in (parts.rank_pieces(r, 3) for r in range(3))] == [[(0, 0, 3)], [(0, 3, 6)], [(0, 6, 10)]]


@pytest.mark.parametrize("kind", ["plain", "gnu_long_name", "pax_long_name", "gzip"])
def test_ids_pass_header_reader_agrees_with_reading_the_shard(tmp_path, kind):
    """The fast ustar header reader (plain shards) and its tarfile fallback (long names, pax, gzip) give the samples
    a full read gives."""
    import io

    from miro_core.data.parts import source_parts

    img = helpers.png_bytes(helpers.make_images(1)[0])
    long = "d/" + "x" * 120 if kind.endswith("long_name") else "d/k"
    fmt = {"gnu_long_name": tarfile.GNU_FORMAT, "pax_long_name": tarfile.PAX_FORMAT}.get(kind, tarfile.USTAR_FORMAT)
    path = tmp_path / ("s.tar.gz" if kind == "gzip" else "s.tar")
    with tarfile.open(path, "w:gz" if kind == "gzip" else "w", format=fmt) as t:
        for i in range(5):
            for ext, data in (("png", img), ("txt", f"caption {i}".encode()), ("json", b'{"a": 1}')):
                info = tarfile.TarInfo(f"{long}{i}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    src = miro_core.registry("data_sources").create("webdataset", {"url": str(path)})
    parts = source_parts(src)
    fast = [(s.id, s.caption, s.meta.get("a")) for s in parts.texts((0, 0, None))]
    full = [(s.id, s.caption, s.meta.get("a")) for _, s in parts.samples((0, 0, None))]
    assert fast == full and len(fast) == 5 and fast[0][1] == "caption 0" and not src.problems


def test_reward_threads_leave_the_decode_workers_their_cores_and_are_restored(monkeypatch, tmp_path):
    import torch

    from miro_core.scoring import reward_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert reward_threads("cpu", 2) == 6 and reward_threads("cpu", 0) == 8 and reward_threads("cuda", 2) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert reward_threads("cpu", 1) == 1 and reward_threads("cpu", 4) == 1

    seen = []

    real = helpers.Brightness.score

    def probe(self, images, prompts):
        seen.append(torch.get_num_threads())
        return real(self, images, prompts)

    monkeypatch.setattr(helpers.Brightness, "score", probe)
    root = tmp_path / "data"
    helpers.write_folder(root, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        score_dataset(str(root), ["brightness"], str(tmp_path / "s.zarr"), workers=1, progress=False)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
