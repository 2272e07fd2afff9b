"""A tiny contrastive image-text model for the world, trained by our own code (InfoNCE + hard negatives).

Image tower: 4 small convolutions (3 with stride 2) on 32x32 images, flattened (so positions survive),
linear to the embedding. Text tower: word embeddings over the world's closed vocabulary, a bidirectional
transformer encoder with learned positions (word order matters: "a red circle and a blue square" vs "a blue
circle and a red square"), mean-pooled over words, linear to the embedding. Training pairs each image with a true caption (random template, sometimes without colours)
and ``num_hard_negatives`` corrupted captions of the same scene (wrong colour / shape / count / relation,
or an omitted object), plus the other captions in the batch.

Artifacts: ``alignment.safetensors`` (weights) + ``alignment.json`` (model config, training config,
held-out metrics), rebuilt with :func:`load_alignment_model`. The package ships one under
``miro_world/weights``.
"""

from __future__ import annotations

__all__ = [
    "VOCAB",
    "tokenize",
    "AlignmentModelConfig",
    "AlignmentTrainConfig",
    "AlignmentModel",
    "train_alignment",
    "evaluate_alignment",
    "save_alignment_model",
    "load_alignment_model",
    "SHIPPED_WEIGHTS",
]

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from miro_core import MiroError, config, structure, unstructure

from .captions import NUMBER_WORDS, corrupt, drop_colors, phrase, plural, short_phrase, spec_from_scene
from .degrade import apply_degradations, sample_degradations
from .scene import COLORS, SHAPES, render, sample_scene, scene_rng

logger = logging.getLogger(__name__)

#: Directory of the shipped weights (``alignment.safetensors`` + ``alignment.json``).
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"

VOCAB: tuple[str, ...] = (
    "<pad>", "<unk>", "a", "an", "of", "and", "photo", "image", "picture", "to", "the", "left", "right",
    "above", "below", "there", "is", "are", "on", "background",
    *NUMBER_WORDS.values(), *COLORS, *SHAPES, *(plural(s) for s in SHAPES),
)
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_WORD = re.compile(r"[a-z]+")


def tokenize(captions: list[str], max_len: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids ``[B, max_len]`` (0 = pad, 1 = unknown word) and lengths ``[B]`` (at least 1)."""
    ids = torch.zeros(len(captions), max_len, dtype=torch.long)
    lengths = torch.ones(len(captions), dtype=torch.long)
    for i, text in enumerate(captions):
        words = _WORD.findall(text.lower())[:max_len]
        if words:
            ids[i, : len(words)] = torch.tensor([_INDEX.get(w, 1) for w in words])
            lengths[i] = len(words)
    return ids, lengths


@config
class AlignmentModelConfig:
    vocab: tuple[str, ...] = VOCAB
    image_size: int = 32
    channels: tuple[int, ...] = (24, 48, 64, 64)
    #: hidden width of the MLP on the flattened feature map (0: linear). Relations ("A left of B") are a
    #: conjunction of two objects' features at two places: a linear read-out of local features cannot say it.
    image_hidden: int = 192
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 64
    max_len: int = 20


@config
class AlignmentTrainConfig:
    steps: int = 800
    batch_size: int = 96
    num_hard_negatives: int = 3
    num_scenes: int = 12000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 1234
    #: probabilities of the degradations applied to training images (same kinds as the ``world`` source)
    degradation_probs: dict[str, float] = attrs.field(factory=lambda: {
        "blur": 0.25, "noise": 0.25, "low_contrast": 0.2, "clutter": 0.1, "jpeg": 0.1})
    backdrop_prob: float = 0.1
    color_drop_prob: float = 0.15
    #: fraction of training scenes of kind "position" (the rest: uniform over kinds)
    position_fraction: float = 0.3
    num_eval_scenes: int = 1000
    model: AlignmentModelConfig = attrs.field(factory=AlignmentModelConfig)


class AlignmentModel(nn.Module):
    """``forward(images [B,3,S,S] in [0,1], token_ids, lengths) -> cosine [B]``; towers also usable alone."""

    def __init__(self, cfg: AlignmentModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or AlignmentModelConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for k, c in enumerate(cfg.channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if k == 0 else 2, padding=1), nn.GELU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** (len(cfg.channels) - 1)
        flat = c_in * side * side
        if cfg.image_hidden:
            self.image_proj = nn.Sequential(nn.Linear(flat, cfg.image_hidden), nn.GELU(), nn.Linear(cfg.image_hidden, cfg.embed_dim))
        else:
            self.image_proj = nn.Linear(flat, cfg.embed_dim)
        self.embed = nn.Embedding(len(cfg.vocab), cfg.text_dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.text_dim, cfg.text_heads, 2 * cfg.text_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - 0.5) / 0.25
        return F.normalize(self.image_proj(self.conv(x).flatten(1)), dim=-1)

    def encode_text(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        h = self.text(self.embed(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=~valid)
        h = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return F.normalize(self.text_proj(h), dim=-1)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (self.encode_images(images) * self.encode_text(ids, lengths)).sum(-1)


# ---------------------------------------------------------------------------------------------------
# Data for training / evaluation
# ---------------------------------------------------------------------------------------------------
_NEGATIVE_KINDS = ("wrong_color", "wrong_shape", "wrong_count", "wrong_relation", "partial")


def _scene_pool(cfg: AlignmentTrainConfig, n: int, stream: int) -> tuple[list, torch.Tensor]:
    scenes, images = [], []
    size = cfg.model.image_size
    for i in range(n):
        rng = scene_rng(cfg.seed, i, stream)
        kind = "position" if (stream == 1 and rng.random() < cfg.position_fraction) else None
        scene = sample_scene(rng, kind=kind, backdrop_prob=cfg.backdrop_prob)
        img = render(scene, size, chw=True).transpose(1, 2, 0)
        deg = sample_degradations(rng, dict(cfg.degradation_probs))
        if deg:
            img = apply_degradations(img, deg)
        scenes.append(scene)
        images.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return scenes, torch.from_numpy(np.stack(images)).float()


def _negatives(spec, rng: np.random.Generator, k: int) -> list[Any]:
    """``k`` corrupted specs of ``spec`` (partial only when an object can be dropped). A caption with a
    relation always gets a wrong-relation negative first: it is the only negative that needs positions."""
    out = []
    if spec.relation is not None and k > 0:
        out.append(corrupt(spec, "wrong_relation", rng)[0])
    while len(out) < k:
        kind = _NEGATIVE_KINDS[int(rng.integers(len(_NEGATIVE_KINDS)))]
        if kind == "partial" and len(spec.groups) < 2:
            continue
        res = corrupt(spec, kind, rng)
        if res is not None:
            out.append(res[0])
    return out


def _true_spec(scene, rng: np.random.Generator, color_drop_prob: float):
    spec = spec_from_scene(scene)
    return drop_colors(spec) if rng.random() < color_drop_prob else spec


# ---------------------------------------------------------------------------------------------------
# Training / evaluation
# ---------------------------------------------------------------------------------------------------
def train_alignment(cfg: AlignmentTrainConfig | dict | None = None, out_dir: str | Path | None = None) -> tuple[AlignmentModel, dict[str, Any]]:
    """Train the alignment model from scratch; save it to ``out_dir`` if given. Returns ``(model, metrics)``."""
    cfg = structure(cfg or {}, AlignmentTrainConfig, path="alignment")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    scenes, images = _scene_pool(cfg, cfg.num_scenes, stream=1)
    t_data = time.perf_counter() - t0
    model = AlignmentModel(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    B, K = min(cfg.batch_size, len(scenes)), cfg.num_hard_negatives
    model.train()
    loss_val = float("nan")
    for step in range(cfg.steps):
        idx = rng.choice(len(scenes), size=B, replace=False)
        pos_specs = [_true_spec(scenes[i], rng, cfg.color_drop_prob) for i in idx]
        neg_specs = [n for s in pos_specs for n in _negatives(s, rng, K)]
        texts = [phrase(s, rng) for s in pos_specs] + [phrase(s, rng) for s in neg_specs]
        keys = [short_phrase(s) for s in pos_specs]
        ids, lengths = tokenize(texts, cfg.model.max_len)
        img_emb = model.encode_images(images[idx])
        txt_emb = model.encode_text(ids, lengths)
        logits = model.logit_scale.exp().clamp(max=100) * img_emb @ txt_emb.T  # [B, B + B*K]
        same = torch.tensor([[a == b for b in keys] for a in keys])
        same.fill_diagonal_(False)  # other images with an identical claim are not negatives
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[:, :B] = same
        logits = logits.masked_fill(mask, float("-inf"))
        target = torch.arange(B)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :B].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
        if step % 100 == 0:
            logger.info("alignment step %d loss %.4f", step, loss_val)
    model.eval()
    metrics = evaluate_alignment(model, cfg)
    metrics.update({"final_loss": loss_val, "train_seconds": time.perf_counter() - t0, "data_seconds": t_data,
                    "num_parameters": sum(p.numel() for p in model.parameters())})
    logger.info("alignment model: %s", metrics)
    if out_dir is not None:
        save_alignment_model(model, out_dir, train_config=cfg, metrics=metrics)
    return model, metrics


@torch.no_grad()
def evaluate_alignment(model: AlignmentModel, cfg: AlignmentTrainConfig | None = None, num_scenes: int | None = None) -> dict[str, float]:
    """Held-out pairwise accuracy: P(score(true caption) > score(corrupted caption)), per corruption type.

    Scenes come from a stream disjoint from training (``stream=2``); images are degraded as in training.
    """
    cfg = cfg or AlignmentTrainConfig()
    n = num_scenes or cfg.num_eval_scenes
    scenes, images = _scene_pool(cfg, n, stream=2)
    rng = np.random.default_rng(cfg.seed + 1)
    wins: dict[str, list[bool]] = {k: [] for k in _NEGATIVE_KINDS}
    model.eval()
    pos_texts, neg_texts, neg_kinds, owners = [], [], [], []
    for i, scene in enumerate(scenes):
        spec = spec_from_scene(scene)
        pos_texts.append(phrase(spec, None))
        for kind in _NEGATIVE_KINDS:
            if kind == "partial" and len(spec.groups) < 2:
                continue
            res = corrupt(spec, kind, rng)
            if res is not None:
                neg_texts.append(phrase(res[0], None))
                neg_kinds.append(kind)
                owners.append(i)
    img = model.encode_images(images)
    pos = (img * model.encode_text(*tokenize(pos_texts, model.cfg.max_len))).sum(-1)
    neg = (img[owners] * model.encode_text(*tokenize(neg_texts, model.cfg.max_len))).sum(-1)
    for k, o, s in zip(neg_kinds, owners, neg.tolist()):
        wins[k].append(pos[o].item() > s)
    out = {f"acc_{k}": float(np.mean(v)) for k, v in wins.items() if v}
    out["acc_all"] = float(np.mean([w for v in wins.values() for w in v]))
    return out


def save_alignment_model(model: AlignmentModel, out_dir: str | Path, train_config: AlignmentTrainConfig | None = None,
                         metrics: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # float16 on disk (half the size; loading casts back to float32)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(out / "alignment.safetensors"))
    meta = {"model": unstructure(model.cfg), "train": unstructure(train_config) if train_config else None,
            "metrics": metrics or {}, "format": "miro_world.alignment/1"}
    (out / "alignment.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_alignment_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> AlignmentModel:
    """Load a saved model (directory with ``alignment.json`` + ``alignment.safetensors``; None = shipped)."""
    from safetensors.torch import load_file

    d = Path(path) if path is not None else SHIPPED_WEIGHTS
    cfg_file, weights = d / "alignment.json", d / "alignment.safetensors"
    if not cfg_file.exists() or not weights.exists():
        raise MiroError(f"No world alignment model in {d} (need alignment.json and alignment.safetensors). "
                        "Train one with `miro world train-alignment --out DIR` and pass weights=DIR.")
    meta = json.loads(cfg_file.read_text())
    model = AlignmentModel(structure(meta["model"], AlignmentModelConfig, path="alignment.model"))
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()
