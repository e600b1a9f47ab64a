"""Multi-process training with PyTorch's own engine: DDP launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m textloop train run.yaml

``torchrun`` sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` for each process; ``init`` joins
the process group (gloo on CPU, NCCL on GPU) and ``wrap_model`` wraps the model in
``DistributedDataParallel``. Without torchrun every function here is a no-op for one process,
so the training loop reads the same either way.

Data: every rank walks the same global micro-batches and computes its share of each
(``rank_share``: items ``rank, rank + W, ...``). The union of the shares is the single-process
micro-batch, so ``train.batch_size`` means the same at any world size, the data position
(``LoopState``) is counted in global micro-batches, and a checkpoint resumes under a different
number of processes. Each share's loss is weighted by its size so that DDP's gradient average
equals the gradient of the global micro-batch mean, also when the shares are uneven.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger("textloop")
_T = TypeVar("_T")


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


def init() -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this process's device.

    gloo on CPU, NCCL on GPU (one GPU per process, ``cuda:LOCAL_RANK``). Idempotent.
    """
    cuda = torch.cuda.is_available()
    local_rank = _env_int("LOCAL_RANK", 0)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if launched() and not is_distributed():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(_shutdown)
        log.info("process %d of %d on %s", rank(), world_size(), device)
    return device


def _shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` under torchrun; ``model`` itself otherwise.

    Buffers are not broadcast on each forward (they do not change in training), so ranks may
    run different numbers of forward passes in evaluation, which uses the unwrapped model.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def rank_share(batch: Sequence[_T]) -> tuple[Sequence[_T], float]:
    """This process's part of a global micro-batch, and the weight of its mean loss.

    The weight ``len(share) * world / len(batch)`` makes DDP's gradient average equal the
    gradient of the mean over the whole batch. A rank whose share would be empty (a last batch
    smaller than the world) computes on one item with weight 0, so every rank still joins the
    gradient all-reduce.
    """
    world = world_size()
    if world == 1:
        return batch, 1.0
    share = batch[rank() :: world]
    if not share:
        return batch[:1], 0.0
    return share, len(share) * world / len(batch)


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce unless ``enabled`` (the last micro-batch of a step).

    Gradients of the skipped micro-batches accumulate locally and are reduced together with
    the last one's: one all-reduce per optimizer step instead of one per micro-batch.
    """
    no_sync = getattr(model, "no_sync", None)
    if enabled or no_sync is None:
        yield
        return
    with no_sync():
        yield


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


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
