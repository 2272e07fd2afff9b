"""The training loop: flow matching with reward-conditioned context, EMA, checkpoints, logs and exact resume.

Determinism: the data order is a pure function of ``(seed, step)`` (one seeded permutation per epoch over the
global sample index ``step * batch_size + j``), and noise, times and dropout masks for the whole global batch
come from one seeded generator that every rank advances identically (each rank uses its slice). Saving that
generator plus the global RNG states in every checkpoint makes a resumed run follow the uninterrupted one
exactly on CPU, and a DDP run on W ranks see the same batch as a single process.
"""

from __future__ import annotations

__all__ = ["TrainResult", "train", "batch_indices", "lr_factor", "make_optimizer", "decay_parameter_names", "Batcher",
           "StreamBatcher", "fsdp_units", "shard_model"]

import contextlib
import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from .._config import structure, unstructure
from .._errors import CheckpointError, ConfigError
from .._plugins import registry
from ..flow import flow_matching_loss, interpolate, sample_t, velocity_target
from ..model import build_model
from .checkpoint import (
    capture_rng,
    list_checkpoints,
    load_into,
    load_state_dict_file,
    load_training_state,
    read_checkpoint_meta,
    restore_rng,
    save_checkpoint,
)
from .config import TrainConfig
from .data import TrainingData, prepare_data
from ..distributed import (DistInfo, all_reduce_mean, barrier, cleanup, device_mesh, gather_full, init_distributed,
                           is_sharded, local_bytes, shard_like)
from .ema import EMA

log = logging.getLogger(__name__)

#: TrainConfig fields that must match when resuming (the rest, e.g. ``steps``, may change).
_RESUME_KEYS = ("model", "data", "flow", "optim", "batch_size", "grad_accum", "seed")


@attrs.define
class TrainResult:
    checkpoint_dir: Path
    step: int
    history: list[dict[str, Any]]
    #: with ``init_from``: which rewards kept their pretrained tokens, which are new, which were dropped
    init_report: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------
# Pieces (public: tests and benchmarks use them)
# ---------------------------------------------------------------------------------------------------
class _Order:
    """Global sample index -> dataset row, one seeded permutation per epoch (cached)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def rows(self, start: int, count: int) -> torch.Tensor:
        k = torch.arange(start, start + count)
        epochs = k // self.n
        out = torch.empty(count, dtype=torch.long)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self.perm(int(e))[k[sel] % self.n]
        return out


def batch_indices(n: int, seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Rows of the global batch of ``step`` (a pure function: the basis of exact resume)."""
    return _Order(n, seed).rows(step * batch_size, batch_size)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float, cosine_rate: float = 1.0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay (or constant).

    The cosine is ``min_ratio + (1 - min_ratio) * (1 + cos(rate * pi * progress)) / 2``: with ``rate = 1`` it ends
    at ``min_ratio``; the official recipe uses ``rate = 0.8`` (it ends at 9.5 % of the peak).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(cosine_rate * math.pi * progress))


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.Embedding)) or \
        type(module).__name__.endswith("Norm")


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: everything except biases and the parameters of norm
    layers (LayerNorm / GroupNorm / RMSNorm / Embedding), as the official MIRO recipe groups them."""
    excluded: set[str] = set()
    for mname, module in model.named_modules():
        if _is_norm(module):
            excluded.update(f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False))
    return {n for n, p in model.named_parameters() if p.requires_grad and n not in excluded and "bias" not in n}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or LAMB over two groups: decayed (:func:`decay_parameter_names`, plus the whole learned loss
    weighting) and not decayed (biases, norms). LAMB applies its trust ratio to the decayed group only."""
    o = cfg.optim
    decay_names = decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    in_decay = [n in decay_names or n.startswith("loss_weighting.") for n, _ in named]
    groups = [{"params": [p for (_, p), d in zip(named, in_decay) if d], "weight_decay": o.weight_decay},
              {"params": [p for (_, p), d in zip(named, in_decay) if not d], "weight_decay": 0.0}]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if o.name == "lamb":
        from .lamb import Lamb

        groups[0]["trust_ratio"], groups[1]["trust_ratio"] = True, o.lamb_trust_all_groups
        return Lamb(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    raise ConfigError(f"Unknown optimizer {o.name!r}; use 'adamw' or 'lamb'.")


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but CUDA is not available; use device='auto' or 'cpu'.")
    return dev


def _autocast(device: torch.device, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _dropout_probs(cfg: TrainConfig, rewards: tuple[str, ...]) -> torch.Tensor:
    rd = dict(cfg.data.reward_dropout)
    unknown = set(rd) - set(rewards) - {"*"}
    if unknown:
        raise ConfigError(
            f"data.reward_dropout names {sorted(unknown)}, which are not trained rewards ({list(rewards)}); "
            "use reward names or '*' for all."
        )
    probs = [float(rd.get(r, rd.get("*", 0.0))) for r in rewards]
    for r, p in zip(rewards, probs):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.reward_dropout[{r!r}] = {p} is not a probability in [0, 1].")
    return torch.tensor(probs, dtype=torch.float32)


def _pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    return (
        torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], 1),
        torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1),
    )


class _Draws:
    """The random draws of a step for the WHOLE global batch (noise, times, dropout masks, backbone uniforms), from
    the loop's generator, which every rank advances identically; each rank uses its slice."""

    def draw(self, generator: torch.Generator, latent_shape, n_rewards: int) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, self.cfg.batch_size
        eps = torch.randn(b, *latent_shape, generator=generator)
        t = sample_t(b, kind=cfg.flow.time_sampling, mean=cfg.flow.logit_mean, std=cfg.flow.logit_std, generator=generator)
        cap_drop = torch.rand(b, generator=generator) < cfg.data.caption_dropout
        rew_drop = torch.rand(b, n_rewards, generator=generator) < self.drop
        draws = {f"u_{name}": torch.rand(b, generator=generator) for name in self.uniforms}
        return {"eps": eps, "t": t, "cap_drop": cap_drop, "rew_drop": rew_drop, **draws}

    def micro_slices(self) -> list[slice]:
        per_rank = self.cfg.batch_size // self.dist.world_size
        lo = self.dist.rank * per_rank
        return [slice(lo + m * self.micro, lo + (m + 1) * self.micro) for m in range(self.cfg.grad_accum)]


class Batcher(_Draws):
    """Draws the global batch of a step (rows, noise, times, dropout masks) and returns this rank's micro-batches."""

    def __init__(self, data: TrainingData, cfg: TrainConfig, dist: DistInfo, device: torch.device,
                 uniforms: tuple[str, ...] = ()):
        self.data, self.cfg, self.dist, self.device = data, cfg, dist, device
        #: per-sample uniforms the backbone asks for (``Backbone.train_uniforms``), drawn for the global batch
        self.uniforms = tuple(uniforms)
        length = max(data.text_tokens.shape[1], data.empty_tokens.shape[1])
        self.tokens, self.mask = _pad_tokens(data.text_tokens, data.text_mask, length)
        self.empty_tokens, self.empty_mask = _pad_tokens(data.empty_tokens, data.empty_mask, length)
        self.order = _Order(len(data), cfg.seed)
        self.drop = _dropout_probs(cfg, data.reward_names)
        per_rank = cfg.batch_size // dist.world_size
        self.micro = per_rank // cfg.grad_accum

    def __call__(self, step: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
        cfg, d, b = self.cfg, self.data, self.cfg.batch_size
        rows = self.order.rows(step * b, b)
        dr = self.draw(generator, d.latent_shape, len(d.reward_names))
        out = []
        for s in self.micro_slices():
            r = rows[s]
            tokens, mask = self.tokens[r].clone(), self.mask[r].clone()
            cd = dr["cap_drop"][s]
            if cd.any():
                tokens[cd] = self.empty_tokens[0]
                mask[cd] = self.empty_mask[0]
            levels = d.levels[r].clone()
            levels[dr["rew_drop"][s]] = float("nan")
            batch = {"x": d.latents[r], "eps": dr["eps"][s], "t": dr["t"][s], "tokens": tokens, "mask": mask,
                     "levels": levels, **{k: v[s] for k, v in dr.items() if k.startswith("u_")}}
            out.append({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
        return out


class StreamBatcher(_Draws):
    """The streaming counterpart of :class:`Batcher`: this rank's samples come from its own stream of an encoded
    dataset (:class:`~miro_core.training.encoded.StreamingData`: step ``s`` takes samples ``[s * b_r, (s+1) * b_r)``
    with ``b_r`` the per-rank batch), the random draws are the same global-batch draws as in-memory training.

    With ``prefetch`` > 0 a background thread reads, joins and pads the samples of the next ``prefetch`` steps
    while the current step trains (shard reads and safetensors decoding release the GIL); the samples of a step
    do not depend on the thread (they are a pure function of the step), so a run with prefetch equals one
    without. A call for another step than the one expected (a resume, a test) restarts the thread there."""

    def __init__(self, stream: Any, cfg: TrainConfig, dist: DistInfo, device: torch.device,
                 uniforms: tuple[str, ...] = (), prefetch: int = 2):
        self.stream, self.cfg, self.dist, self.device = stream, cfg, dist, device
        self.uniforms = tuple(uniforms)
        self.drop = _dropout_probs(cfg, stream.rewards)
        self.per_rank = cfg.batch_size // dist.world_size
        self.micro = self.per_rank // cfg.grad_accum
        self.prefetch = max(0, int(prefetch))
        self._thread = None
        self._queue = None
        self._stop = None
        self._expect: int | None = None

    def fetch(self, step: int) -> dict[str, Any]:
        """This rank's samples of ``step``, joined and padded (what the prefetch thread computes)."""
        st = self.stream
        got = st.take(step * self.per_rank, self.per_rank)
        length = max(got["tokens"].shape[1], st.empty_tokens.shape[1])
        got["tokens"], got["mask"] = _pad_tokens(got["tokens"], got["mask"], length)
        got["empty_tokens"], got["empty_mask"] = _pad_tokens(st.empty_tokens, st.empty_mask, length)
        return got

    def _run(self, start: int, q, stop) -> None:
        import queue

        step = start
        while not stop.is_set():
            try:
                item = (step, self.fetch(step), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                item = (step, None, exc)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def _get(self, step: int) -> dict[str, Any]:
        if self.prefetch == 0:
            return self.fetch(step)
        if self._thread is None or self._expect != step:
            import queue
            import threading

            self.close()
            self._queue, self._stop = queue.Queue(maxsize=self.prefetch), threading.Event()
            self._thread = threading.Thread(target=self._run, args=(step, self._queue, self._stop),
                                            name="miro-stream-prefetch", daemon=True)
            self._thread.start()
        got_step, got, exc = self._queue.get()
        if exc is not None:
            self.close()
            raise exc
        assert got_step == step, (got_step, step)
        self._expect = step + 1
        return got

    def close(self) -> None:
        """Stop the prefetch thread (the loop calls it at the end; also safe to call twice)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._expect = None

    def __call__(self, step: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
        st = self.stream
        dr = self.draw(generator, st.header.latent_shape, len(st.rewards))
        got = self._get(step)
        tokens, mask = got["tokens"], got["mask"]
        empty_t, empty_m = got["empty_tokens"], got["empty_mask"]
        lo = self.dist.rank * self.per_rank
        out = []
        for s in self.micro_slices():
            local = slice(s.start - lo, s.stop - lo)
            tk, mk = tokens[local].clone(), mask[local].clone()
            cd = dr["cap_drop"][s]
            if cd.any():
                tk[cd] = empty_t[0]
                mk[cd] = empty_m[0]
            levels = got["levels"][local].clone()
            levels[dr["rew_drop"][s]] = float("nan")
            batch = {"x": got["latents"][local], "eps": dr["eps"][s], "t": dr["t"][s], "tokens": tk, "mask": mk,
                     "levels": levels, **{k: v[s] for k, v in dr.items() if k.startswith("u_")}}
            out.append({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
        return out


class _DDPForward(torch.nn.Module):
    """What DDP wraps: the model's forward plus the learned loss weighting's ``logvar(t)``, so that every trained
    parameter is used inside DDP's forward (DDP with ``find_unused_parameters`` marks a parameter unused in its
    forward ready at once and then fails when the weighting's backward reaches it again)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t, t, tokens, mask, levels, **extra):
        v = self.model(x_t, t, tokens, mask, levels, **extra)
        weighting = self.model.loss_weighting
        return v, (None if weighting is None else weighting(t))


def train_step(model, batches, optimizer, scheduler, ema, cfg: TrainConfig, device: torch.device, ddp: bool,
               fsdp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over the micro-batches; returns (mean loss, grad norm) as tensors (no host sync).

    ``ddp``: ``model`` is a DistributedDataParallel wrapper of :class:`_DDPForward`; ``fsdp``: ``model`` was sharded by
    :func:`shard_model` (gradients are reduce-scattered after the last micro-batch only, the clipping norm is
    the global norm over every shard). The returned loss is the plain flow-matching MSE; with learned loss
    weighting the gradient comes from the weighted objective ``l / exp(logvar) + logvar``."""
    total = torch.zeros((), device=device)
    n = len(batches)
    inner = model.module.model if ddp else model
    weighting = inner.loss_weighting
    for i, b in enumerate(batches):
        sync = contextlib.nullcontext() if (not ddp or i == n - 1) else model.no_sync()
        if fsdp:  # accumulate unsharded gradients locally, reduce-scatter with the last micro-batch
            model.set_requires_gradient_sync(i == n - 1)
        with sync:
            extra = {k[2:]: v for k, v in b.items() if k.startswith("u_")}
            with _autocast(device, cfg.precision):
                x_t = interpolate(b["x"], b["eps"], b["t"])
                v = model(x_t, b["t"], b["tokens"], b["mask"], b["levels"], **extra)
                if ddp:
                    v, logvar = v
            if weighting is None:
                loss = flow_matching_loss(v, b["x"], b["eps"])
                objective = loss
            else:
                per_element = (v.float() - velocity_target(b["x"], b["eps"]).float()).pow(2)
                loss = per_element.mean().detach()
                if ddp:  # LogVarWeighting.weight with the logvar DDP's forward computed
                    lv = logvar.float().reshape(-1, *([1] * (per_element.ndim - 1)))
                    objective = (per_element / lv.exp() + lv).mean()
                else:
                    with _autocast(device, cfg.precision):
                        objective = weighting.weight(per_element, b["t"]).mean()
            (objective / n).backward()
        total += loss.detach() / n
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)  # DTensor gradients: the norm over all shards
    if is_sharded(grad_norm):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(inner)
    return total, grad_norm


# ---------------------------------------------------------------------------------------------------
# FSDP
# ---------------------------------------------------------------------------------------------------
def _module_list_elements(module: torch.nn.Module) -> list[str]:
    return [f"{name}.{i}" for name, child in module.named_children()
            if isinstance(child, torch.nn.ModuleList) for i in range(len(child))]


def fsdp_units(model: torch.nn.Module) -> list[str]:
    """Names of the sub-modules :func:`shard_model` shards as FSDP units of a :class:`~miro_core.model.MiroModel`
    (the root is the last, implicit unit), children before their parents.

    The backbone's units: its ``fsdp_units()`` (an optional method returning sub-module names relative to the
    backbone, see docs/plugins.md) or else every element of each ``nn.ModuleList`` that is a direct child of the
    backbone (``blocks.0``, ``blocks.1``... for rin and dit, the ``down`` / ``up`` levels of unet); the
    conditioning's: the elements of its direct ``nn.ModuleList`` children (context blocks); the learned loss
    weighting is a unit of its own (it runs outside the model's forward). Parameters outside every unit (stems,
    embeddings, heads, norms) belong to the root unit, gathered once per forward."""
    names: list[str] = []
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        declared = getattr(backbone, "fsdp_units", None)
        own = list(declared()) if callable(declared) else _module_list_elements(backbone)
        names += [f"backbone.{n}" for n in own]
    conditioning = getattr(model, "conditioning", None)
    if conditioning is not None:
        names += [f"conditioning.{n}" for n in _module_list_elements(conditioning)]
    if getattr(model, "loss_weighting", None) is not None:
        names.append("loss_weighting")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ConfigError(f"FSDP units {unknown} are not sub-modules of the model (a backbone's fsdp_units() must "
                          "name its own sub-modules, e.g. 'blocks.0').")
    # children before parents: fully_shard of a parent must see its children already sharded
    return sorted(dict.fromkeys(names), key=lambda n: -n.count("."))


def shard_model(model: torch.nn.Module, dist: DistInfo) -> list[str]:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``) over every rank: each unit of
    :func:`fsdp_units`, then the root. Parameters become DTensors (each rank keeps ``1 / world_size`` of every
    tensor, moved to the rank's device); a unit's parameters are all-gathered for its forward and backward and
    its gradients reduce-scattered (averaged over the ranks, as DDP does). Full precision: no mixed-precision
    policy (``precision`` still applies as autocast). Returns the unit names."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh(dist)
    units = fsdp_units(model)
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        # every rank must run the sharded blocks the same number of times (see the rin backbone)
        backbone.uniform_control_flow = True
    modules = dict(model.named_modules())
    for name in units:
        fully_shard(modules[name], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return units


def _shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A full optimizer state dict (a checkpoint's, the format of one process and DDP) with every per-parameter
    tensor sharded like its (sharded) parameter, ready for ``optimizer.load_state_dict``."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for key, per_param in state["state"].items():
        p = params[int(key)]
        out[key] = {k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.ndim > 0 and tuple(v.shape) == tuple(p.shape)
                    else v for k, v in per_param.items()}
    return {**state, "state": out}


def _memory_per_rank(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA) -> dict[str, int]:
    """Bytes this rank holds for parameters, optimizer state and the EMA shadow (shards only under FSDP)."""
    opt = [v for st in optimizer.state.values() for v in st.values()]
    return {"parameters": local_bytes(model.parameters()), "optimizer": local_bytes(opt),
            "ema": local_bytes(ema.shadow.values())}


# ---------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------
def _find_resume(out: Path) -> Path | None:
    """The newest COMPLETE checkpoint (a checkpoint directory appears only once complete; a kill between its rename
    and the ``latest`` update leaves ``latest`` one behind, so ``latest`` alone is not the authority)."""
    found = list_checkpoints(out / "checkpoints")
    return found[-1] if found else None


def _check_resume_compatible(cfg: TrainConfig, meta: dict[str, Any], path: Path) -> None:
    now, then = unstructure(cfg), meta["train_config"]
    diff = [k for k in _RESUME_KEYS if json.dumps(now.get(k), sort_keys=True) != json.dumps(then.get(k), sort_keys=True)]
    if diff:
        raise CheckpointError(
            f"Cannot resume from {path}: the config differs in {', '.join(diff)} (only steps, intervals, device "
            "and logging may change on resume). Use a new --out dir, or the original config."
        )


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
    progress: bool = True,
    resume: bool = False,
    source: Any = None,
    store: Any = None,
) -> TrainResult:
    """Train a MIRO model; write checkpoints, TensorBoard logs and sample grids under ``out_dir``.

    ``eval_fn(pipeline, step) -> {metric: value}`` runs every ``eval_every`` steps on rank 0 with the EMA
    weights; its metrics go to TensorBoard and ``history``. ``resume=True`` continues from the latest
    checkpoint in ``out_dir`` (a fresh start if there is none). ``source`` / ``store`` override
    ``config.data.spec`` / ``config.data.store`` with objects (tests, notebooks).
    """
    cfg = structure(config, TrainConfig, path="train")
    device = _device(cfg)
    dist = init_distributed(device.type)
    try:
        return _train(cfg, Path(out_dir), dist, device, eval_fn, progress, resume, source, store)
    finally:
        cleanup(dist)


def _validate(cfg: TrainConfig, dist: DistInfo) -> None:
    if cfg.parallel == "fsdp" and not dist.enabled:
        log.warning("parallel = 'fsdp' in a single process: training unsharded (nothing to shard over). Launch "
                    "with `torchrun --nproc_per_node K ...` to shard the model over K ranks.")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1 (got {cfg.steps}).")
    if cfg.grad_accum < 1:
        raise ConfigError(f"grad_accum must be >= 1 (got {cfg.grad_accum}).")
    unit = dist.world_size * cfg.grad_accum
    if cfg.batch_size < unit or cfg.batch_size % unit:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a positive multiple of world_size x grad_accum = {unit} "
            "(it is the global batch per optimizer step)."
        )
    if not 0.0 <= cfg.data.caption_dropout <= 1.0:
        raise ConfigError(f"data.caption_dropout must be in [0, 1] (got {cfg.data.caption_dropout}).")


def _train(cfg, out: Path, dist: DistInfo, device: torch.device, eval_fn, progress: bool, resume: bool, source, store) -> TrainResult:
    _validate(cfg, dist)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    resume_from = _find_resume(out) if resume else None
    if resume and resume_from is None:
        log.info("--resume: no checkpoint in %s, starting from step 0", out)
    resume_meta = None
    if resume_from is not None:
        resume_from, resume_meta = read_checkpoint_meta(resume_from)
        _check_resume_compatible(cfg, resume_meta, resume_from)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- encoders and data ----------------------------------------------------------------------------
    text_encoder = registry("text_encoders").create(cfg.model.text_encoder.name, cfg.model.text_encoder.options)
    autoencoder = registry("autoencoders").create(cfg.model.autoencoder.name, cfg.model.autoencoder.options)
    text_encoder.setup(device)
    autoencoder.setup(device)
    common = dict(text_encoder_spec=cfg.model.text_encoder, autoencoder_spec=cfg.model.autoencoder,
                  source=source, store=store, device=device)
    if cfg.data.encoded:
        from .encoded import prepare_stream

        data = prepare_stream(cfg.data, text_encoder, autoencoder, rank=dist.rank, world_size=dist.world_size,
                              seed=cfg.seed, **common)
        from ..distributed import all_reduce_sum

        data_meta = {"skipped_not_in_store": all_reduce_sum(data.stream.skipped_not_in_store, dist)}
        if data_meta["skipped_not_in_store"] and dist.is_main:
            log.warning("%d samples of the encoded data set are not in the reward store: skipped (all ranks; the "
                        "count is in the checkpoints' config.json, data.skipped_not_in_store)",
                        data_meta["skipped_not_in_store"])
    else:
        data_meta = {}
        if dist.is_main:
            data = prepare_data(cfg.data, text_encoder, autoencoder, build=True, **common)
        barrier(dist)
        if not dist.is_main:
            data = prepare_data(cfg.data, text_encoder, autoencoder, build=False, **common)
    log.info("training data: %d samples, latents %s, rewards %s", len(data), data.latent_shape, data.reward_names)

    # -- model, optimizer, EMA ------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    c, h, _w = data.latent_shape
    model = build_model(cfg.model, data.reward_names, data.text_dim, c, h)
    init_report = None
    if cfg.init_from and resume_from is None:
        from ..pretrained import init_from_pretrained

        init_report = init_from_pretrained(model, list(data.reward_names), cfg.init_from)
        if dist.is_main:
            (out / "init_report.json").write_text(json.dumps(init_report, indent=2))
    if resume_from is not None:  # full weights, loaded before sharding
        load_into(model, load_state_dict_file(resume_from / "model.safetensors"), f"Checkpoint {resume_from}")
    n_params = sum(p.numel() for p in model.parameters())
    fsdp = cfg.parallel == "fsdp" and dist.enabled
    units: list[str] = []
    if fsdp:
        units = shard_model(model, dist)  # also moves the shards to the rank's device
        log.info("FSDP: %d units + the root over %d ranks (%s)", len(units), dist.world_size,
                 ", ".join(units[:8]) + (", ..." if len(units) > 8 else ""))
    else:
        model = model.to(device)
    ema = EMA(model, cfg.optim.ema_decay, cfg.optim.ema_warmup)  # sharded like the model under FSDP
    optimizer = make_optimizer(model, cfg)
    o = cfg.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, o.warmup_steps, o.schedule, o.min_lr_ratio, o.cosine_rate)
    )
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    start = 0
    if resume_from is not None:
        ema.load_shadow(load_state_dict_file(resume_from / "ema.safetensors"), device)
        state = load_training_state(resume_from)
        if fsdp:
            live = dict(model.named_parameters())
            ema.shadow = {k: shard_like(v, live[k]) for k, v in ema.shadow.items()}
            state["optimizer"] = _shard_optimizer_state(state["optimizer"], optimizer)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.num_updates = int(state["ema_updates"])
        restore_rng(state["rng"], generator)
        start = int(resume_meta["step"])
        log.info("resumed from %s at step %d", resume_from, start)
    log.info("model: %.2fM parameters on %s, %.1f MiB of them on this rank", n_params / 1e6, device,
             local_bytes(model.parameters()) / 2**20)

    ddp = dist.enabled and not fsdp
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        # unused parameters are normal here: empty register banks, self-conditioning paths taken on some steps
        net = DistributedDataParallel(_DDPForward(model), device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    if cfg.data.encoded:
        batcher = StreamBatcher(data.stream, cfg, dist, device, uniforms=model.train_uniforms)
    else:
        batcher = Batcher(data, cfg, dist, device, uniforms=model.train_uniforms)

    meta = {
        "train_config": unstructure(cfg),
        "reward_names": list(data.reward_names),
        "binner": cfg.data.binner if data.reward_names else None,
        "binner_states": data.binner_states,
        "model_info": {"text_dim": data.text_dim, "latent_shape": list(data.latent_shape),
                       "in_channels": c, "image_size": cfg.data.image_size, "num_parameters": n_params},
        "data": {"num_samples": len(data), "cache": data.cache_path, **data_meta},
        "world_size": dist.world_size,
        "parallel": "fsdp" if fsdp else ("ddp" if ddp else "single"),
    }
    if fsdp:
        meta["fsdp_units"] = units
    writer = None
    if dist.is_main:
        (out / "train_config.json").write_text(json.dumps(meta["train_config"], indent=2, sort_keys=True))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start if start else None)

    history: list[dict[str, Any]] = []
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def full_ema() -> dict[str, torch.Tensor] | None:
        """FSDP: the EMA weights gathered on rank 0 (a collective: every rank calls it); else None."""
        return gather_full(ema.state_dict(model), dist) if fsdp else None

    def pipeline(ema_state: dict[str, torch.Tensor] | None = None):
        from ..sampling import MiroPipeline

        if fsdp:  # an unsharded copy on rank 0 from the gathered EMA weights
            ema_model = build_model(cfg.model, data.reward_names, data.text_dim, c, h)
            load_into(ema_model, ema_state, "The gathered EMA weights")
            ema_model = ema_model.to(device)
        else:
            ema_model = copy.deepcopy(model)
            ema.copy_to(ema_model)
        return MiroPipeline(ema_model, text_encoder, autoencoder, reward_names=data.reward_names,
                            image_size=cfg.data.image_size, latent_shape=data.latent_shape, device=device,
                            binner_states=data.binner_states, model_config=unstructure(cfg.model))

    def checkpoint(step: int) -> Path | None:
        """Write the checkpoint of ``step`` on rank 0 (None elsewhere). FSDP: every rank calls it; the sharded
        weights, EMA and optimizer state are gathered into full tensors on rank 0 first, so the files are the
        same as a one-process or DDP run's (sampling, save_pretrained and resume under any mode read them)."""
        memory = _memory_per_rank(model, optimizer, ema)
        states = (model.state_dict(), ema.state_dict(model), optimizer.state_dict())
        if fsdp:
            states = gather_full(states, dist)
        if not dist.is_main:
            return None
        model_state, ema_state, opt_state = states
        state = {"optimizer": opt_state, "scheduler": scheduler.state_dict(),
                 "ema_updates": ema.num_updates, "rng": capture_rng(generator), "step": step}
        return save_checkpoint(ckpt_root, step, meta={**meta, "memory_per_rank": memory}, model_state=model_state,
                               ema_state=ema_state, training_state=state, keep=cfg.keep_checkpoints)

    last_ckpt = resume_from
    t_log, n_log, loss_acc = time.perf_counter(), 0, torch.zeros((), device=device)
    model.train()
    for step in range(start, cfg.steps):
        batches = batcher(step, generator)
        loss, grad_norm = train_step(net, batches, optimizer, scheduler, ema, cfg, device, ddp, fsdp)
        loss_acc += loss
        n_log += 1
        done = step + 1
        if done % max(1, cfg.log_every) == 0 or done == cfg.steps:
            mean_loss = float(all_reduce_mean(loss_acc / n_log, dist))
            elapsed = time.perf_counter() - t_log
            rec = {"step": done, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "samples_per_s": n_log * cfg.batch_size / max(elapsed, 1e-9)}
            history.append(rec)
            if writer is not None:
                for k in ("loss", "lr", "grad_norm", "samples_per_s"):
                    writer.add_scalar(f"train/{k}", rec[k], done)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{rec['lr']:.2e}")
            t_log, n_log, loss_acc = time.perf_counter(), 0, torch.zeros((), device=device)
        if bar is not None:
            bar.update(1)
        if cfg.sample_every and done % cfg.sample_every == 0:
            ema_state = full_ema()
            if dist.is_main:
                _sample_grid(pipeline(ema_state), cfg, data, out, done, writer)
                model.train()
        if cfg.eval_every and eval_fn is not None and done % cfg.eval_every == 0:
            ema_state = full_ema()
            if dist.is_main:
                metrics = {k: float(v) for k, v in (eval_fn(pipeline(ema_state), done) or {}).items()}
                model.train()
                for k, v in metrics.items():
                    if writer is not None:
                        writer.add_scalar(f"eval/{k}", v, done)
                history.append({"step": done, **{f"eval/{k}": v for k, v in metrics.items()}})
            barrier(dist)
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
            if dist.is_main or fsdp:
                written = checkpoint(done)
                if dist.is_main:
                    last_ckpt = written
            barrier(dist)
    getattr(batcher, "close", lambda: None)()  # the streaming prefetch thread
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if last_ckpt is None:  # resumed at or past the final step: nothing new to save
        last_ckpt = ckpt_root / f"step_{cfg.steps:08d}"
    return TrainResult(checkpoint_dir=ckpt_root / Path(last_ckpt).name, step=max(start, cfg.steps), history=history,
                       init_report=init_report)


def _sample_grid(pipe, cfg: TrainConfig, data: TrainingData, out: Path, step: int, writer) -> None:
    from ..sampling import image_grid

    prompts = list(cfg.sample.prompts) or data.captions[:4]
    s = cfg.sample
    images = pipe(prompts, guidance_scale=s.guidance_scale, guidance=s.guidance if data.reward_names else "none",
                  num_inference_steps=s.num_steps, solver=s.solver, seed=s.seed, output_type="pt")
    grid = image_grid(images)
    if writer is not None:
        writer.add_image("samples", grid, step)
    from PIL import Image

    (out / "samples").mkdir(exist_ok=True)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(out / "samples" / f"step_{step:08d}.png")
