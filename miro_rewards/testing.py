"""Tiny random-weight stand-ins of the real reward checkpoints, in the real on-disk layouts (for tests).

Everything here is offline: the CLIP BPE vocabulary ships inside ``open_clip`` and is turned into a
transformers ``CLIPTokenizer``; models are the real classes (transformers ``CLIPModel``, open_clip ``CLIP``,
the LAION head) with tiny widths. Files are written either as ``save_pretrained`` directories or into a
Hugging Face hub cache layout (``models--org--name/snapshots/<sha>/...`` + ``refs/main``), so the rewards'
real loaders (:func:`miro_rewards._weights.locate`, ``from_pretrained``, ``torch.load``) are exercised.
"""

from __future__ import annotations

__all__ = [
    "FAKE_SHA",
    "build_clip_tokenizer",
    "tiny_clip_config",
    "save_tiny_clip",
    "save_tiny_processor",
    "write_hub_cache",
    "write_dir_to_hub_cache",
    "tiny_open_clip_config",
    "save_tiny_open_clip_checkpoint",
    "save_tiny_aesthetic_head",
]

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import torch

#: A syntactically valid commit hash for fake cache snapshots.
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


def build_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` built from open_clip's bundled BPE (same ids as OpenAI CLIP's)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=model_max_length)


def tiny_clip_config(projection_dim: int = 16, image_size: int = 224, patch_size: int = 32, **overrides: Any):
    """A tiny ``CLIPConfig`` (2-layer 32-wide towers, the real 49408-token vocabulary, 77 positions)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
                  patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim, **overrides)


def save_tiny_clip(directory: str | Path, *, seed: int = 0, projection_dim: int = 16, with_processor: bool = True,
                   image_mean: tuple[float, ...] | None = None, image_std: tuple[float, ...] | None = None,
                   logit_scale: float | None = None) -> Path:
    """Save a random tiny ``CLIPModel`` (+ tokenizer and ``CLIPImageProcessor``) with ``save_pretrained``."""
    from transformers import CLIPModel

    directory = Path(directory)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(projection_dim=projection_dim)).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.log(torch.tensor(logit_scale))))
    model.save_pretrained(directory)
    if with_processor:
        save_tiny_processor(directory, image_mean=image_mean, image_std=image_std)
    return directory


def save_tiny_processor(directory: str | Path, *, image_mean: tuple[float, ...] | None = None,
                        image_std: tuple[float, ...] | None = None) -> Path:
    """Save a CLIP processor (tokenizer + ``CLIPImageProcessor``, 224 shortest side, 224 crop)."""
    from transformers import CLIPImageProcessor

    directory = Path(directory)
    tok = build_clip_tokenizer(directory / "_bpe")
    tok.save_pretrained(directory)
    shutil.rmtree(directory / "_bpe")
    kwargs = {}
    if image_mean is not None:
        kwargs["image_mean"] = list(image_mean)
    if image_std is not None:
        kwargs["image_std"] = list(image_std)
    CLIPImageProcessor(**kwargs).save_pretrained(directory)
    return directory


def write_hub_cache(cache_dir: str | Path, repo_id: str, files: dict[str, str | Path], *, revision: str = FAKE_SHA,
                    ref: str | None = "main") -> Path:
    """Copy ``files`` (name in repo -> source file) into a hub-cache snapshot; return the snapshot directory."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dst = snap / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(revision)
    return snap


def write_dir_to_hub_cache(cache_dir: str | Path, repo_id: str, directory: str | Path, **kwargs: Any) -> Path:
    """All files of a ``save_pretrained`` directory into a hub-cache snapshot."""
    directory = Path(directory)
    return write_hub_cache(cache_dir, repo_id, {p.name: p for p in directory.iterdir() if p.is_file()}, **kwargs)


def tiny_open_clip_config(embed_dim: int = 16) -> dict[str, Any]:
    """An open_clip ``CLIP`` config shaped like ViT-H-14 (224 px, 77-token context, CLIP vocab) but tiny."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def save_tiny_open_clip_checkpoint(path: str | Path, *, seed: int = 0, module_prefix: bool = False,
                                   config: dict[str, Any] | None = None) -> Path:
    """An HPSv2-format checkpoint (``{"state_dict": ...}``) of a random tiny open_clip ``CLIP``."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**(config or tiny_open_clip_config()))
    with torch.no_grad():  # open_clip zero-initialises some projections: randomise so features differ per input
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
    state = {("module." if module_prefix else "") + k: v for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 1}, path)
    return path


def save_tiny_aesthetic_head(path: str | Path, *, seed: int = 0, input_size: int = 768) -> Path:
    """A random LAION head state dict (keys ``layers.0.weight`` ...), saved like the released ``.pth``."""
    from .aesthetic import AestheticMLP

    torch.manual_seed(seed)
    head = AestheticMLP(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    return path
