"""The one set of process-group helpers of miro (scoring, encoding and training use them).

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init_distributed` joins the process group described by the
environment: NCCL when the job runs on CUDA, gloo on CPU. A single process gets a :class:`DistInfo` with
``world_size == 1`` and every helper is a no-op.

Timeouts: a collective waits for the slowest rank, and in miro the slowest rank may be busy for hours (rank 0
writing the rows of 16M samples into a store, a rank scoring or encoding its share). The process group is
therefore created with a long timeout, ``MIRO_DIST_TIMEOUT`` seconds (default 7 days), instead of torch's 30
minutes; a crashed rank is still seen at once by torchrun, which stops the others. Long waits with no collective
at all (ranks encoding shards) poll for files instead (see :mod:`miro_core.training.encoded`).
"""

from __future__ import annotations

__all__ = ["DistInfo", "init_distributed", "barrier", "all_reduce_mean", "all_reduce_sum", "agree",
           "broadcast_object", "gather_objects", "scatter_objects", "cleanup", "dist_timeout", "env_rank", "DEFAULT_TIMEOUT_S",
           "device_mesh", "is_sharded", "gather_full", "shard_like", "local_bytes"]

import datetime
import logging
import os
from typing import Any

import attrs
import torch
import torch.distributed as dist

from ._errors import MiroError

log = logging.getLogger(__name__)

#: the process-group timeout unless ``MIRO_DIST_TIMEOUT`` says otherwise: longer than any phase of a job
DEFAULT_TIMEOUT_S = 7 * 24 * 3600


def dist_timeout() -> datetime.timedelta:
    raw = os.environ.get("MIRO_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise MiroError(f"MIRO_DIST_TIMEOUT={raw!r} is not a number of seconds; unset it or pass e.g. 86400.") from None
    if seconds <= 0:
        raise MiroError(f"MIRO_DIST_TIMEOUT must be > 0 seconds (got {raw!r}).")
    return datetime.timedelta(seconds=seconds)


@attrs.frozen
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    backend: str = ""
    #: with NCCL, a gloo group for the object collectives (ids, rows: host data that must not go through a GPU)
    cpu_group: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the rank's GPU with NCCL, the CPU otherwise."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def env_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment, without joining a process group (for jobs
    whose ranks never wait on each other, e.g. ``miro encode``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise MiroError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun.")
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def init_distributed(device_type: str = "cpu", *, rank: int | None = None, world_size: int | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    ``rank`` / ``world_size`` override the environment (they must agree with an already initialised group).
    NCCL when ``device_type`` is ``"cuda"``, gloo otherwise; the timeout is :func:`dist_timeout`."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    rk = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    if world < 1 or not 0 <= rk < world:
        raise MiroError(f"rank {rk} is outside world_size {world}.")
    if world == 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", rk))
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rk:
            raise MiroError(f"rank {rk} of {world} was asked for, but the process group in place is rank "
                            f"{dist.get_rank()} of {dist.get_world_size()}.")
        backend = str(dist.get_backend())
        cpu = dist.new_group(backend="gloo", timeout=dist_timeout()) if backend == "nccl" else None
        return DistInfo(rank=rk, world_size=world, local_rank=local, backend=backend, cpu_group=cpu)
    if "MASTER_ADDR" not in os.environ:
        raise MiroError(f"world_size={world} needs torch.distributed: launch with `torchrun --nproc_per_node K miro "
                        "...` (or initialise a process group before calling).")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rk, world_size=world, timeout=dist_timeout())
    cpu = dist.new_group(backend="gloo", timeout=dist_timeout()) if backend == "nccl" else None
    log.info("joined process group: rank %d of %d (%s, timeout %s)", rk, world, backend, dist_timeout())
    return DistInfo(rank=rk, world_size=world, local_rank=local, initialized_here=True, backend=backend, cpu_group=cpu)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    out = value.detach().clone().to(info.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / info.world_size).to(value.device)


def all_reduce_sum(value: int, info: DistInfo) -> int:
    """The sum of an integer over the ranks."""
    if not info.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def agree(ok: bool, info: DistInfo) -> bool:
    """A barrier that also tells every rank whether every rank got there without an error."""
    if not info.enabled:
        return bool(ok)
    return all_reduce_sum(0 if ok else 1, info) == 0


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=info.cpu_group)
    return box[0]


def gather_objects(obj: Any, info: DistInfo, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` on rank ``dst`` (in rank order); None on the other ranks. Host memory only (gloo:
    the process group on CPU, the side group :attr:`DistInfo.cpu_group` with NCCL)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.rank == dst else None
    dist.gather_object(obj, out, dst=dst, group=info.cpu_group)
    return out


def scatter_objects(objs: list[Any] | None, info: DistInfo, src: int = 0) -> Any:
    """Rank ``r`` gets ``objs[r]`` of rank ``src`` (``objs`` is only read on ``src``)."""
    if not info.enabled:
        return objs[0] if objs else None
    box: list[Any] = [None]
    dist.scatter_object_list(box, objs if info.rank == src else None, src=src, group=info.cpu_group)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# Sharded tensors (FSDP2: ``torch.distributed.fsdp.fully_shard`` turns parameters into DTensors)
# ---------------------------------------------------------------------------------------------------
def device_mesh(info: DistInfo):
    """A 1-D :class:`~torch.distributed.device_mesh.DeviceMesh` over every rank, on the device type of the
    process group (CUDA with NCCL, CPU with gloo): what ``fully_shard`` shards over."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(info.device.type, (info.world_size,))


def is_sharded(value: Any) -> bool:
    """True for a DTensor (a parameter, gradient or optimizer state of an FSDP-sharded model)."""
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def gather_full(tree: Any, info: DistInfo, dst: int = 0) -> Any:
    """``tree`` (dicts / lists / tuples of tensors and plain values, e.g. a model, EMA or optimizer state dict) with
    every DTensor gathered into its full tensor, on the CPU of rank ``dst``; None on the other ranks.

    A COLLECTIVE: every rank must call it with trees of the same structure (the state dicts of one sharded
    model are). Each tensor is gathered, copied to rank ``dst``'s CPU and dropped elsewhere before the next one,
    so no rank holds more than one full tensor beyond its shards (rank ``dst`` ends with the full tree)."""
    keep = not info.enabled or info.rank == dst

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            full = obj.full_tensor() if is_sharded(obj) else obj
            return full.detach().to("cpu") if keep else None
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            out = [walk(v) for v in obj]
            return out if isinstance(obj, list) else tuple(out)
        return obj

    out = walk(tree)
    return out if keep else None


def shard_like(full: torch.Tensor, like: Any) -> Any:
    """``full`` (a whole tensor every rank holds, e.g. read from a checkpoint) as a DTensor sharded as ``like``
    (a sharded parameter) is; each rank keeps its own piece, nothing is communicated. ``like`` not sharded:
    ``full`` moved to ``like``'s device."""
    if not is_sharded(like):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise MiroError(f"cannot shard a tensor of shape {tuple(full.shape)} like a parameter of shape "
                        f"{tuple(like.shape)}")
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds for ``tensors`` (an iterable of tensors / DTensors): a DTensor counts its local
    shard only."""
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = t.to_local() if is_sharded(t) else t
        total += local.numel() * local.element_size()
    return total
