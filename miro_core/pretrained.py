"""Pretrained models: our diffusers-style format, and the official MIRO release format read directly.

Our format (``save_pretrained``), a directory with::

    config.json              {"format": "miro-pretrained", "format_version": 1, "model": ModelConfig,
                              "reward_names": [...], "model_info": {text_dim, latent_shape, image_size},
                              "binner": ..., "binner_states": {...}, "sampling": {defaults}, "source": {...}}
    model.safetensors        the weights to sample with (the EMA weights of a training run)
    negative_text.safetensors  optional: the stored text of the caption-dropping negative branch

The official format (``miro-t2i`` on PyPI, ``nicolas-dufour/miro`` on the Hub): ``config.json`` with ``network``
(``CADRINTextCond`` arguments), ``preconditioning`` (``FlowPrecond``), ``data_preprocessing``,
``postprocessing``, ``coherence_keys`` ...; ``model.safetensors`` with ``network.*``, ``preconditioning.*``,
``data_preprocessing.*``, ``postprocessing.*``; ``uncond_embedding.npy`` (the FLAN-T5-XL embedding of the empty
text, the negative branch's text). :func:`official_to_miro` maps it onto ``rin`` + :class:`CADConditioning`
(+ :class:`LogVarWeighting`), a ``t5`` text encoder and a ``kl`` autoencoder with the release's per-channel
normalisation; official reward names become ours (:data:`OFFICIAL_REWARD_ALIASES`). Sampling defaults then
follow the official pipeline: the caption-dropping negative branch with the stored embedding, ``w = 7``, 50 Euler
steps. Nothing is unpickled: weights are safetensors, the embedding is read with ``allow_pickle=False``.
"""

from __future__ import annotations

__all__ = [
    "PRETRAINED_FORMAT",
    "OFFICIAL_REWARD_ALIASES",
    "is_official",
    "official_to_miro",
    "load_pretrained",
    "save_pretrained",
    "convert_official",
    "resolve_pretrained_dir",
    "read_pretrained",
    "init_from_pretrained",
]

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._config import structure, unstructure
from ._errors import CheckpointError, ConfigError, MiroError

log = logging.getLogger(__name__)

PRETRAINED_FORMAT = "miro-pretrained"
PRETRAINED_VERSION = 1

#: official reward key -> our reward name
OFFICIAL_REWARD_ALIASES: dict[str, str] = {
    "clip_score": "jina_clip",
    "aesthetic_score": "aesthetic",
    "image_reward_score": "image_reward",
    "pick_a_score_score": "pick",
    "hpsv2_score": "hpsv2",
    "vqa_score": "vqa",
    "sciscore_score": "sciscore",
}
#: the official pipeline's reward keys when config.json does not list them
OFFICIAL_DEFAULT_KEYS = tuple(OFFICIAL_REWARD_ALIASES)

#: defaults of the official ``CADRINTextCond`` / ``RINBackbone`` arguments a config.json may leave out
_NET_DEFAULTS: dict[str, Any] = {
    "read_write_heads": 16, "compute_heads": 16, "latent_mlp_multiplier": 4, "data_mlp_multiplier": 4,
    "compute_dropout": 0.0, "rw_stochastic_depth": 0.0, "compute_stochastic_depth": 0.0,
    "use_cond_rin_block": False, "concat_cond_token_to_latents": True, "use_self_conditioning": False,
    "num_text_registers": 16, "coherence_dropout": 0.0, "dropout_strategy": "binomial",
}
_PRECOND_DEFAULTS: dict[str, Any] = {"do_normalization": "noise_driven", "sigma_data": 0.5,
                                     "do_gradnorm_reweighting": True, "logvar_channels": 128, "logvar_mlp_layers": 0}
#: the release's SDXL-VAE channel statistics (used when the checkpoint lacks the normalisation buffers)
_SDXL_STATS = {"scale": (7.8518, 5.8465, 6.8716, 5.3140), "bias": (-0.3480, 0.3754, 0.0419, 2.4331)}
def _official_sampling() -> dict[str, Any]:
    from .sampling import SAMPLING_PRESETS

    return dict(SAMPLING_PRESETS["official"])
_OFFICIAL_FILES = ("config.json", "model.safetensors", "uncond_embedding.npy")


# ---------------------------------------------------------------------------------------------------
# Locating a pretrained directory
# ---------------------------------------------------------------------------------------------------
def resolve_pretrained_dir(source: str | Path, revision: str | None = None, variant: str | None = None) -> Path:
    """A local directory, or a Hub repo id fetched into the Hugging Face cache (``revision`` pins a commit);
    ``variant`` is a subfolder (the official ablations repository keeps one model per subfolder)."""
    p = Path(source).expanduser()
    if p.is_dir():
        if variant:
            sub = p / variant
            if not sub.is_dir():
                have = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "config.json").is_file())
                raise CheckpointError(f"{p} has no variant {variant!r}; variants there: {', '.join(have) or 'none'}.")
            return sub
        return p
    text = str(source)
    if p.exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"Pretrained model {text!r}: no such directory, and it is not a Hub repo id ('owner/name'). Pass a "
            "directory written by save_pretrained / `miro convert`, an official MIRO release directory, or a repo id."
        )
    try:
        from huggingface_hub import snapshot_download

        prefix = f"{variant}/" if variant else ""
        root = Path(snapshot_download(text, revision=revision, allow_patterns=[
            f"{prefix}config.json", f"{prefix}*.safetensors", f"{prefix}uncond_embedding.npy"]))
        return root / variant if variant else root
    except Exception as exc:  # noqa: BLE001 - hub errors have many types; all mean "not available here"
        raise CheckpointError(
            f"Could not fetch {text!r}" + (f" at revision {revision}" if revision else "") + f" from the Hugging Face "
            f"Hub ({type(exc).__name__}: {exc}). Download it where there is network (`huggingface-cli download "
            f"{text}`), then pass the local directory."
        ) from exc


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a pretrained MIRO model.")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}).") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a JSON object.")
    return cfg


def is_official(cfg: Mapping[str, Any]) -> bool:
    """Whether a config.json is the official release's (``network`` + ``preconditioning`` sections)."""
    return isinstance(cfg.get("network"), dict) and isinstance(cfg.get("preconditioning"), dict)


# ---------------------------------------------------------------------------------------------------
# Official -> ours
# ---------------------------------------------------------------------------------------------------
_BLOCK_PARTS = {"retrieve_cond": "cond", "retriever_ca": "read", "writer_ca": "write"}
_ATTN_BLOCK = [  # inside a RIN attention block (official suffix -> ours)
    (r"initial_to_ln\.weight|initial_ln\.weight", "norm_q.weight"),
    (r"middle_ln\.weight", "norm_ffn.weight"),
    (r"(?:ca|sa)\.(q|kv|qkv|out|q_norm|k_norm)\.(weight|bias)", r"attn.\1.\2"),
    (r"ffn\.linear_packed\.(weight|bias)", r"ffn.w12.\1"),
    (r"ffn\.linear_out\.(weight|bias)", r"ffn.w3.\1"),
]
_REFINE_BLOCK = [  # inside a context refinement block
    (r"initial_ln\.(weight|bias)", r"norm1.\1"),
    (r"sa\.qkv\.(weight|bias)", r"qkv.\1"),
    (r"sa\.out\.(weight|bias)", r"proj.\1"),
    (r"layer_scale_1", "scale1.gamma"),
    (r"middle_ln\.(weight|bias)", r"norm2.\1"),
    (r"ffn\.linear_1\.(weight|bias)", r"fc1.\1"),
    (r"ffn\.linear_2\.(weight|bias)", r"fc2.\1"),
    (r"layer_scale_2", "scale2.gamma"),
]
_EMBEDDER = [(r"encode_time\.(freqs|phases)", r"fourier.\1"), (r"map_time_input\.(weight|bias)", r"fc1.\1"),
             (r"map_time_output\.(weight|bias)", r"fc2.\1")]
_NETWORK = [
    (r"patch_extractor\.(weight|bias)", r"backbone.patch_in.\1"),
    (r"data_ln\.weight", "backbone.patch_norm.weight"),
    (r"data_pos_embedding", "backbone.pos"),
    (r"latents", "backbone.latents"),
    (r"ln_previous_1\.(weight|bias)", r"backbone.self_cond.norm_in.\1"),
    (r"ln_previous_2\.(weight|bias)", r"backbone.self_cond.norm_out.\1"),
    (r"linear_previous\.linear_1\.(weight|bias)", r"backbone.self_cond.fc1.\1"),
    (r"linear_previous\.linear_2\.(weight|bias)", r"backbone.self_cond.fc2.\1"),
    (r"map_tokens_to_patches\.0\.weight", "backbone.norm_out.weight"),
    (r"map_tokens_to_patches\.1\.(weight|bias)", r"backbone.patch_out.\1"),
    (r"map_text_tokens\.(weight|bias)", r"conditioning.text_proj.\1"),
    (r"text_registers", "conditioning.registers"),
]


def _sub(rules, text: str) -> str | None:
    for pattern, repl in rules:
        m = re.fullmatch(pattern, text)
        if m:
            return m.expand(repl)
    return None


def _official_key(key: str, reward_index: Mapping[str, int]) -> str | None:
    """Our state-dict key of an official ``network.*`` / ``preconditioning.*`` key; None = not mapped."""
    if key.startswith("preconditioning."):
        return _sub([(r"logvar_proj\.0\.(freqs|phases)", r"loss_weighting.fourier.\1"),
                     (r"logvar_proj\.1\.(weight|bias)", r"loss_weighting.fc.\1")], key[len("preconditioning."):])
    if not key.startswith("network."):
        return None
    k = key[len("network."):]
    if k.startswith("time_embedder."):
        inner = _sub(_EMBEDDER, k[len("time_embedder."):])
        return f"backbone.time.{inner}" if inner else None
    m = re.fullmatch(r"rin_blocks\.(\d+)\.(retrieve_cond|retriever_ca|writer_ca|processer_sa\.(\d+))\.(.+)", k)
    if m:
        part = f"compute.{m.group(3)}" if m.group(3) is not None else _BLOCK_PARTS[m.group(2)]
        inner = _sub(_ATTN_BLOCK, m.group(4))
        return f"backbone.blocks.{m.group(1)}.{part}.{inner}" if inner else None
    m = re.fullmatch(r"transformers_blocks\.(\d+)\.(.+)", k)
    if m:
        inner = _sub(_REFINE_BLOCK, m.group(2))
        return f"conditioning.blocks.{m.group(1)}.{inner}" if inner else None
    m = re.fullmatch(r"coherence_embedder\.(.+)_coherence\.(.+)", k)
    if m and m.group(1) in reward_index:
        inner = _sub(_EMBEDDER, m.group(2))
        return f"conditioning.embedders.{reward_index[m.group(1)]}.{inner}" if inner else None
    return _sub(_NETWORK, k)


def _official_keys(cfg: Mapping[str, Any]) -> list[str]:
    keys = cfg.get("coherence_keys") or cfg["network"].get("coherence_keys") or list(OFFICIAL_DEFAULT_KEYS)
    return [str(k) for k in keys]


def official_to_miro(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, text_encoder: str | None = None,
                     vae: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(our config.json dict, our model state dict)`` of an official release (config.json + state dict).

    ``text_encoder`` / ``vae``: local directories (or Hub ids) replacing the release's
    ``text_encoder_repo`` / ``vae_repo``. Raises :class:`ConfigError` for an official variant ``rin`` cannot
    represent, and :class:`CheckpointError` for weights that do not fit.
    """
    net = {**_NET_DEFAULTS, **cfg["network"]}
    pre = {**_PRECOND_DEFAULTS, **cfg["preconditioning"]}
    if not net["use_cond_rin_block"] or net["concat_cond_token_to_latents"]:
        raise ConfigError(
            "This official checkpoint uses use_cond_rin_block=False or concat_cond_token_to_latents=True; `rin` "
            "implements the released configuration (use_cond_rin_block=True, concat_cond_token_to_latents=False) only."
        )
    if int(pre["logvar_mlp_layers"]):
        raise ConfigError("This official checkpoint has logvar_mlp_layers > 0; LogVarWeighting supports 0 only.")
    for name in ("num_latents", "latents_dim"):
        if int(pre.get(name, net[name])) != int(net[name]):
            raise ConfigError(f"Official config: preconditioning.{name} differs from network.{name}.")
    for name in ("compute_dropout", "rw_stochastic_depth", "compute_stochastic_depth", "coherence_dropout"):
        if float(net[name]):
            log.warning("official %s = %s is a training-time option; it is ignored here", name, net[name])
    keys = _official_keys(cfg)
    rewards = [OFFICIAL_REWARD_ALIASES.get(k, k) for k in keys]
    if len(set(rewards)) != len(rewards):
        raise ConfigError(f"Official coherence_keys {keys} map to duplicate reward names {rewards}.")
    latents_dim = int(net["latents_dim"])
    learned_logvar = bool(pre["do_gradnorm_reweighting"])
    precondition = pre["do_normalization"] in (True, "noise_driven")
    # normalisation of the latents: ours is z = latent * scale + shift; the release's x_raw = (x - bias) / scale
    post_scale, post_bias = state.get("postprocessing.scale"), state.get("postprocessing.bias")
    if post_scale is not None and post_bias is not None:
        s, b = post_scale.double().reshape(-1), post_bias.double().reshape(-1)
        kl_scale, kl_shift = (1.0 / s), (-b / s)
    else:
        sig, mu = torch.tensor(_SDXL_STATS["scale"], dtype=torch.float64), torch.tensor(_SDXL_STATS["bias"], dtype=torch.float64)
        kl_scale, kl_shift = 2 * sig, mu
    model = {
        "backbone": {"name": "rin", "options": {
            "patch_size": int(net["patch_size"]), "interface_dim": int(net["data_dim"]), "latent_dim": latents_dim,
            "num_latents": int(net["num_latents"]), "num_blocks": int(net["num_blocks"]),
            "layers_per_block": int(net["num_processing_layers"]), "heads": int(net["compute_heads"]),
            "interface_heads": int(net["read_write_heads"]), "mlp_ratio": float(net["latent_mlp_multiplier"]),
            "interface_mlp_ratio": float(net["data_mlp_multiplier"]),
            "self_conditioning": bool(net["use_self_conditioning"]), "precondition": precondition,
            "sigma_data": float(pre["sigma_data"]),
        }},
        "conditioning_impl": "miro_core.cad_conditioning:CADConditioning",
        "conditioning": {"dim": latents_dim, "fourier_dim": latents_dim // 4, "num_registers": int(net["num_text_registers"]),
                         "context_layers": 2, "num_heads": 16, "mlp_ratio": 4.0, "layer_scale": 0.1},
        "text_encoder": {"name": "t5", "options": {
            "model": str(text_encoder or cfg.get("text_encoder_repo") or "google/flan-t5-xl"),
            "max_length": int(cfg.get("max_text_len", 77))}},
        "autoencoder": {"name": "kl", "options": {
            "model": str(vae or cfg.get("vae_repo") or "stabilityai/sdxl-vae"),
            "shift": [float(v) for v in kl_shift], "scale": [float(v) for v in kl_scale]}},
        "loss_weighting": "learned" if learned_logvar else "none",
        "logvar_channels": int(pre["logvar_channels"]),
    }
    res = int(cfg.get("data_resolution", net["data_size"]))
    ours: dict[str, Any] = {
        "format": PRETRAINED_FORMAT, "format_version": PRETRAINED_VERSION, "model": model,
        "reward_names": rewards,
        "model_info": {"text_dim": int(net["label_dim"]), "latent_shape": [int(net["num_input_channels"]), res, res],
                       "image_size": int(cfg.get("img_resolution", 8 * res))},
        "binner": "quantile", "binner_states": {},
        "sampling": _official_sampling(),
        "source": {"format": "official", "coherence_keys": keys, "model_type": cfg.get("model_type")},
    }
    index = {k: j for j, k in enumerate(keys)}
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        if key.split(".")[0] in ("data_preprocessing", "postprocessing"):
            continue
        if key.endswith(("attention_mask_dummy", "cond_mask", "registers_coherence_mask")):
            if value.dtype != torch.bool or not bool(value.all()):
                raise CheckpointError(f"Official weight {key} is expected to be an all-True mask; this file differs.")
            continue
        if key == "network.coherence_positional_embedding":
            mapped["conditioning.position"] = value
            continue
        ours_key = _official_key(key, index)
        if ours_key is None or (ours_key.startswith("loss_weighting.") and not learned_logvar):
            unmapped.append(key)
            continue
        mapped[ours_key] = value
    if unmapped:
        raise CheckpointError(f"Official weights not understood (format changed?): {', '.join(sorted(unmapped)[:8])}"
                              + (" ..." if len(unmapped) > 8 else ""))
    return ours, {k: v.float() for k, v in mapped.items()}


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from .training.checkpoint import load_state_dict_file

    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}.")
    return load_state_dict_file(path)


def _official_negative(directory: Path) -> Any:
    import numpy as np

    from .sampling import Cond

    path = directory / "uncond_embedding.npy"
    if not path.is_file():
        raise CheckpointError(f"Official release {directory} lacks uncond_embedding.npy (the negative text).")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a plain numpy array ({exc}).") from exc
    emb = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2:
        raise CheckpointError(f"{path}: expected a [tokens, dim] embedding, got shape {tuple(emb.shape)}.")
    tokens = emb[None]
    return Cond(tokens, torch.ones(1, tokens.shape[1], dtype=torch.bool), tokens.new_zeros(1, 0))


def _component(spec: dict[str, Any], override: Any, kind: str) -> tuple[dict[str, Any], Any]:
    """Apply a ``text_encoder=`` / ``vae=`` override: a path or id replaces ``options.model``; an object is used
    as it is."""
    if override is None:
        return spec, None
    if isinstance(override, (str, os.PathLike)):
        return {**spec, "options": {**spec.get("options", {}), "model": str(override)}}, None
    if not hasattr(override, "encode" if kind == "text_encoders" else "decode"):
        raise ConfigError(f"{kind[:-1]} override must be a directory path or a built component, got {type(override).__name__}.")
    return spec, override


def load_pretrained(source: str | Path, *, revision: str | None = None, text_encoder: Any = None, vae: Any = None,
                    torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    variant: str | None = None):
    """:meth:`MiroPipeline.from_pretrained`: our format, an official release, or a training checkpoint."""
    from ._plugins import registry
    from .model import build_model
    from .sampling import Cond, MiroPipeline
    from .training.checkpoint import CHECKPOINT_FORMAT, load_into

    directory = resolve_pretrained_dir(source, revision, variant)
    cfg = _read_config(directory)
    negative = None
    if is_official(cfg):
        state = _load_safetensors(directory / "model.safetensors")
        cfg, state = official_to_miro(cfg, state)
        negative = _official_negative(directory)
    elif cfg.get("format") == CHECKPOINT_FORMAT:
        from .training.checkpoint import load_for_inference

        if text_encoder is not None or vae is not None:
            raise ConfigError("text_encoder= / vae= apply to pretrained directories; a training checkpoint uses its own.")
        pipe = load_for_inference(directory, device=device or "cpu")
        if torch_dtype is not None:
            pipe.model.to(torch_dtype)
        return pipe
    elif cfg.get("format") == PRETRAINED_FORMAT:
        if int(cfg.get("format_version", -1)) > PRETRAINED_VERSION:
            raise CheckpointError(f"{directory} has format version {cfg.get('format_version')}, newer than this MIRO "
                                  f"({PRETRAINED_VERSION}); upgrade miro.")
        state = _load_safetensors(directory / "model.safetensors")
        neg_path = directory / "negative_text.safetensors"
        if neg_path.is_file():
            t = _load_safetensors(neg_path)
            negative = Cond(t["tokens"].float(), t["mask"].bool(), t["tokens"].new_zeros(1, 0))
    else:
        raise CheckpointError(f"{directory}/config.json is neither a MIRO pretrained model, an official MIRO release "
                              "nor a MIRO training checkpoint.")
    for key in ("model", "reward_names", "model_info"):
        if key not in cfg:
            raise CheckpointError(f"{directory}/config.json lacks {key!r}.")
    model_cfg = dict(cfg["model"])
    model_cfg["text_encoder"], te = _component(dict(model_cfg["text_encoder"]), text_encoder, "text_encoders")
    model_cfg["autoencoder"], ae = _component(dict(model_cfg["autoencoder"]), vae, "autoencoders")
    from .model import ModelConfig

    try:
        mc = structure(model_cfg, ModelConfig, path="model")
    except MiroError as exc:
        raise CheckpointError(f"{directory}: its model config is not valid for this MIRO version: {exc}") from exc
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info = cfg["model_info"]
    latent_shape = tuple(int(v) for v in info["latent_shape"])
    model = build_model(mc, cfg["reward_names"], int(info["text_dim"]), latent_shape[0], latent_shape[1])
    load_into(model, state, f"Pretrained model {directory}")
    model.to(dev).eval()
    if torch_dtype is not None:
        model.to(torch_dtype)
    if te is None:
        te = registry("text_encoders").create(mc.text_encoder.name, mc.text_encoder.options)
    te.setup(dev)
    if ae is None:
        ae = registry("autoencoders").create(mc.autoencoder.name, mc.autoencoder.options)
    ae.setup(dev)
    return MiroPipeline(
        model, te, ae, reward_names=cfg["reward_names"], image_size=int(info["image_size"]), latent_shape=latent_shape,
        device=dev, binner_states=cfg.get("binner_states"), negative_text=negative,
        defaults=cfg.get("sampling"), model_config=unstructure(mc),
        metadata={"pretrained": str(directory), "binner": cfg.get("binner"), "source": cfg.get("source", {})},
    )


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------
def _write_dir(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor],
               negative: Any = None) -> Path:
    from safetensors.torch import save_file

    from ._atomic import atomic_directory

    with atomic_directory(directory) as tmp:
        weights = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
                   for k, v in state.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if negative is not None:
            save_file({"tokens": negative.text_tokens.detach().cpu().float().contiguous(),
                       "mask": negative.text_mask.detach().cpu().bool().contiguous()},
                      str(tmp / "negative_text.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(directory)


def save_pretrained(pipe: Any, directory: str | Path) -> Path:
    """Write ``pipe`` in our format (atomically: a crash leaves the old directory or the new one)."""
    if pipe.model_config is None:
        raise ConfigError("This pipeline does not know the model config it was built from; build it with "
                          "from_pretrained / from_checkpoint to save it.")
    te_cfg = unstructure(getattr(pipe.text_encoder, "config", None)) if hasattr(pipe.text_encoder, "config") else None
    ae_cfg = unstructure(getattr(pipe.autoencoder, "config", None)) if hasattr(pipe.autoencoder, "config") else None
    model_cfg = dict(pipe.model_config)
    # the autoencoder config may have been fitted (kl normalisation) after the model config was written
    if ae_cfg is not None:
        model_cfg["autoencoder"] = {**model_cfg["autoencoder"], "options": ae_cfg}
    if te_cfg is not None:
        model_cfg["text_encoder"] = {**model_cfg["text_encoder"], "options": te_cfg}
    text_dim = int(getattr(pipe.model.conditioning.config, "text_dim"))
    config = {
        "format": PRETRAINED_FORMAT, "format_version": PRETRAINED_VERSION, "model": model_cfg,
        "reward_names": list(pipe.reward_names),
        "model_info": {"text_dim": text_dim, "latent_shape": list(pipe.latent_shape), "image_size": pipe.image_size},
        "binner": pipe.metadata.get("binner"), "binner_states": pipe.binner_states,
        "sampling": dict(pipe.defaults), "source": dict(pipe.metadata.get("source") or {}),
    }
    return _write_dir(Path(directory), config, pipe.model.state_dict(), pipe.negative_text)


def convert_official(source: str | Path, out: str | Path, *, revision: str | None = None) -> Path:
    """``miro convert official SRC --out DIR``: an official release directory (or repo id) -> our format, without
    loading the text encoder or the VAE."""
    directory = resolve_pretrained_dir(source, revision)
    cfg = _read_config(directory)
    if not is_official(cfg):
        raise ConfigError(f"{directory} is not an official MIRO release (its config.json has no network / "
                          "preconditioning sections).")
    ours, state = official_to_miro(cfg, _load_safetensors(directory / "model.safetensors"))
    # check that the weights fit before writing anything
    from .model import ModelConfig, build_model
    from .training.checkpoint import load_into

    info = ours["model_info"]
    model = build_model(structure(ours["model"], ModelConfig, path="model"), ours["reward_names"], info["text_dim"],
                        info["latent_shape"][0], info["latent_shape"][1])
    load_into(model, state, f"Official release {directory}")
    ours["source"] = {**ours["source"], "converted_from": str(source), "revision": revision}
    return _write_dir(Path(out), ours, state, _official_negative(directory))


# ---------------------------------------------------------------------------------------------------
# Initialising a training run from a pretrained model
# ---------------------------------------------------------------------------------------------------
def read_pretrained(source: str | Path, revision: str | None = None) -> tuple[dict[str, Any], list[str], dict[str, torch.Tensor]]:
    """``(model config, reward names, weights)`` of a pretrained directory (ours, official, or a training
    checkpoint's EMA weights), without building the model or loading encoders."""
    from .training.checkpoint import CHECKPOINT_FORMAT, read_checkpoint_meta

    directory = resolve_pretrained_dir(source, revision)
    cfg = _read_config(directory)
    if is_official(cfg):
        ours, state = official_to_miro(cfg, _load_safetensors(directory / "model.safetensors"))
        return ours["model"], list(ours["reward_names"]), state
    if cfg.get("format") == CHECKPOINT_FORMAT:
        p, meta = read_checkpoint_meta(directory)
        return meta["train_config"]["model"], list(meta["reward_names"]), _load_safetensors(p / "ema.safetensors")
    if cfg.get("format") == PRETRAINED_FORMAT:
        return cfg["model"], list(cfg["reward_names"]), _load_safetensors(directory / "model.safetensors")
    raise CheckpointError(f"{directory} is neither a MIRO pretrained model, an official release nor a checkpoint.")


#: conditioning parameters with one row (first axis) per reward, and per-reward sub-module prefixes
_PER_REWARD_ROWS = ("conditioning.position", "conditioning.missing", "conditioning.w1", "conditioning.b1",
                    "conditioning.w2", "conditioning.b2")
_PER_REWARD_MODULES = re.compile(r"conditioning\.embedders\.(\d+)\.(.+)")


def init_from_pretrained(model: torch.nn.Module, rewards: list[str], source: str | Path) -> dict[str, Any]:
    """Copy a pretrained model's weights into ``model`` (built for ``rewards``): every shared weight must fit;
    rewards the pretrained model knows keep their tokens (embedder and position, matched by name), new rewards keep
    their fresh initialisation. Returns a report ``{source, kept, new, dropped}``."""
    _, old_rewards, state = read_pretrained(source)
    old_index = {r: j for j, r in enumerate(old_rewards)}
    target = model.state_dict()
    kept = [r for r in rewards if r in old_index]
    new = [r for r in rewards if r not in old_index]
    dropped = [r for r in old_rewards if r not in rewards]
    out: dict[str, torch.Tensor] = {}
    mismatched, missing = [], []
    for key, value in target.items():
        m = _PER_REWARD_MODULES.fullmatch(key)
        if m:
            name = rewards[int(m.group(1))]
            if name in old_index:
                src = f"conditioning.embedders.{old_index[name]}.{m.group(2)}"
                if src not in state:
                    missing.append(src)
                    continue
                out[key] = state[src]
            continue
        if key in _PER_REWARD_ROWS and key in state:
            rows = value.clone()
            for j, name in enumerate(rewards):
                if name in old_index:
                    rows[j] = state[key][old_index[name]]
            out[key] = rows
            continue
        if key not in state:
            missing.append(key)
            continue
        out[key] = state[key]
    for key, value in out.items():
        if tuple(value.shape) != tuple(target[key].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
    if missing or mismatched:
        raise CheckpointError(
            f"--init-from {source}: the pretrained weights do not fit the model to train ("
            + "; ".join([f"missing {', '.join(missing[:4])}"] if missing else [])
            + ("; " if missing and mismatched else "")
            + "; ".join([f"shape {', '.join(mismatched[:4])}"] if mismatched else [])
            + "). Train with the pretrained model's own model config (miro train --init-from takes it by default)."
        )
    model.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in out.items()}}, strict=True)
    report = {"source": str(source), "kept": kept, "new": new, "dropped": dropped}
    log.info("initialised from %s: rewards kept %s, new %s, dropped %s", source, kept, new, dropped)
    return report
