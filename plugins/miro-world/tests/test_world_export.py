"""``miro world export``: webdataset shards that read back as the world source, resumable, any fsspec URL."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from miro_core import ConfigError
from miro_core.cli import main
from miro_core.data import resolve_data
from miro_world.export import export_world
from miro_world.source import WorldSource


def test_export_reads_back_as_the_world(tmp_path):
    out = tmp_path / "shards"
    assert main(["world", "export", "--num-samples", "10", "--out", f"{out}/{{000..002}}.tar", "--seed", "3",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.tar", "001.tar", "002.tar"]  # no temporary files left
    with tarfile.open(out / "000.tar") as tar:
        names = tar.getnames()
    assert names[:4] == ["world-3-0.png", "world-3-0.txt", "world-3-0.short.txt", "world-3-0.json"]
    back = list(resolve_data(f"{out}/{{000..002}}.tar"))
    want = list(WorldSource(WorldSource.Config(num_samples=10, seed=3)))
    assert [s.id for s in back] == [s.id for s in want]  # ceil(10/3) = 4 per shard: 4 + 4 + 2
    for a, b in zip(back, want):
        assert a.caption == b.caption and a.short_caption == b.short_caption
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(a.image))), b.image)
        assert a.meta["scene"] == b.meta["scene"] and a.meta["degradations"] == b.meta["degradations"]


def test_export_resumes_and_validates(tmp_path, monkeypatch):
    pattern = f"{tmp_path}/s/{{0..3}}.tar"
    import miro_world.export as ex

    calls = {"n": 0}
    real = ex._png

    def flaky(image):
        calls["n"] += 1
        if calls["n"] == 6:  # 2 samples per shard: dies inside the third shard
            raise KeyboardInterrupt
        return real(image)

    monkeypatch.setattr(ex, "_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        export_world(pattern, 8)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["0.tar", "1.tar"]  # no torn shard left behind
    monkeypatch.setattr(ex, "_png", real)
    first = (tmp_path / "s" / "0.tar").stat().st_mtime_ns
    res = export_world(pattern, 8)
    assert res == {"shards": 4, "written": 2, "skipped": 2, "samples": 8}
    assert (tmp_path / "s" / "0.tar").stat().st_mtime_ns == first
    assert len(list(resolve_data(pattern))) == 8
    with pytest.raises(ConfigError, match="empty"):
        export_world(f"{tmp_path}/t/{{0..9}}.tar", 5)


def test_export_to_an_fsspec_url():
    import fsspec

    export_world("memory://wexp/{0..1}.tar", 3)
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/wexp", detail=False)) == ["0.tar", "1.tar"]
    assert [s.id for s in resolve_data("memory://wexp/{0..1}.tar")] == ["world-0-0", "world-0-1", "world-0-2"]
