"""BLIP (ViT + cross-attention BERT) pieces for the ImageReward reward, built from transformers classes.

THUDM's ``ImageReward.pt`` is a plain ``state_dict`` of their ``ImageReward`` module (a BLIP-pretrain model
``blip.*`` plus an ``mlp.layers.*`` head). This module rebuilds the same network with
``transformers.BlipVisionModel`` and ``transformers.BlipTextModel`` and maps the original parameter names
onto them explicitly (:func:`convert_imagereward_state_dict`). The architecture sizes are read from the
checkpoint itself (vision width, depth, patch size, image size) and from ``med_config.json`` (text encoder).
"""

from __future__ import annotations

__all__ = [
    "VISION_PREFIX",
    "TEXT_PREFIX",
    "MLP_PREFIX",
    "VisionGeometry",
    "vision_geometry",
    "convert_imagereward_state_dict",
    "ImageRewardMLP",
    "build_vision_model",
    "build_text_model",
]

import math
import re
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from miro_core import MiroError

from ._weights import LEGACY_BUFFER_NAMES, WeightsError, legacy_buffer_problem

from ._heads import PreferenceMLP

VISION_PREFIX = "blip.visual_encoder."
TEXT_PREFIX = "blip.text_encoder."
MLP_PREFIX = "mlp.layers."

# Original BLIP ViT names (after VISION_PREFIX) -> transformers BlipVisionModel names. ``{i}`` is a block index.
_VISION_MAP: list[tuple[str, str]] = [
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
]

# Original BLIP med.py BERT names (after TEXT_PREFIX) -> transformers BlipTextModel names. BLIP's ``med.py`` is
# the code transformers' BlipText was ported from, so module names coincide; listed explicitly anyway so an
# unexpected key fails loudly instead of being silently dropped.
_TEXT_MAP: list[tuple[str, str]] = [
    (r"embeddings\.(word_embeddings|position_embeddings)\.weight", r"embeddings.\1.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    (
        r"encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"encoder.layer.\1.\2.self.\3.\4",
    ),
    (
        r"encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"encoder.layer.\1.\2.output.\3.\4",
    ),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"encoder\.layer\.(\d+)\.output\.(dense|LayerNorm)\.(weight|bias)", r"encoder.layer.\1.output.\2.\3"),
]
# Parameters of THUDM's ``ImageReward`` module that its ``score`` never uses (BLIP's contrastive projections):
# present in the real file, loaded by the reference, skipped here.
_UNUSED = re.compile(r"blip\.(vision_proj|text_proj)\.(weight|bias)")
#: Why a key was ignored (values of the ``ignored`` report).
REASON_LEGACY = "legacy buffer with its deterministic content, recomputed by the model"
REASON_UNUSED = "unused by ImageReward.score (BLIP's vision_proj / text_proj)"
REASON_OPTION = "matched the ignore_keys option"

# MLP head: nn.Sequential(Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear), no activations.
_MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)


def _map_key(key: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


@attrs.frozen
class VisionGeometry:
    """ViT sizes read from the checkpoint's tensors."""

    width: int
    depth: int
    patch_size: int
    image_size: int
    mlp_dim: int


def vision_geometry(state_dict: dict[str, torch.Tensor]) -> VisionGeometry:
    """Read the BLIP ViT geometry from an original-format ImageReward state dict."""
    try:
        width = int(state_dict[VISION_PREFIX + "cls_token"].shape[-1])
        patch = int(state_dict[VISION_PREFIX + "patch_embed.proj.weight"].shape[-1])
        num_pos = int(state_dict[VISION_PREFIX + "pos_embed"].shape[1])
        mlp_dim = int(state_dict[VISION_PREFIX + "blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as exc:
        raise MiroError(
            f"The ImageReward checkpoint has no {exc.args[0]!r} tensor: it is not THUDM's ImageReward.pt format "
            "(keys 'blip.visual_encoder.*', 'blip.text_encoder.*', 'mlp.layers.*'). Point `checkpoint` at the "
            "original ImageReward.pt."
        ) from None
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(re.escape(VISION_PREFIX) + r"blocks\.(\d+)\.", k)))
    grid = math.isqrt(num_pos - 1)
    if grid * grid != num_pos - 1:
        raise MiroError(f"ImageReward checkpoint pos_embed has {num_pos - 1} patches, not a square grid; the file is corrupt.")
    return VisionGeometry(width=width, depth=depth, patch_size=patch, image_size=grid * patch, mlp_dim=mlp_dim)


def convert_imagereward_state_dict(state_dict: dict[str, torch.Tensor],
                                   ignore_keys: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Split an original-format ``ImageReward.pt`` state dict into ``{"vision", "text", "mlp"}`` state dicts,
    plus ``"ignored"``: ``{key: reason}`` of the tensors deliberately not loaded.

    ``vision`` uses :class:`transformers.BlipVisionModel` names, ``text`` :class:`transformers.BlipTextModel`
    names and ``mlp`` the names of :class:`ImageRewardMLP`. Tolerated without a target: legacy buffers
    (``position_ids`` / ``token_type_ids`` holding their deterministic content: older BLIP / transformers
    versions saved them, newer ones recompute them), BLIP's unused ``vision_proj`` / ``text_proj``, and keys
    matching a regular expression of ``ignore_keys`` (an explicit user decision). Any other key raises
    :class:`~miro_rewards._weights.WeightsError` naming it (the reference loads with ``strict=False`` and would
    silently drop it)."""

    patterns = [re.compile(p) for p in ignore_keys]
    out: dict[str, dict[str, Any]] = {"vision": {}, "text": {}, "mlp": {}, "ignored": {}}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = None
        if key.startswith(VISION_PREFIX):
            new = _map_key(key[len(VISION_PREFIX):], _VISION_MAP)
            part = "vision"
        elif key.startswith(TEXT_PREFIX):
            new = _map_key(key[len(TEXT_PREFIX):], _TEXT_MAP)
            part = "text"
        elif key.startswith(MLP_PREFIX):
            m = re.fullmatch(re.escape(MLP_PREFIX) + r"(\d+)\.(weight|bias)", key)
            if m is not None and int(m.group(1)) in _MLP_LINEAR_INDICES:
                new = f"layers.{m.group(1)}.{m.group(2)}"
            part = "mlp"
        if new is not None:
            out[part][new] = value
        elif key.rsplit(".", 1)[-1] in LEGACY_BUFFER_NAMES and key.startswith((VISION_PREFIX, TEXT_PREFIX)):
            problem = legacy_buffer_problem(key, value)
            if problem is not None:
                raise WeightsError(f"The ImageReward checkpoint has a tensor {key!r} {problem}; re-download ImageReward.pt.")
            out["ignored"][key] = REASON_LEGACY
        elif _UNUSED.fullmatch(key):
            out["ignored"][key] = REASON_UNUSED
        elif any(p.fullmatch(key) for p in patterns):
            out["ignored"][key] = REASON_OPTION
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        raise WeightsError(
            f"The ImageReward checkpoint has {len(unknown)} tensor(s) this loader does not know: {shown}. It is not "
            "THUDM's ImageReward.pt, or it carries extra modules. Use the original file from the THUDM/ImageReward "
            "repository; if you know these tensors are unused, list regular expressions matching them in the "
            "image_reward option `ignore_keys`."
        )
    return out


ImageRewardMLP = PreferenceMLP  # the shared head (``_heads.py``); name kept for callers


def build_vision_model(geom: VisionGeometry, num_heads: int | None = None):
    """A :class:`transformers.BlipVisionModel` with BLIP's ViT settings (GELU, LayerNorm eps 1e-6, qkv bias)."""
    from transformers import BlipVisionConfig, BlipVisionModel

    heads = num_heads or max(geom.width // 64, 1)
    if geom.width % heads:
        raise MiroError(f"vision_num_heads={heads} does not divide the ViT width {geom.width}; fix `vision_num_heads`.")
    cfg = BlipVisionConfig(
        hidden_size=geom.width,
        intermediate_size=geom.mlp_dim,
        num_hidden_layers=geom.depth,
        num_attention_heads=heads,
        image_size=geom.image_size,
        patch_size=geom.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
    )
    return BlipVisionModel(cfg)


def build_text_model(med_config: dict[str, Any], encoder_width: int):
    """A :class:`transformers.BlipTextModel` with cross-attention, configured from BLIP's ``med_config.json``.

    ``is_decoder=True`` only makes transformers build the cross-attention layers; scoring calls the model with
    ``is_decoder=False`` (bidirectional self-attention), as BLIP's ``BertModel`` in ``multimodal`` mode does.
    """
    from transformers import BlipTextConfig, BlipTextModel

    vocab = int(med_config.get("vocab_size", 30524))
    cfg = BlipTextConfig(
        vocab_size=vocab,
        hidden_size=int(med_config.get("hidden_size", 768)),
        encoder_hidden_size=int(encoder_width),
        intermediate_size=int(med_config.get("intermediate_size", 3072)),
        num_hidden_layers=int(med_config.get("num_hidden_layers", 12)),
        num_attention_heads=int(med_config.get("num_attention_heads", 12)),
        max_position_embeddings=int(med_config.get("max_position_embeddings", 512)),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        is_decoder=True,
    )
    return BlipTextModel(cfg, add_pooling_layer=False)
