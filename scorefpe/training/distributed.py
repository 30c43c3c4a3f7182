"""Data-parallel helpers over torch.distributed (DDP), started with ``torchrun``.

``torchrun --nproc_per_node=N [--nnodes=M ...] $(which scorefpe) train mnist ...`` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init_from_env`` reads them and joins the
process group (NCCL on CUDA, gloo on CPU). Without them the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Position of this process: global rank, number of processes, rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (torch.distributed is in use)."""
        return self.world_size > 1


SINGLE = DistInfo()


def env_requests_distributed() -> bool:
    """True when launched by torchrun (WORLD_SIZE set) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment; single process without it.

    backend: "nccl" or "gloo"; default nccl when CUDA is available, else gloo.
    Raises:
        ValueError: an unknown backend.
    """
    if not env_requests_distributed():
        return SINGLE
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"unknown distributed backend {backend!r}; choose 'nccl' or 'gloo'")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    return info


def current() -> DistInfo:
    """DistInfo of an already-initialised process group (SINGLE when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over processes (a copy; ``x`` itself untouched). Identity for one process."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world_size


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Elementwise max of ``x`` over processes (a copy)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return y


def barrier(info: DistInfo) -> None:
    """Block until every process of the group reaches this call (no-op for a single process).

    Raises:
        RuntimeError: from torch.distributed, e.g. a peer died or the group timed out.
    """
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op for a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
