"""Multi-process training with PyTorch's own engine: DDP or FSDP, launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m textloop train run.yaml

``torchrun`` sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` for each process; ``init`` joins
the process group (gloo on CPU, NCCL on GPU) and ``wrap_model`` wraps the model in
``DistributedDataParallel`` (``train.distributed: ddp``) or shards it with FSDP2's
``fully_shard`` (``fsdp``: parameters, gradients and optimizer state split over the processes,
one shard group per transformer layer plus the root). Without torchrun every function here is a
no-op for one process, so the training loop reads the same either way.

Under FSDP the model's parameters are ``DTensor`` shards; ``full_model_state`` /
``full_optimizer_state`` gather them into ordinary (unsharded, CPU) state dicts for checkpoints
and ``load_model_state`` / ``load_optimizer_state`` scatter such dicts back, so a checkpoint is
the same file whether one process, DDP or FSDP wrote it.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from textloop.collectives import (  # the process-group queries live below the layers
    _env_int,
    all_reduce_mean,
    all_reduce_sum,
    is_distributed,
    is_main_process,
    launched,
    rank,
    world_size,
)

__all__ = [
    "all_reduce_mean",
    "all_reduce_sum",
    "is_distributed",
    "is_main_process",
    "launched",
    "rank",
    "world_size",
]

log = logging.getLogger("textloop")
_T = TypeVar("_T")


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


def wrap_model(
    model: torch.nn.Module, device: torch.device, strategy: Literal["ddp", "fsdp"] = "ddp"
) -> torch.nn.Module:
    """The model to train under torchrun: DDP around ``model``, or ``model`` sharded by FSDP.

    Without a process group ``model`` itself is returned for either strategy.

    ddp: buffers are not broadcast on each forward (they do not change in training), so ranks
    may run different numbers of forward passes in evaluation, which uses the unwrapped model.

    fsdp: ``fully_shard`` is applied to each transformer layer, then to the root (embeddings,
    head and whatever else is left), in place: the returned module is ``model`` itself, with
    ``DTensor`` parameters. Build the optimizer after this call. Every forward all-gathers a
    layer's parameters, so all ranks must run the same forwards, in evaluation too.
    """
    if not is_distributed():
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size(),))
        for layer in transformer_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformer: the items of each ``ModuleList`` of one class.

    Found by shape rather than by name so BERT (``encoder.layer``), Llama (``model.layers``),
    GPT-2 (``h``) and their peft-wrapped forms all work.
    """
    layers: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            kinds = {type(m) for m in module}
            if len(kinds) == 1 and any(True for _ in module[0].parameters()):
                layers.extend(module)
    return layers


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by ``fully_shard`` (FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


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
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) unless ``enabled``.

    ``enabled`` is True on the last micro-batch of a step. Gradients of the skipped micro-batches
    accumulate locally and are reduced together with the last one's: one collective per
    optimizer step instead of one per micro-batch. Under FSDP the skipped ones accumulate
    unsharded (a full-size gradient per process until the step's last backward).
    """
    if is_fsdp(model):
        model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return
    no_sync = getattr(model, "no_sync", None)
    if enabled or no_sync is None:
        yield
        return
    with no_sync():
        yield


def _full(**options: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()``, unsharded: under FSDP gathered to rank 0's CPU (others get {}).

    Collective under FSDP: every rank must call it.
    """
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(model, options=_full(cpu_offload=True))
    return state


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True
) -> None:
    """Load an unsharded state dict (every rank passes the same one); FSDP keeps its shard."""
    if not is_fsdp(model):
        model.load_state_dict(state, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state), options=_full(strict=strict))


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    # torch numbers an optimizer's parameters in param-group order; FSDP2 keeps the names
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``optimizer.state_dict()`` in torch's own format (parameters numbered), unsharded.

    Under FSDP the moments are gathered to rank 0's CPU (others get {}); the names DCP keys
    them by are turned back into numbers, so a one-process run resumes from it and vice versa.
    Collective under FSDP.
    """
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named: dict[str, Any] = get_optimizer_state_dict(
        model, optimizer, options=_full(cpu_offload=True)
    )
    if not named:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {  # the groups' hyperparameters as torch keeps them (DCP turns tuples into lists)
        "state": {index[name]: value for name, value in named["state"].items()},
        "param_groups": optimizer.state_dict()["param_groups"],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a state from ``full_optimizer_state`` (or a one-process run) into ``optimizer``."""
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model, optimizer)
    named: dict[str, Any] = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, named, options=_full())
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})  # tuples stay tuples
