"""Hostile data: broken, huge and odd images, bad captions, broken shards, hostile ids. Each is converted or
recorded as a failure with its reason, the job finishes, `miro store info` counts them, and nothing is written
outside the output root."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core.cli import main  # noqa: E402
from miro_core.data import ImageDecodeError, to_tensor  # noqa: E402
from miro_core.scoring import score_dataset  # noqa: E402
from miro_core.store import RewardStore  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes): a decompression bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


RGB = np.array([[[200, 10, 10], [10, 200, 10]], [[10, 10, 200], [250, 250, 250]]], np.uint8)


# -------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name, data, needle", [
    ("zero-byte", b"", "empty (0 bytes)"),
    ("corrupt", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "Cannot decode image"),
    ("not an image", b"hello, I am text", "not a recognised image format"),
    ("truncated png", None, "Cannot decode image"),
    ("truncated jpeg", None, "Cannot decode image"),
])
def test_broken_images_raise_a_decode_error_with_a_reason(name, data, needle):
    if name == "truncated png":
        full = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
        data = full[: len(full) // 2]
    if name == "truncated jpeg":
        full = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
        data = full[: len(full) // 3]
    with pytest.raises(ImageDecodeError, match=re.escape(needle)):
        to_tensor(data)


def test_decompression_bombs_are_refused_from_the_header(monkeypatch):
    # over our limit (8192^2) but under PIL's own warning threshold: our check, before any pixel is decoded
    with pytest.raises(ImageDecodeError, match=r"9000x9000 = 81000000 pixels, over the limit of 67108864"):
        to_tensor(_png_header_only(9000, 9000))
    # far over PIL's hard limit too: still our error type, with the fix named
    with pytest.raises(ImageDecodeError, match="MIRO_MAX_IMAGE_PIXELS"):
        to_tensor(_png_header_only(40000, 40000))
    monkeypatch.setenv("MIRO_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        to_tensor(_save(Image.new("RGB", (11, 10))))
    assert to_tensor(_save(Image.new("RGB", (10, 10)))).shape == (3, 10, 10)
    monkeypatch.setenv("MIRO_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(miro_core.MiroError, match="not a positive integer"):
        to_tensor(_save(Image.new("RGB", (2, 2))))


def _expect_rgb(t: torch.Tensor, arr_u8: np.ndarray, atol: float = 0.0):
    want = torch.from_numpy(np.array(arr_u8, copy=True)).permute(2, 0, 1).float() / 255
    assert t.shape == want.shape and t.dtype == torch.float32
    torch.testing.assert_close(t, want, atol=atol, rtol=0)


def test_image_modes_become_rgb():
    grey = np.array([[0, 64], [128, 255]], np.uint8)
    _expect_rgb(to_tensor(_save(Image.fromarray(grey, "L"))), np.repeat(grey[..., None], 3, 2))
    # 16-bit grey: the top 8 bits
    g16 = np.array([[0, 256 * 64], [256 * 128 + 255, 65535]], np.uint16)
    _expect_rgb(to_tensor(_save(Image.fromarray(g16))), np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, 2))
    # 32-bit integer grey holding 16-bit values, and one holding 8-bit values
    g32 = Image.fromarray(g16.astype(np.int32), "I")
    _expect_rgb(to_tensor(g32), np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, 2))
    _expect_rgb(to_tensor(Image.fromarray(grey.astype(np.int32), "I")), np.repeat(grey[..., None], 3, 2))
    # float grey in [0, 1]
    f = Image.fromarray(grey.astype(np.float32) / 255, "F")
    _expect_rgb(to_tensor(f), np.repeat(grey[..., None], 3, 2))
    # RGBA and LA: alpha composited on white; premultiplied RGBa too
    rgba = np.concatenate([RGB, np.array([[[255], [0]], [[0], [255]]], np.uint8)], 2)
    out = to_tensor(_save(Image.fromarray(rgba, "RGBA")))
    want = RGB.copy()
    want[0, 1] = want[1, 0] = 255
    _expect_rgb(out, want)
    la = to_tensor(_save(Image.fromarray(np.stack([grey, np.full_like(grey, 255)], 2), "LA")))
    _expect_rgb(la, np.repeat(grey[..., None], 3, 2))
    assert to_tensor(Image.fromarray(rgba, "RGBA").convert("RGBa")).shape == (3, 2, 2)
    # palette with a transparent index: white there
    p = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    assert torch.allclose(to_tensor(_save(p))[:, 0, 0], torch.ones(3))
    # CMYK (JPEG and TIFF) and bilevel
    cmyk = Image.fromarray(RGB).convert("CMYK")
    _expect_rgb(to_tensor(_save(cmyk, "TIFF")), np.asarray(cmyk.convert("RGB")))
    assert to_tensor(_save(cmyk, "JPEG", quality=95)).shape == (3, 2, 2)
    bw = Image.fromarray(grey > 100)
    _expect_rgb(to_tensor(_save(bw)), np.repeat(np.where(grey > 100, 255, 0).astype(np.uint8)[..., None], 3, 2))


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    t = to_tensor(buf.getvalue())
    assert t.shape == (3, 4, 4) and torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


def test_exif_orientation_is_applied():
    arr = np.zeros((4, 8, 3), np.uint8)  # 4 rows x 8 columns, the left half red
    arr[:, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _save(Image.fromarray(arr), "JPEG", quality=100, exif=exif.tobytes())
    t = to_tensor(data)
    assert t.shape == (3, 8, 4)  # displayed upright: 8 rows x 4 columns
    assert float(t[0, :4].mean()) > 0.8 and float(t[0, 4:].mean()) < 0.2  # the red half is now on top
    assert to_tensor(_save(Image.fromarray(arr), "JPEG", quality=100)).shape == (3, 4, 8)  # no EXIF: as stored


# --------------------------------------------------------------------------------- the pipeline (folder)
def _tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def test_hostile_folder_job_finishes_records_reasons_and_info_counts(tmp_path, capsys):
    data = tmp_path / "data"
    helpers.write_folder(data, 10)
    (data / "img_0001.png").write_bytes(b"")  # zero-byte
    png = (data / "img_0002.png").read_bytes()
    (data / "img_0002.png").write_bytes(png[: len(png) // 2])  # truncated
    (data / "img_0003.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")  # corrupt
    (data / "img_0004.png").write_bytes(_png_header_only(20000, 20000))  # bomb
    (data / "img_0005.txt").write_bytes(b"caf\xe9 red")  # Latin-1, not UTF-8
    (data / "img_0006.txt").write_text("   ")  # empty caption
    Image.fromarray(np.full((16, 16), 30000, np.uint16)).save(data / "img_0007.png")  # 16-bit: fine
    os.remove(data / "img_0008.txt")  # no caption file at all
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "img_0008.jpg")  # same id, other extension
    before = _tree(tmp_path)
    url = str(tmp_path / "out" / "store.zarr")
    out = score_dataset(str(data), ["brightness", "redness"], url, batch_size=3, chunk_rows=4, workers=0,
                        progress=False)
    assert out["num_rows"] == 10
    s = RewardStore.open(url)
    fb, fr = dict(s.failures("brightness")), dict(s.failures("redness"))
    assert set(fb) == {"img_0001", "img_0002", "img_0003", "img_0004"}  # image problems: every reward
    assert "empty (0 bytes)" in fb["img_0001"] and "Cannot decode image" in fb["img_0002"]
    assert "over the limit" in fb["img_0004"] or "MIRO_MAX_IMAGE_PIXELS" in fb["img_0004"]
    assert set(fr) == set(fb) | {"img_0005", "img_0006", "img_0008"}  # caption problems: text rewards only
    assert "not valid UTF-8 (byte 0xe9" in fr["img_0005"] and "empty caption" in fr["img_0006"]
    assert "empty caption" in fr["img_0008"]
    assert s.captions()[5] == "caf\ufffd red"  # stored with the replacement character
    b7 = float(s.scores("brightness")[7])
    assert b7 == pytest.approx((30000 >> 8) / 255, abs=1e-6)  # the 16-bit image was converted, not clipped
    info = s.info()
    assert info["rewards"]["brightness"]["failed"] == 4 and info["rewards"]["redness"]["failed"] == 7
    assert info["rejected"]["count"] == 1 and info["rejected"]["by_reason"] == {"duplicate id": 1}
    rc = main(["store", "info", "--store", url])
    text = capsys.readouterr().out
    assert rc == 0 and "brightness: 6 scored, 4 failed" in text and "1 samples got no row (duplicate id: 1)" in text
    created = _tree(tmp_path) - before
    assert created and all(p.startswith(os.path.join("out", "store.zarr") + os.sep) for p in created), created
    # a rerun finds the same rejected sample again: counted once
    score_dataset(str(data), ["brightness"], url, workers=0, progress=False)
    assert RewardStore.open(url).rejected()["count"] == 1


# ------------------------------------------------------------------------- webdataset and JSONL sources
def _tar(path, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw)
    return raw


def test_hostile_shards_missing_members_truncation_and_ids(tmp_path):
    img = helpers.png_bytes(helpers.make_images(1)[0])
    d = tmp_path / "shards"
    d.mkdir()
    _tar(d / "s-0.tar", [("ok.png", img), ("ok.txt", b"red circle"),
                         ("noimage.txt", b"a caption without its image"),
                         ("nocaption.png", img),
                         ("../../escape.png", img), ("../../escape.txt", b"red"),
                         ("/abs/root.png", img), ("/abs/root.txt", b"red"),
                         ("dup.png", img), ("dup.txt", b"first")])
    raw = _tar(d / "s-1.tar", [m for i in range(6) for m in ((f"t{i}.png", img), (f"t{i}.txt", b"blue"))])
    with tarfile.open(d / "s-1.tar") as t:
        cut = t.getmember("t3.png").offset_data + 10
    (d / "s-1.tar").write_bytes(raw[:cut])  # truncated inside a member (at a member boundary tar cannot tell)
    (d / "s-2.tar").write_bytes(b"<html>503 Service Unavailable</html>" * 40)  # not a tar
    _tar(d / "s-3.tar", [("dup.png", img), ("dup.txt", b"second"), ("last.png", img), ("last.txt", b"green")])
    before = _tree(tmp_path)
    url = str(tmp_path / "out" / "store.zarr")
    score_dataset(str(d / "s-{0..3}.tar"), ["brightness", "redness"], url, batch_size=2, workers=0, progress=False)
    s = RewardStore.open(url)
    ids = s.ids().tolist()
    assert {"ok", "noimage", "nocaption", "../../escape", "/abs/root", "dup", "last"} <= set(ids)
    assert ids.count("dup") == 1 and s.captions()[ids.index("dup")] == "first"
    assert {"t0", "t1", "t2"} <= set(ids) and "t3" not in ids  # what the truncated shard had before the break
    fb, fr = dict(s.failures("brightness")), dict(s.failures("redness"))
    assert "no image" in fb["noimage"] and "nocaption" not in fb and "empty caption" in fr["nocaption"]
    assert "../../escape" not in fb and "../../escape" not in fr  # a hostile id is just a string
    rej = s.rejected()
    assert rej["by_reason"].get("duplicate id") == 1 and rej["by_reason"].get("unreadable shard") == 2, rej
    shards = [e[0] for e in rej["by_data"][str(d / "s-{0..3}.tar")]["examples"] if "shard" in e[1]]
    assert sorted(os.path.basename(x) for x in shards) == ["s-1.tar", "s-2.tar"]
    assert any("broke after 3 samples" in e[1] for e in rej["by_data"][str(d / "s-{0..3}.tar")]["examples"])
    created = _tree(tmp_path) - before
    assert created and all(p.startswith(os.path.join("out", "store.zarr") + os.sep) for p in created), created
    assert not (tmp_path.parent / "escape.png").exists() and not os.path.exists("/abs/root.png")


def test_hostile_jsonl_ids_and_lines(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(helpers.png_bytes(helpers.make_images(1)[0]))
    lines = [
        json.dumps({"id": "good", "image": "a.png", "caption": "red"}).encode(),
        json.dumps({"id": "nul\u0000id", "image": "a.png", "caption": "red"}).encode(),
        json.dumps({"id": "line\nbreak", "image": "a.png", "caption": "red"}).encode(),
        json.dumps({"id": "", "image": "a.png", "caption": "red"}).encode(),
        json.dumps({"id": "good", "image": "a.png", "caption": "again"}).encode(),
        json.dumps({"id": "../../x", "image": "a.png", "caption": "red"}).encode(),
        json.dumps({"id": "latin", "image": "a.png", "caption": "XX"}).encode().replace(b"XX", b"caf\xe9"),
        json.dumps({"id": "numcap", "image": "a.png", "caption": 42}).encode(),
        json.dumps({"id": "noimg", "image": "", "caption": "red"}).encode(),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    url = str(tmp_path / "store")
    score_dataset(str(manifest), ["brightness", "redness"], url, workers=0, progress=False)
    s = RewardStore.open(url)
    assert s.ids().tolist() == ["good", "../../x", "latin", "numcap", "noimg"]
    rej = s.rejected()
    assert rej["count"] == 4 and rej["by_reason"] == {"unusable id": 3, "duplicate id": 1}
    examples = dict((i, r) for i, r in rej["by_data"][str(manifest)]["examples"])
    assert "NUL" in examples[repr("nul\u0000id")] and "control character" in examples[repr("line\nbreak")]
    fr = dict(s.failures("redness"))
    assert "not valid UTF-8" in fr["latin"] and "not a string" in fr["numcap"]
    assert "no image" in dict(s.failures("brightness"))["noimg"]
    assert s.reward_counts("brightness") == {"scored": 4, "failed": 1, "missing": 0, "truncated": 0,
                                             "short_caption": 0}


def test_all_ids_unusable_is_one_clear_error(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(helpers.png_bytes(helpers.make_images(1)[0]))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "\u0001", "image": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(miro_core.MiroError, match="None of the 1 samples .* has a usable id"):
        score_dataset(str(manifest), ["brightness"], str(tmp_path / "s"), workers=0, progress=False)
