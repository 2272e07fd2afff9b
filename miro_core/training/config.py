"""``TrainConfig``: the full, resolved description of a training run (saved in every checkpoint).

TOML files mirror these classes (``[model.backbone]``, ``[data]``, ``[optim]``, ...); ``--set a.b=c`` overrides
single fields. ``structure(data, TrainConfig)`` rejects unknown keys and names the offending field path.
"""

from __future__ import annotations

__all__ = ["DataConfig", "OptimConfig", "SampleConfig", "TrainConfig", "NO_REWARDS", "PARALLEL_MODES"]

from typing import Any, Literal

import attrs

from .._config import config
from ..flow import FlowConfig
from ..model import ModelConfig

#: ``data.rewards`` values meaning "no reward conditioning" (the baseline).
NO_REWARDS = ("none",)


@config
class DataConfig:
    """Data, reward store and conditioning inputs.

    ``rewards``: reward names from the store (``()`` or ``("none",)`` = unconditioned baseline,
    ``("all",)`` = every reward binned with ``binner``). ``reward_dropout``: per-reward probability of
    replacing a level by NaN (= missing) during training, e.g. ``{"aesthetic": 0.1}``; the key ``"*"``
    applies to every reward without its own entry. ``caption_dropout``: probability of training on the
    empty caption (makes text-dropping guidance in-distribution).
    """

    spec: str = "world"
    store: str = ""
    binner: str = "quantile"
    rewards: tuple[str, ...] = ()
    image_size: int = 32
    limit: int | None = None
    cache_dir: str = ""
    caption_dropout: float = 0.1
    reward_dropout: dict[str, float] = attrs.field(factory=dict)
    encode_batch_size: int = 64
    #: URL of an encoded dataset (latents + text-encoder outputs as shards, ``miro encode``): when set, training
    #: encodes what is missing there and then STREAMS it (memory does not grow with the data set); empty = the
    #: in-memory cache
    encoded: str = ""
    #: samples per encoded shard for sources without their own shards (webdataset: one encoded shard per tar)
    shard_rows: int = 4096
    #: encoded shards pooled into one shuffle buffer while streaming
    buffer_shards: int = 4
    encode_dtype: Literal["float16", "bfloat16", "float32"] = "float16"

    @property
    def reward_names(self) -> tuple[str, ...]:
        """The requested rewards with the baseline spellings removed (``"all"`` is resolved later)."""
        return tuple(r for r in self.rewards if r not in NO_REWARDS and r != "")


@config
class OptimConfig:
    """Optimizer (AdamW, or LAMB), LR schedule (linear warmup + cosine decay), clipping and EMA.

    Weight decay applies to every parameter except biases and norm layers. LAMB is the official release's
    variant: weight decay added to the Adam step before the trust ratio (coupled L2), trust ratio
    ``||w|| / ||step||`` only on the decayed group, bias-corrected moments."""

    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 2.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    #: cosine schedule ``(1 + cos(rate * pi * progress)) / 2``; the official recipe: 0.8
    cosine_rate: float = 1.0
    #: LAMB: apply the trust ratio to the non-decayed group too (the official recipe: only the decayed one)
    lamb_trust_all_groups: bool = False


@config
class SampleConfig:
    """Periodic sample grids written during training (TensorBoard + PNG)."""

    prompts: tuple[str, ...] = ()
    num_steps: int = 20
    guidance_scale: float = 7.0
    guidance: str = "multi_reward_cfg"
    solver: str = "euler"
    seed: int = 0


#: ``TrainConfig.parallel`` values
PARALLEL_MODES = ("ddp", "fsdp")


def _check_parallel(_obj: Any, _attr: Any, value: str) -> None:
    if value not in PARALLEL_MODES:
        raise ValueError(f"parallel must be 'ddp' (a full model replica per rank) or 'fsdp' (the model sharded "
                         f"over the ranks of a torchrun job), got {value!r}")


@config
class TrainConfig:
    """A training run. ``batch_size`` is the global batch per optimizer step (split over ranks and
    ``grad_accum`` micro-batches); ``device``: ``auto`` (CUDA when present) / ``cpu`` / ``cuda``;
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU) / ``fp32`` / ``bf16``; ``parallel``: how a
    ``torchrun`` job spreads the model over its ranks, ``ddp`` (a full replica per rank) or ``fsdp``
    (parameters, gradients, optimizer state and EMA sharded over the ranks, per block; for backbones too large
    for a replica per GPU). One process always trains unsharded."""

    model: ModelConfig = attrs.field(factory=ModelConfig)
    data: DataConfig = attrs.field(factory=DataConfig)
    optim: OptimConfig = attrs.field(factory=OptimConfig)
    flow: FlowConfig = attrs.field(factory=FlowConfig)
    sample: SampleConfig = attrs.field(factory=SampleConfig)
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0
    eval_every: int = 0
    log_every: int = 10
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: ``ddp`` (default) or ``fsdp``; may change on resume (the checkpoint format is the same)
    parallel: str = attrs.field(default="ddp", validator=_check_parallel)
    #: initialise the model from a pretrained directory (ours, an official release, or a checkpoint); ignored
    #: when resuming. Rewards the pretrained model knows keep their tokens; new rewards start fresh.
    init_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        from .._config import unstructure

        return unstructure(self)
