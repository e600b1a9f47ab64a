"""Which process this is under torchrun, and sums over all of them.

The low-level half of ``textloop.training.distributed``: plain queries of the process group and
reductions, with no dependency on the rest of textloop, so any layer (a task's evaluation summing
its counts across ranks, the CLI deciding who prints) can use them without importing training.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return _env_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    """Whether a process group is active (``init`` ran under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0: the one process that writes files (run dir, checkpoints, logs)."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a copy; the tensor itself in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    if dist.get_backend() == "nccl":
        out = out.cuda()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes."""
    return all_reduce_sum(tensor) / world_size()
