"""Weight resolution (local path / hub cache at a pinned revision) and `miro rewards download|info`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from miro_core.cli import main
from miro_rewards._weights import WeightSource, WeightsError, check_loading_info, check_model_config, is_present, \
    legacy_buffer_problem, locate, snapshot_revision, split_legacy_buffers
from miro_rewards.testing import FAKE_SHA, write_hub_cache

SNAP = WeightSource(role="model", repo_id="org/model", revision=FAKE_SHA,
                    required=("config.json", "model.safetensors|pytorch_model.bin"), optional=("tokenizer.json",))
ONE = WeightSource(role="head", repo_id="org/head", revision="main", required=("head.pth",), snapshot=False)


def _file(tmp_path: Path, name: str, text: str = "x") -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_locate_snapshot_with_alternative_weights(tmp_path):
    cache = tmp_path / "cache"
    snap = write_hub_cache(cache, "org/model", {"config.json": _file(tmp_path, "config.json"),
                                                "pytorch_model.bin": _file(tmp_path, "pytorch_model.bin")})
    assert locate(SNAP, cache_dir=cache) == snap
    assert snapshot_revision(snap) == FAKE_SHA and snapshot_revision(snap / "config.json") == FAKE_SHA
    assert snapshot_revision(tmp_path) is None


def test_locate_single_file_through_ref(tmp_path):
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/head", {"head.pth": _file(tmp_path, "head.pth")}, revision="a" * 40, ref="main")
    path = locate(ONE, cache_dir=cache)
    assert path.name == "head.pth" and snapshot_revision(path) == "a" * 40


def test_missing_files_error_names_files_and_command(tmp_path):
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/model", {"config.json": _file(tmp_path, "config.json")})
    with pytest.raises(WeightsError) as err:
        locate(SNAP, cache_dir=cache, reward="myreward")
    msg = str(err.value)
    assert "model.safetensors|pytorch_model.bin" in msg and "config.json," not in msg
    assert "org/model@" + FAKE_SHA in msg and "miro rewards download myreward" in msg
    assert is_present(SNAP, cache_dir=cache) is None


def test_wrong_revision_lists_cached_revisions(tmp_path):
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/head", {"head.pth": _file(tmp_path, "head.pth")}, revision="b" * 40, ref="main")
    src = WeightSource(role="head", repo_id="org/head", revision="c" * 40, required=("head.pth",), snapshot=False)
    with pytest.raises(WeightsError, match=re.escape("b" * 40) + r".*not the configured revision 'c{40}'"):
        locate(src, cache_dir=cache, reward="r")
    with pytest.raises(WeightsError, match="has nothing for org/head"):
        locate(src, cache_dir=tmp_path / "other", reward="r")


def test_cached_non_existence_counts_as_missing(tmp_path):
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/head", {"other.pth": _file(tmp_path, "other.pth")})
    no_exist = cache / "models--org--head" / ".no_exist" / FAKE_SHA
    no_exist.mkdir(parents=True)
    (no_exist / "head.pth").write_text("")
    with pytest.raises(WeightsError, match="head.pth"):
        locate(ONE, cache_dir=cache)


def test_local_paths(tmp_path):
    d = tmp_path / "local"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"lacks model\.safetensors\|pytorch_model\.bin"):
        locate(WeightSource(**{**_fields(SNAP), "local_path": str(d)}))
    (d / "model.safetensors").write_text("")
    assert locate(WeightSource(**{**_fields(SNAP), "local_path": str(d)})) == d
    with pytest.raises(WeightsError, match="must be a directory"):
        locate(WeightSource(**{**_fields(SNAP), "local_path": str(d / "config.json")}))
    head = _file(tmp_path, "head.pth")
    assert locate(WeightSource(**{**_fields(ONE), "local_path": str(head)})) == head
    assert locate(WeightSource(**{**_fields(ONE), "local_path": str(head.parent)})) == head  # directory holding it
    with pytest.raises(WeightsError, match="does not exist"):
        locate(WeightSource(**{**_fields(ONE), "local_path": str(tmp_path / "nope.pth")}))


def _fields(src: WeightSource) -> dict:
    import attrs

    return attrs.asdict(src, recurse=False)


def test_legacy_buffers_only_with_their_deterministic_content():
    import torch

    assert legacy_buffer_problem("text.embeddings.position_ids", torch.arange(77).unsqueeze(0)) is None
    assert legacy_buffer_problem("embeddings.position_ids", torch.arange(5, dtype=torch.int32)) is None
    assert legacy_buffer_problem("embeddings.token_type_ids", torch.zeros(1, 9, dtype=torch.long)) is None
    assert "not 0, 1, 2" in legacy_buffer_problem("embeddings.position_ids", torch.arange(1, 6).unsqueeze(0))
    assert "all zeros" in legacy_buffer_problem("embeddings.token_type_ids", torch.ones(1, 4, dtype=torch.long))
    assert "integer" in legacy_buffer_problem("embeddings.position_ids", torch.arange(4.0).unsqueeze(0))
    assert "integer" in legacy_buffer_problem("embeddings.position_ids", torch.zeros(2, 4, dtype=torch.long))
    assert legacy_buffer_problem("embeddings.word_embeddings.weight", torch.zeros(3)) == "not a known legacy buffer"

    state = {"a.weight": torch.zeros(2), "a.position_ids": torch.arange(3)[None], "b.position_ids": torch.arange(3)[None]}
    kept, ignored = split_legacy_buffers(state, {"a.weight", "b.position_ids"}, reward="r", what="f.pt")
    assert set(kept) == {"a.weight", "b.position_ids"} and ignored == ["a.position_ids"]  # a model's own buffer stays
    with pytest.raises(WeightsError, match=r"f\.pt.*'a\.position_ids'.*not 0, 1, 2.*Re-download"):
        split_legacy_buffers({"a.position_ids": torch.zeros(1, 3, dtype=torch.long)}, set(), reward="r", what="f.pt")


def test_check_loading_info_reports_ignored(caplog):
    info = {"missing_keys": [], "mismatched_keys": [], "unexpected_keys": [
        "text_model.embeddings.position_ids", "vision_model.extra.weight", "text_model.encoder.layers.0.weight"]}
    with caplog.at_level("INFO", logger="miro_rewards"):
        got = check_loading_info(info, what="CLIPModel from x", reward="r", ignore_unexpected=("text_model.encoder.",))
    assert got == ["text_model.embeddings.position_ids", "vision_model.extra.weight"]
    infos = [r for r in caplog.records if r.levelname == "INFO"]
    warns = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("text_model.embeddings.position_ids" in r.getMessage() for r in infos)
    assert len(warns) == 1 and "vision_model.extra.weight" in warns[0].getMessage()
    with pytest.raises(WeightsError, match="1 weight\\(s\\) missing"):
        check_loading_info({"missing_keys": ["w"]}, what="x", reward="r")


def test_check_model_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert check_model_config(tmp_path, expected_model_types=("clip",), reward="r")["model_type"] == "clip"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(WeightsError, match="remote code"):
        check_model_config(tmp_path, expected_model_types=("clip",), reward="r")
    assert check_model_config(tmp_path, expected_model_types=("clip",), reward="r", allow_remote_code=True)
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(WeightsError, match="cannot read"):
        check_model_config(tmp_path, expected_model_types=("clip",), reward="r")


# --------------------------------------------------------------------------------------------------
# miro rewards download / info, with huggingface_hub's network calls replaced
# --------------------------------------------------------------------------------------------------
LISTINGS = {
    "yuvalkirstain/PickScore_v1": ["config.json", "model.safetensors", "pytorch_model.bin", "flax_model.msgpack", "README.md"],
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": ["preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                                              "open_clip_pytorch_model.bin", "config.json"],
}


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    calls: list[tuple[str, str, str]] = []

    def list_repo_files(repo_id, *, revision=None, **kw):
        return list(LISTINGS[repo_id])

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        calls.append((repo_id, filename, revision))
        sha = revision if re.fullmatch(r"[0-9a-f]{40}", revision or "") else FAKE_SHA
        ref = None if sha == revision else (revision or "main")
        src = Path(cache_dir) / "_src" / filename
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("data")
        return str(write_hub_cache(cache_dir, repo_id, {filename: src}, revision=sha, ref=ref) / filename)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_download_then_info(tmp_path, fake_hub, capsys):
    cache = tmp_path / "hub"
    assert main(["rewards", "download", "pick", "hpsv2", "--cache-dir", str(cache)]) == 0
    fetched = {(r, f) for r, f, _ in fake_hub}
    assert fetched == {
        ("yuvalkirstain/PickScore_v1", "config.json"),
        ("yuvalkirstain/PickScore_v1", "model.safetensors"),  # first alternative only; no .bin / flax
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "preprocessor_config.json"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "vocab.json"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "merges.txt"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "tokenizer_config.json"),
        ("xswu/HPSv2", "HPS_v2.1_compressed.pt"),
    }
    assert all(rev and len(rev) == 40 for _, _, rev in fake_hub)  # pinned revisions are what gets fetched
    capsys.readouterr()
    assert main(["rewards", "info", "--json", "--cache-dir", str(cache)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all(w["present"] for w in info["pick"]["weights"]) and info["hpsv2"]["weights"][0]["present"]
    assert not any(w["present"] for w in info["aesthetic"]["weights"])
    assert info["aesthetic"]["uses_text"] is False and info["openai_clip"]["evaluation_only"] is True
    assert main(["rewards", "info", "pick", "aesthetic", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "MISSING" in text and "present (" in text and "license" in text


def test_download_with_option_override(tmp_path, fake_hub):
    assert main(["rewards", "download", "hpsv2", "--cache-dir", str(tmp_path), "--set", "hps_version=v2.0"]) == 0
    assert [f for _, f, _ in fake_hub] == ["HPS_v2_compressed.pt"]


def test_download_errors(tmp_path, fake_hub, monkeypatch, capsys):
    assert main(["rewards", "download", "pik", "--cache-dir", str(tmp_path)]) == 2
    assert "Did you mean 'pick'" in capsys.readouterr().err
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **kw):
        raise LocalEntryNotFoundError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert main(["rewards", "download", "hpsv2", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "xswu/HPSv2@" in err and "Downloading failed for hpsv2" in err
    # a repository without any accepted weights file
    LISTINGS["org/empty"] = ["README.md"]
    try:
        assert main(["rewards", "download", "pick", "--cache-dir", str(tmp_path), "--set", "model_id=org/empty"]) == 2
        assert "has none of config.json" in capsys.readouterr().err
    finally:
        LISTINGS.pop("org/empty")
