"""Data: to_tensor decoding, the three built-in sources (contract + specifics), resolve_data."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import MiroError  # noqa: E402
from miro_core.data import ImageDecodeError, resolve_data, to_tensor  # noqa: E402
from miro_core.testing import DataSourceContract  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


# ------------------------------------------------------------------------------------------- to_tensor
def _encoded(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def test_to_tensor_all_inputs(tmp_path):
    arr = helpers.make_images(1, size=12)[0]
    expected = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for fmt in ("PNG", "WEBP"):
        torch.testing.assert_close(to_tensor(_encoded(arr, fmt)), expected)
    jpg = to_tensor(_encoded(arr, "JPEG"))
    assert jpg.shape == (3, 12, 12) and abs(float(jpg.mean() - expected.mean())) < 0.05
    p = tmp_path / "x.png"
    p.write_bytes(_encoded(arr, "PNG"))
    torch.testing.assert_close(to_tensor(str(p)), expected)
    torch.testing.assert_close(to_tensor(p), expected)
    torch.testing.assert_close(to_tensor(Image.fromarray(arr)), expected)
    torch.testing.assert_close(to_tensor(arr), expected)
    torch.testing.assert_close(to_tensor(expected.clone()), expected)
    grey = to_tensor(Image.fromarray(arr[..., 0]))  # mode L -> RGB
    assert grey.shape == (3, 12, 12) and torch.equal(grey[0], grey[2])
    rgba = np.concatenate([arr, np.zeros((12, 12, 1), np.uint8)], axis=2)  # fully transparent -> white
    assert torch.allclose(to_tensor(Image.fromarray(rgba, "RGBA")), torch.ones(3, 12, 12))
    out = to_tensor(Image.fromarray(arr).convert("P"))
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_stack_images_equals_to_tensor():
    """The workers' batch path (decode to uint8, convert the whole group) is bit-identical to to_tensor."""
    from miro_core.data._decode import decode_raw, stack_images

    arr = helpers.make_images(3, size=12)
    rgba = np.concatenate([arr[1], np.full((12, 12, 1), 100, np.uint8)], axis=2)
    inputs = [_encoded(arr[0], "PNG"), Image.fromarray(arr[1]).convert("P"), arr[2], Image.fromarray(rgba, "RGBA"),
              arr[0][..., 0], torch.from_numpy(arr[1]).permute(2, 0, 1).float() / 255]
    for group in (inputs[:5], inputs):  # all uint8, and mixed with a float tensor
        got = stack_images([decode_raw(x) for x in group])
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == (len(group), 3, 12, 12)
        assert torch.equal(got, torch.stack([to_tensor(x) for x in group]))


def test_to_tensor_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="Cannot decode"):
        to_tensor(b"not an image at all")
    png = _encoded(helpers.make_images(1)[0], "PNG")
    with pytest.raises(ImageDecodeError):
        to_tensor(png[: len(png) // 2])  # truncated file
    with pytest.raises(ImageDecodeError, match="Cannot read"):
        to_tensor(str(tmp_path / "missing.png"))
    with pytest.raises(ImageDecodeError, match="CHW"):
        to_tensor(torch.rand(4, 8, 8))
    with pytest.raises(ImageDecodeError, match="Unsupported"):
        to_tensor(3.5)
    assert issubclass(ImageDecodeError, MiroError)


# ---------------------------------------------------------------------------------------------- sources
class TestImageFolder(DataSourceContract):
    def make_source(self, tmp_path):
        root = tmp_path / "folder"
        if not root.exists():
            helpers.write_folder(root, 7, sub_every=3)
            (root / "img_0001.short.txt").write_text("short one")
            (root / "notes.md").write_text("ignored")
        return miro_core.registry("data_sources").create("image_folder", {"root": str(root)})

    def test_specifics(self, tmp_path):
        src = self.make_source(tmp_path)
        samples = list(src)
        assert len(src) == 7
        assert [s.id for s in samples] == sorted(s.id for s in samples)
        assert "sub/img_0003" in [s.id for s in samples]
        by_id = {s.id: s for s in samples}
        assert by_id["img_0001"].caption == helpers.caption_for(1)
        assert by_id["img_0001"].short_caption == "short one" and by_id["img_0002"].short_caption is None
        with pytest.raises(MiroError, match="not a directory"):
            miro_core.registry("data_sources").create("image_folder", {"root": str(tmp_path / "nope")})


def _write_shard(path, start, n, with_short=False):
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for i in range(start, start + n):
            rec = {"__key__": f"k{i:04d}", "png": helpers.png_bytes(helpers.make_images(1, seed=i)[0]),
                   "txt": helpers.caption_for(i), "json": {"source": "test", "i": i}}
            if with_short:
                rec["short.txt"] = f"short {i}"
            sink.write(rec)


class TestWebDataset(DataSourceContract):
    def make_source(self, tmp_path):
        d = tmp_path / "shards"
        if not d.exists():
            d.mkdir()
            _write_shard(d / "part-000.tar", 0, 3, with_short=True)
            _write_shard(d / "part-001.tar", 3, 4)
        return miro_core.registry("data_sources").create("webdataset", {"url": str(d / "part-{000..001}.tar")})

    def test_specifics(self, tmp_path):
        samples = list(self.make_source(tmp_path))
        assert [s.id for s in samples] == [f"k{i:04d}" for i in range(7)]
        assert samples[1].short_caption == "short 1" and samples[4].short_caption is None
        assert samples[5].caption == helpers.caption_for(5) and samples[5].meta["i"] == 5
        expected = torch.from_numpy(helpers.make_images(1, seed=2)[0]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(to_tensor(samples[2].image), expected)

    def test_fsspec_url(self, tmp_path):
        import fsspec

        local = tmp_path / "one.tar"
        _write_shard(local, 0, 2)
        fs = fsspec.filesystem("memory")
        fs.pipe(f"/wds-{os.getpid()}/one.tar", local.read_bytes())
        src = resolve_data(f"memory:///wds-{os.getpid()}/one.tar")
        assert [s.id for s in src] == ["k0000", "k0001"]

    def test_missing_shard(self, tmp_path):
        src = miro_core.registry("data_sources").create("webdataset", {"url": str(tmp_path / "x-{0..1}.tar")})
        with pytest.raises(MiroError, match="Cannot open webdataset shard"):
            list(src)


class TestJsonl(DataSourceContract):
    def make_source(self, tmp_path):
        d = tmp_path / "jl"
        man = d / "manifest.jsonl"
        if not man.exists():
            (d / "imgs").mkdir(parents=True)
            lines = []
            for i, arr in enumerate(helpers.make_images(5)):
                (d / "imgs" / f"{i}.png").write_bytes(helpers.png_bytes(arr))
                row = {"id": f"j{i}", "image": f"imgs/{i}.png", "caption": helpers.caption_for(i), "extra": i}
                if i == 2:
                    row["short_caption"] = "tiny"
                lines.append(json.dumps(row))
            man.write_text("\n".join(lines) + "\n\n")
        return miro_core.registry("data_sources").create("jsonl", {"path": str(man)})

    def test_specifics(self, tmp_path):
        src = self.make_source(tmp_path)
        samples = list(src)
        assert len(src) == 5 and samples[2].short_caption == "tiny" and samples[3].meta == {"extra": 3}
        assert os.path.isabs(samples[0].image) and os.path.exists(samples[0].image)
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "a", "image": "x.png"}\n')
        with pytest.raises(MiroError, match="bad.jsonl:1: each line needs"):
            list(resolve_data(str(bad)))
        bad.write_text('{"id": "a", "image": "x.png", "caption": "c"}\n{oops\n')
        with pytest.raises(MiroError, match="bad.jsonl:2: not valid JSON"):
            list(resolve_data(str(bad)))


# ------------------------------------------------------------------------------------------ resolve_data
def test_resolve_data_forms(tmp_path):
    helpers.write_folder(tmp_path / "f", 2)
    assert resolve_data(str(tmp_path / "f")).name == "image_folder"
    assert resolve_data(str(tmp_path / "a.jsonl")).name == "jsonl"
    assert resolve_data(str(tmp_path / "s-{00..03}.tar")).urls[-1].endswith("s-03.tar")
    assert resolve_data("s3://bucket/shard-0.tar").name == "webdataset"
    src = resolve_data(f"image_folder:root={tmp_path / 'f'}")
    assert src.name == "image_folder" and len(src) == 2
    with pytest.raises(MiroError, match="Registered data sources: image_folder, jsonl, webdataset"):
        resolve_data(str(tmp_path / "nothing_here"))
    with pytest.raises(MiroError, match="Did you mean 'jsonl'"):
        resolve_data("jsonll")
    with pytest.raises(MiroError, match="key=value"):
        resolve_data("image_folder:oops")
    with pytest.raises(miro_core.ConfigError, match="unknown key"):
        resolve_data(f"image_folder:root={tmp_path},bogus=1")
    with pytest.raises(MiroError, match="Empty"):
        resolve_data("  ")
