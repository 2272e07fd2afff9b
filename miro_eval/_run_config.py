"""Configuration of ``miro-run``: :class:`RunConfig` and the presets.

Resolution order (later wins): preset < ``--config FILE.toml`` < explicit flags < ``--set key=value``.
The resolved config is saved as ``config.json`` in the out folder.
"""

from __future__ import annotations

__all__ = ["RunConfig", "EvalConfig", "ExperimentsConfig", "PRESETS", "SMALL_BACKBONES", "WORLD_REWARDS", "preset_names",
           "resolve_config", "validate_config", "parse_reward_list"]

from typing import Any

import attrs

from miro_core import config

WORLD_REWARDS = ("world_sharpness", "world_cleanliness", "world_vividness", "world_alignment")


@config
class EvalConfig:
    """Sampling and evaluation of the trained models."""

    #: prompts of the reward evaluation (captions drawn from held-out data of the same source)
    num_prompts: int = 32
    num_steps: int = 20
    guidance_scale: float = 3.0
    solver: str = "euler"
    #: reward-conditioned models: multi-reward CFG (paper eq. 3); text kept in the negative branch
    guidance: str = "multi_reward_cfg"
    #: the unconditioned baseline has no reward branch; it gets text CFG (empty caption in the negative)
    baseline_text_cfg: bool = True
    #: positive reward targets s+ of the reward-conditioned models' evaluation, sample grids, curves and
    #: test-time scaling (rewards not named: 1.0). A model not trained on a named reward (single-reward,
    #: leave-one-out) ignores that entry. Experiments that set targets themselves (controllability, trade-off)
    #: keep their own. Example: ``--set eval.positive_targets.world_vividness=0.5``
    positive_targets: dict[str, float] = attrs.field(factory=dict)
    #: negative reward targets s- (rewards not named: 0.0), e.g. every reward at 1.0 for plain text CFG of the
    #: reward-conditioned model (with ``guidance = "multi_reward_cfg_text_drop"``)
    negative_targets: dict[str, float] = attrs.field(factory=dict)
    batch_size: int = 32
    seed: int = 1234
    #: run the compositional evaluator (``world_geneval`` when registered)
    geneval: bool = True
    geneval_evaluator: str = "world_geneval"
    geneval_options: dict[str, Any] = attrs.field(factory=dict)
    #: reward-vs-step curves: evaluate every N training steps (0 = off), on ``curve_prompts`` prompts
    eval_every: int = 0
    curve_prompts: int = 16
    curve_num_steps: int = 10
    curve_geneval: bool = False
    #: prompts in each sample grid
    grid_prompts: int = 8


@config
class ExperimentsConfig:
    """Extra experiments (the ``paper-mini`` preset turns on all but ``single_reward`` and ``leave_one_out``)."""

    #: one model per reward, conditioned on that reward only (paper Figure 4)
    single_reward: bool = False
    #: MIRO without each reward in turn (appendix C.1)
    leave_one_out: bool = False
    #: sweep each listed reward's positive target (empty = the first reward); Spearman target vs measured
    controllability: bool = False
    controllability_rewards: tuple[str, ...] = ()
    controllability_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    controllability_prompts: int = 16
    #: best-of-2^k, k = 0..tts_max_log2, MIRO vs baseline, selected by ``tts_selection`` (default: first reward)
    test_time_scaling: bool = False
    tts_max_log2: int = 5
    tts_prompts: int = 16
    tts_selection: str = ""
    #: images per GenEval category for the compositional score of the kept images
    tts_geneval_images_per_category: int = 8
    #: pairwise trade-off sweep between the first two rewards
    tradeoff: bool = False
    #: every metric of the main evaluation at each guidance scale, for MIRO under each of
    #: ``guidance_sweep_variants`` and for the baseline under text CFG (no retraining)
    guidance_sweep: bool = False
    guidance_sweep_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0)
    #: ``multi_reward_cfg`` (paper eq. 3), ``multi_reward_cfg_text_drop`` (eq. 3 with the caption also dropped in the
    #: negative branch), ``text_cfg`` (s- = s+ = 1: plain text CFG of the reward-conditioned model), or any
    #: registered guidance
    guidance_sweep_variants: tuple[str, ...] = ("multi_reward_cfg", "multi_reward_cfg_text_drop", "text_cfg")


@config
class RunConfig:
    """Everything ``miro-run`` does, end to end."""

    preset: str = "default"
    name: str = ""
    #: data spec (``world:num_samples=2000,seed=0``, a folder, webdataset shards, a JSONL manifest)
    data: str = "world"
    #: options merged into a registered data source spec (``{"num_samples": 2000}`` for ``world``)
    data_options: dict[str, Any] = attrs.field(factory=dict)
    rewards: tuple[str, ...] = WORLD_REWARDS
    reward_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: extra rewards measured at evaluation only (not conditioned on)
    eval_rewards: tuple[str, ...] = ()
    binner: str = "quantile"
    bins: int = 16
    #: ``unet`` on the built-in world: at the CPU budget of the presets it is the backbone that learns the
    #: world's shapes (docs/miro-run.md, "Backbone"); ``--backbone rin`` is the paper's TextRIN
    backbone: str = "unet"
    backbone_options: dict[str, Any] = attrs.field(factory=dict)
    text_encoder: str = "minilm"
    text_encoder_options: dict[str, Any] = attrs.field(factory=dict)
    autoencoder: str = "pixel"
    autoencoder_options: dict[str, Any] = attrs.field(factory=dict)
    image_size: int = 32
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    #: also train the unconditioned baseline (same steps / seed) and compare
    baseline: bool = True
    score_batch_size: int = 64
    #: raw overrides of the training config (nested tables of miro_core.training.TrainConfig)
    train: dict[str, Any] = attrs.field(factory=dict)
    eval: EvalConfig = attrs.field(factory=EvalConfig)
    experiments: ExperimentsConfig = attrs.field(factory=ExperimentsConfig)


_SMALL_RIN = {"interface_dim": 64, "latent_dim": 96, "num_latents": 16, "num_blocks": 1, "layers_per_block": 2,
              "heads": 2, "interface_heads": 2, "patch_size": 4}

_SMALL_DIT = {"patch_size": 4, "hidden_dim": 128, "depth": 4, "heads": 4}

#: backbone options used by every preset unless the config / --set gives backbone_options
SMALL_BACKBONES: dict[str, dict[str, Any]] = {"rin": _SMALL_RIN, "dit": _SMALL_DIT, "unet": {}}

#: preset name -> overrides of RunConfig defaults (nested dicts). Sizes are measured in docs/miro-run.md.
#: The compositional score uses the same number of images in every category (``images_per_category``): the
#: world's prompt set has 3 single-object prompts and 60 colour-attribution ones, so "n images per prompt" would
#: leave the small categories (which weigh 1/6 of ``overall`` each) with a handful of images.
PRESETS: dict[str, dict[str, Any]] = {
    # smoke test: every phase runs, nothing is learned (< 2 minutes)
    "tiny": {
        "data_options": {"num_samples": 64, "image_size": 16},
        "image_size": 16,
        "bins": 4,
        "steps": 6,
        "batch_size": 8,
        "train": {"checkpoint_every": 6, "log_every": 2, "optim": {"warmup_steps": 2}},
        "eval": {"num_prompts": 4, "num_steps": 2, "batch_size": 8, "eval_every": 3, "curve_prompts": 4,
                 "curve_num_steps": 2, "grid_prompts": 4, "geneval_options": {"images_per_category": 2}},
    },
    "quick": {
        "data_options": {"num_samples": 800, "image_size": 32},
        "image_size": 32,
        "bins": 8,
        "steps": 400,
        "batch_size": 32,
        "train": {"checkpoint_every": 400, "optim": {"warmup_steps": 40}},
        "eval": {"num_prompts": 32, "num_steps": 12, "eval_every": 100, "curve_prompts": 16, "curve_num_steps": 8,
                 "geneval_options": {"images_per_category": 16}},
    },
    "default": {
        "data_options": {"num_samples": 3000, "image_size": 32},
        "image_size": 32,
        "bins": 16,
        "steps": 2000,
        "batch_size": 32,
        "train": {"checkpoint_every": 500, "optim": {"warmup_steps": 100}},
        # MIRO is sampled as the official release samples it: eq. 3 with the empty caption in the negative branch
        # (docs/results/world-effects: on the world it beats eq. 3 with the caption kept at every w > 0)
        "eval": {"num_prompts": 64, "num_steps": 16, "eval_every": 250, "curve_prompts": 24, "curve_num_steps": 10,
                 "guidance": "multi_reward_cfg_text_drop", "geneval_options": {"images_per_category": 64}},
        # a smaller sweep than paper-mini's (scales 0, 1, 3, 5) keeps the preset within 15 minutes
        # eq. 3 with the caption kept and text_cfg beside the main setting (the official branch at w = 3); the
        # official branch over the whole w grid is in docs/results/world-effects (a third variant cost ~110 s)
        "experiments": {"guidance_sweep": True, "guidance_sweep_scales": [0.0, 1.0, 3.0, 5.0],
                        "guidance_sweep_variants": ["multi_reward_cfg", "text_cfg"]},
    },
    "paper-mini": {
        "data_options": {"num_samples": 4000, "image_size": 32},
        "image_size": 32,
        "bins": 16,
        "steps": 2000,
        "batch_size": 32,
        "train": {"checkpoint_every": 1000, "optim": {"warmup_steps": 100}},
        "eval": {"num_prompts": 64, "num_steps": 16, "eval_every": 250, "curve_prompts": 24, "curve_num_steps": 10,
                 "guidance": "multi_reward_cfg_text_drop", "geneval_options": {"images_per_category": 64}},
        # the 8 ablation models (single_reward, leave_one_out) are opt-in: at ~14 min per model on a slow 2-core
        # machine they would put the preset at ~3 h (docs/miro-run.md)
        "experiments": {"controllability": True,
                        "controllability_rewards": list(WORLD_REWARDS), "test_time_scaling": True, "tts_max_log2": 5,
                        "tts_prompts": 16, "tts_selection": "world_alignment", "tradeoff": True, "guidance_sweep": True,
                        "controllability_prompts": 32},
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


# ---------------------------------------------------------------------------------------------------
# Resolution of miro-run's command line into a RunConfig (moved from run.py; not preset values)
# ---------------------------------------------------------------------------------------------------
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_reward_list(text: str) -> tuple[str, ...]:
    """``"a,b,c"`` -> ``("a", "b", "c")``, ``"none"`` -> ``()``: the shared rules of ``miro score`` / ``miro
    train`` (:func:`miro_core._reward_list.parse_reward_list`)."""
    from miro_core._reward_list import parse_reward_list as _parse

    return _parse(text, allow_none=True)


def resolve_config(args: Any) -> RunConfig:
    """preset < --config TOML < flags < --set; validated against the registries."""
    from miro_core import ConfigError, apply_overrides, load_toml, structure

    file_data: dict[str, Any] = load_toml(args.config) if args.config else {}
    preset = args.preset or file_data.get("preset") or "default"
    if preset not in PRESETS:
        from miro_core._errors import did_you_mean

        raise ConfigError(f"Unknown preset {preset!r}.{did_you_mean(preset, PRESETS)} Presets: {', '.join(PRESETS)}.")
    data = _deep_merge(PRESETS[preset], file_data)
    data["preset"] = preset
    flags: dict[str, Any] = {}
    if args.rewards is not None:
        flags["rewards"] = list(parse_reward_list(args.rewards))
    for key, attr in (("binner", "binner"), ("bins", "bins"), ("backbone", "backbone"), ("data", "data"),
                      ("steps", "steps"), ("batch_size", "batch_size"), ("seed", "seed"), ("device", "device"),
                      ("name", "name")):
        value = getattr(args, attr)
        if value is not None:
            flags[key] = value
    if args.no_baseline:
        flags["baseline"] = False
    data = _deep_merge(data, flags)
    if args.set:
        data = apply_overrides(data, list(args.set))
    if getattr(args, "reward_option", None):
        from miro_core.cli.score_cmd import parse_reward_options

        known = list(dict.fromkeys([*data.get("rewards", RunConfig().rewards), *data.get("eval_rewards", ())]))
        for name, opts in parse_reward_options(known, list(args.reward_option)).items():
            if opts:
                data["reward_options"] = _deep_merge(data.get("reward_options", {}), {name: opts})
    if "backbone_options" not in file_data and not any(s.startswith("backbone_options") for s in args.set):
        # presets use a small model of the chosen backbone (see SMALL_BACKBONES); its defaults otherwise
        data["backbone_options"] = dict(SMALL_BACKBONES.get(str(data.get("backbone", "unet")), {}))
    if args.rewards is not None:  # preset experiment settings naming other rewards follow --rewards
        ex = data.get("experiments", {})
        user_ex = set(file_data.get("experiments", {})) | {s.split("=", 1)[0].split(".", 1)[-1] for s in args.set
                                                            if s.startswith("experiments.")}
        chosen = set(flags["rewards"])
        if "controllability_rewards" in ex and "controllability_rewards" not in user_ex:
            ex["controllability_rewards"] = [r for r in ex["controllability_rewards"] if r in chosen]
        if ex.get("tts_selection") and "tts_selection" not in user_ex and ex["tts_selection"] not in chosen:
            ex["tts_selection"] = ""
    cfg = structure(data, RunConfig, path="run")
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Check names against the registries before any work starts (one-paragraph errors)."""
    from miro_core import ConfigError, registry

    for name in (*cfg.rewards, *cfg.eval_rewards):
        registry("rewards").get(name)
    registry("binners").get(cfg.binner)
    registry("backbones").get(cfg.backbone)
    registry("text_encoders").get(cfg.text_encoder)
    registry("autoencoders").get(cfg.autoencoder)
    if cfg.bins < 2:
        raise ConfigError(f"--bins {cfg.bins}: need at least 2 bins per reward.")
    if cfg.steps < 1:
        raise ConfigError(f"--steps {cfg.steps}: train for at least 1 step.")
    if not cfg.rewards and not cfg.baseline:
        raise ConfigError("No rewards and no baseline: nothing to train. Give --rewards or drop --no-baseline.")
    if not cfg.rewards and not cfg.eval_rewards:
        import logging

        logging.getLogger("miro_eval.run").warning(
            "--rewards none and no eval_rewards: the baseline is trained and sampled but no reward scores it (the "
            "reward table, curves and convergence are empty). To measure it, name the rewards to score with, e.g. "
            "--set 'eval_rewards=[\"world_sharpness\", \"world_alignment\"]'.")
    for field in ("positive_targets", "negative_targets"):
        for r, v in getattr(cfg.eval, field).items():
            if r not in cfg.rewards:
                raise ConfigError(f"eval.{field} names {r!r}, which is not in --rewards {list(cfg.rewards)}.")
            try:
                level = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"eval.{field}.{r} = {v!r}: a level must be a number in [0, 1].") from None
            if not 0.0 <= level <= 1.0:
                raise ConfigError(f"eval.{field}.{r} = {v!r}: a level must be in [0, 1] (1.0 = the best bin).")
    for r in cfg.experiments.controllability_rewards:
        if r not in cfg.rewards:
            raise ConfigError(f"experiments.controllability_rewards names {r!r}, which is not in --rewards {list(cfg.rewards)}.")
    if cfg.experiments.tts_selection and cfg.experiments.tts_selection not in (*cfg.rewards, *cfg.eval_rewards):
        raise ConfigError(f"experiments.tts_selection {cfg.experiments.tts_selection!r} is not among the rewards.")
    known = sorted({*registry("guidance").names(), "text_cfg"})
    for v in cfg.experiments.guidance_sweep_variants:
        if v not in known:
            raise ConfigError(f"experiments.guidance_sweep_variants names {v!r}, which is not a guidance; known: {', '.join(known)}.")
    for w in cfg.experiments.guidance_sweep_scales:
        if not (w >= 0 and w < float("inf")):
            raise ConfigError(f"experiments.guidance_sweep_scales has {w!r}: guidance scales must be finite and >= 0.")
