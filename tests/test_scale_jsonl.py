"""A JSONL manifest split by byte range (the TextInputFormat rule): each rank, and each DataLoader worker of a rank,
reads only its own contiguous, line-aligned bytes of the file (local disk and memory://); every line goes to exactly
one range wherever the cut falls (inside a line, between CR and LF, inside a UTF-8 character, among empty lines, a
last line without a newline); bad lines keep their line numbers; scoring gives the table of reading it whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import MiroError  # noqa: E402
from miro_core.data import sources  # noqa: E402
from miro_core.data.parts import source_parts  # noqa: E402
from miro_core.data.sources import JsonlSource  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


def _line(i: int, pad: str = "") -> bytes:
    cap = f"caption {i} {pad}" + ("日本語 é" if i % 2 == 0 else "red")
    row = {"id": f"s{i:05d}", "image": f"img/{i % 4}.png", "caption": cap}
    if i % 5 == 0:
        row["short_caption"] = "ünï"
    return json.dumps(row, ensure_ascii=False).encode()


def _manifest(n: int, pad: str = "") -> bytes:
    """``n`` rows with CRLF line ends on every 4th, empty and blank lines, multi-byte captions, no final newline."""
    out = []
    for i in range(n):
        out.append(_line(i, pad if i == 0 else "") + (b"\r\n" if i % 4 == 1 else b"\n"))
        if i % 7 == 3:
            out.append(b"\n" if i % 2 else b"  \r\n")
    return b"".join(out).rstrip(b"\n")  # the last line has no newline


def _with_cut_inside_a_character(n: int, ranks: int = 2) -> bytes:
    """A manifest of ``n`` rows where the cut at ``size // ranks`` falls inside a multi-byte UTF-8 character."""
    for k in range(400):
        data = _manifest(n, "x" * k)
        if 0x80 <= data[len(data) // ranks] < 0xC0:  # a continuation byte
            return data
    raise AssertionError("no padding puts the cut inside a character")


def _write(storage: str, tmp_path, data: bytes) -> str:
    if storage == "local":
        path = tmp_path / "m.jsonl"
        path.write_bytes(data)
        img = tmp_path / "img"
    else:
        import fsspec

        root = f"memory://jsonl-{uuid.uuid4().hex[:8]}"
        path = f"{root}/m.jsonl"
        fs = fsspec.filesystem("memory")
        fs.pipe(path, data)
        img = None
    if img is not None:
        img.mkdir(exist_ok=True)
        for i, arr in enumerate(helpers.make_images(4)):
            (img / f"{i}.png").write_bytes(helpers.png_bytes(arr))
    else:
        for i, arr in enumerate(helpers.make_images(4)):
            fsspec.filesystem("memory").pipe(f"{root}/img/{i}.png", helpers.png_bytes(arr))
    return str(path)


class _Counting:
    """A file object that records the byte intervals read from it."""

    def __init__(self, f, log: list):
        self.f, self.log = f, log

    def read(self, n=-1):
        at = self.f.tell()
        b = self.f.read(n)
        if b:
            self.log.append((at, at + len(b)))
        return b

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.fixture
def counting(monkeypatch):
    """``reads[tag]``: the intervals read while ``state["tag"]`` was ``tag``."""
    reads: dict = {}
    state = {"tag": None}
    real = sources._open_bin
    monkeypatch.setattr(sources, "_open_bin", lambda path: _Counting(real(path), reads.setdefault(state["tag"], [])))
    return reads, state


def _merge(iv: list) -> list:
    out: list = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _nbytes(iv: list) -> int:
    return sum(b - a for a, b in _merge(iv))


def _key(s):
    return (s.id, s.caption, s.short_caption, s.image, s.meta)


# ------------------------------------------------------------------------------------------- the rule itself
def test_every_cut_gives_each_line_to_exactly_one_range(tmp_path):
    """Cut a small hostile manifest (CRLF, a lone CR, empty and blank lines, multi-byte characters, no final
    newline) at every byte (and in three at many pairs of bytes): the ranges' lines, in
    range order, are the file's lines, once each."""
    data = _manifest(12).replace(b'}\n{"id": "s00005"', b'}\r{"id": "s00005"')  # and a lone CR
    assert b'}\r{"id": "s00005"' in data
    path = _write("local", tmp_path, data)
    src = JsonlSource(JsonlSource.Config(path=path))
    whole = [_key(s) for s in src]
    assert len(whole) == 12 and whole[-1][0] == "s00011"
    assert [w[0] for w in whole] == [json.loads(x)["id"] for x in data.splitlines() if x.strip()]  # as before
    size = len(data)
    assert size == src.size()
    for c in range(size + 1):
        got = [_key(s) for s in src.read_range(0, c)] + [_key(s) for s in src.read_range(c, size)]
        assert got == whole, c
    rng = np.random.default_rng(0)
    for c1, c2 in sorted({tuple(sorted(p)) for p in rng.integers(0, size + 1, (150, 2)).tolist()}):
        got = [s.id for a, b in ((0, c1), (c1, c2), (c2, size)) for s in src.read_range(a, b)]
        assert got == [w[0] for w in whole], (c1, c2)


def test_line_numbers_of_bad_lines_are_those_of_the_file(tmp_path):
    """A bad line read by the second range still says which line of the file it is (CRLF, CR and empty lines
    counted as an editor counts them)."""
    lines = [_line(i) for i in range(40)]
    lines[31] = b'{"id": "x", "image": "a.png"}'  # no caption
    data = b"\r\n".join(lines[:10]) + b"\r\n\n\r" + b"\n".join(lines[10:]) + b"\n"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    src = JsonlSource(JsonlSource.Config(path=str(path)))
    parts = source_parts(src)
    assert list(parts.texts(parts.rank_pieces(0, 2)[0]))  # the first half is fine
    with pytest.raises(MiroError, match=r"bad\.jsonl:34: each line needs"):  # 31 + 1 + the 2 empty lines
        list(parts.texts(parts.rank_pieces(1, 2)[0]))
    with pytest.raises(MiroError, match=r"bad\.jsonl:34: each line needs"):
        list(src)
    lines[31] = _line(31)
    fine = b"\r\n".join(lines[:10]) + b"\r\n\n\r" + b"\n".join(lines[10:]) + b"\n"
    path.write_bytes(fine.replace(b'"caption": "caption 38', b'"caption": "caf\xe9 38'))
    src = JsonlSource(JsonlSource.Config(path=str(path)))
    parts = source_parts(src)
    got = {s.id: s.meta for s in parts.texts(parts.rank_pieces(1, 2)[0])}
    assert "line 41 of the manifest is not valid UTF-8" in got["s00038"]["caption_error"]
    assert got["s00038"] == {s.id: s.meta for s in src}["s00038"]


# ------------------------------------------------------------------------------- ranks and workers, bytes read
@pytest.mark.parametrize("storage", ["local", "memory"])
def test_ranks_and_workers_read_disjoint_byte_ranges_whose_union_is_the_file(tmp_path, counting, storage):
    """2 ranks x 2 workers as scoring drives them (rank_pieces, the ids pass, worker_pieces, samples): each rank
    reads about half of the file, each worker about a quarter, the ranges are disjoint and cover the file, and
    the samples are those of reading the file whole, in its order, once each."""
    from miro_core.scoring import DecodedBatches

    reads, state = counting
    data = _with_cut_inside_a_character(1500)
    size = len(data)
    path = _write(storage, tmp_path, data)
    state["tag"] = "whole"
    whole = [_key(s) for s in JsonlSource(JsonlSource.Config(path=path))]
    assert len(whole) == 1500
    texts, samples, owned = [], [], []
    for rank in (0, 1):  # each rank its own process: its own source and parts
        parts = source_parts(JsonlSource(JsonlSource.Config(path=path)))
        assert parts.kind == "slices"
        (piece,) = parts.rank_pieces(rank, 2)
        assert piece[1:] == (size * rank // 2, size * (rank + 1) // 2)
        state["tag"] = ("ids", rank)
        mine = list(parts.texts(piece))
        texts += [_key(s) for s in mine]
        rows = [np.arange(len(mine), dtype=np.int64)]
        ds = DecodedBatches(parts, [piece], rows, np.ones(len(mine), bool), 8)
        got_rows = []
        for w in (0, 1):
            state["tag"] = ("worker", rank, w)
            for sub, r in ds.worker_share(w, 2):
                for j, s in parts.samples(sub, np.ones(len(r), bool)):
                    samples.append(_key(s))
                    got_rows.append(int(r[j]))
        assert got_rows == list(range(len(mine)))  # the workers' shares, in order, are the rank's rows once each
        starts = parts._spans[piece[1]].starts
        owned.append((starts[0], parts._spans[piece[1]].end))
    assert texts == whole and samples == whole  # every line once, in file order
    # the ranks' lines are disjoint and, with the empty lines between them, the whole file
    assert owned[0][0] == 0 and owned[0][1] <= owned[1][0] and owned[1][1] == size
    assert not data[owned[0][1]:owned[1][0]].strip()
    assert size // 2 < owned[0][1]  # the line cut by the rank boundary went to rank 0 (where it starts)
    union = _merge(reads[("ids", 0)] + reads[("ids", 1)])
    assert union == [(0, size)]
    for rank in (0, 1):
        frac = _nbytes(reads[("ids", rank)]) / size
        assert 0.4 < frac < 0.6, (rank, frac)
        w0, w1 = _merge(reads[("worker", rank, 0)]), _merge(reads[("worker", rank, 1)])
        assert w0[-1][1] <= w1[0][0]  # the workers of a rank read disjoint bytes ...
        assert _merge(w0 + w1) == [owned[rank]]  # ... that are exactly the rank's lines
        for w in (w0, w1):
            assert 0.15 < _nbytes(w) / size < 0.35, (rank, w)
    assert _nbytes(reads["whole"]) == size


def test_a_resumed_worker_seeks_to_its_first_wanted_line(tmp_path, counting):
    """With most rows already scored, a worker reads from its first wanted line to its last one, not its range."""
    reads, state = counting
    data = _manifest(800)
    path = _write("local", tmp_path, data)
    parts = source_parts(JsonlSource(JsonlSource.Config(path=path)))
    (piece,) = parts.rank_pieces(0, 1)
    n = len(list(parts.texts(piece)))
    (sub,) = parts.worker_pieces([piece], 0, 1)
    keep = np.zeros(n, bool)
    keep[[600, 650]] = True
    state["tag"] = "resume"
    got = [(j, s.id) for j, s in parts.samples(sub, keep) if s is not None]
    assert got == [(600, "s00600"), (650, "s00650")]
    read = _nbytes(reads["resume"])
    assert read < 0.1 * len(data), read


def test_worker_pieces_without_an_ids_pass_index_the_range_themselves(tmp_path, counting):
    reads, state = counting
    data = _manifest(300)
    path = _write("memory", tmp_path, data)
    whole = [s.id for s in JsonlSource(JsonlSource.Config(path=path))]
    got = []
    for rank in (0, 1):
        parts = source_parts(JsonlSource(JsonlSource.Config(path=path)))
        (piece,) = parts.rank_pieces(rank, 2)
        state["tag"] = rank
        for w in range(3):
            for sub in parts.worker_pieces([piece], w, 3):
                got += [s.id for _, s in parts.samples(sub)]
        assert _nbytes(reads[rank]) < 0.6 * len(data)
    assert got == whole


# --------------------------------------------------------------------------------------------------- scoring
def _same_table(a, b) -> None:
    assert a.ids().tolist() == b.ids().tolist()
    assert list(a.captions()) == list(b.captions())
    for r in ("brightness", "redness"):
        np.testing.assert_array_equal(a.scores(r), b.scores(r))
        np.testing.assert_array_equal(a.status(r), b.status(r))
        assert a.failures(r) == b.failures(r)
    assert a.rejected()["by_reason"] == b.rejected()["by_reason"]


def _scoring_manifest(tmp_path) -> str:
    data = _manifest(60)
    data = data.replace(b'"id": "s00007"', b'"id": "s00003"')  # a repeated id: rejected, as before
    return _write("local", tmp_path, data)


def test_scoring_with_workers_and_limit_gives_the_rows_of_reading_it_whole(tmp_path):
    from miro_core.scoring import score_dataset
    from miro_core.store import RewardStore

    path = _scoring_manifest(tmp_path)
    ids = [s.id for s in JsonlSource(JsonlSource.Config(path=path))]
    first = list(dict.fromkeys(ids))
    score_dataset(path, ["brightness", "redness"], str(tmp_path / "a"), batch_size=4, workers=0, progress=False)
    score_dataset(path, ["brightness", "redness"], str(tmp_path / "b"), batch_size=4, workers=2, progress=False)
    a, b = RewardStore.open(str(tmp_path / "a")), RewardStore.open(str(tmp_path / "b"))
    _same_table(a, b)
    assert a.ids().tolist() == first and a.rejected()["by_reason"] == {"duplicate id": 1}
    score_dataset(path, ["brightness"], str(tmp_path / "c"), batch_size=4, workers=2, limit=9, progress=False)
    c = RewardStore.open(str(tmp_path / "c"))
    assert c.ids().tolist() == [i for i in dict.fromkeys(ids[:9])]
    assert c.reward_counts("brightness")["scored"] == 8


DRIVER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import test_scoring_helpers as helpers
helpers.install()
from miro_core.data import sources
_real = sources._open_bin


class Counting:
    def __init__(self, f):
        self.f, self.iv = f, []

    def read(self, n=-1):
        at = self.f.tell()
        b = self.f.read(n)
        if b:
            self.iv.append((at, at + len(b)))
        return b

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        import torch.utils.data as tud
        info = tud.get_worker_info()
        with open({log!r}, "a") as out:
            out.write(json.dumps([int(os.environ.get("RANK", 0)), info.id if info else -1, self.iv]) + "\\n")
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


sources._open_bin = lambda path: Counting(_real(path))
from miro_core.scoring import score_dataset
score_dataset({data!r}, ["brightness", "redness"], {store!r}, batch_size=4, chunk_rows=7, workers=2, progress=False)
"""


@pytest.mark.slow
def test_two_ranks_under_torchrun_read_their_halves_and_write_the_table_of_one_process(tmp_path):
    from miro_core.scoring import score_dataset
    from miro_core.store import RewardStore

    path = _scoring_manifest(tmp_path)
    size = os.path.getsize(path)
    log, store = tmp_path / "reads.log", str(tmp_path / "ddp.zarr")
    script = tmp_path / "drive.py"
    script.write_text(DRIVER.format(tests=str(TESTS), log=str(log), data=path, store=store))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = str(tmp_path / "one.zarr")
    score_dataset(path, ["brightness", "redness"], ref, batch_size=5, chunk_rows=7, workers=0, progress=False)
    _same_table(RewardStore.open(store), RewardStore.open(ref))
    opens = [json.loads(x) for x in log.read_text().splitlines()]
    per_rank = {r: _merge([tuple(i) for o in opens if o[0] == r for i in o[2]]) for r in (0, 1)}
    assert _merge(per_rank[0] + per_rank[1]) == [(0, size)]
    for r in (0, 1):
        assert 0.4 < _nbytes(per_rank[r]) / size < 0.6, (r, per_rank[r])
        workers = [_merge([tuple(i) for o in opens if o[0] == r and o[1] == w for i in o[2]]) for w in (0, 1)]
        assert all(workers) and workers[0][-1][1] <= workers[1][0][0]  # disjoint, in order


def test_pieces_of_another_split_replace_the_old_ones(tmp_path):
    """One parts object split for 2, 3, 300, then 1 rank (3 workers each): each split's pieces give the file once (the ranges of
    an earlier split do not shadow the new ones)."""
    path = _write("local", tmp_path, _manifest(120))
    whole = [s.id for s in JsonlSource(JsonlSource.Config(path=path))]
    parts = source_parts(JsonlSource(JsonlSource.Config(path=path)))
    for world in (2, 3, 300, 1):  # 300 ranges of ~30 bytes: their starts lie among the positions of one range
        got = []
        for r in range(world):
            for piece in parts.rank_pieces(r, world):
                mine = [s.id for s in parts.texts(piece)]
                subs = [sub for w in range(3) for sub in parts.worker_pieces([piece], w, 3)]
                assert [s.id for sub in subs for _, s in parts.samples(sub)] == mine
                got += mine
        assert got == whole, world
