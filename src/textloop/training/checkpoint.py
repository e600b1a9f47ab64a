"""Checkpoints that hold everything resume needs, written atomically.

A checkpoint directory holds ``model.safetensors`` (weights), ``optimizer.pt`` and
``scheduler.pt`` (tensors and numbers only, loaded with ``weights_only=True``), ``rng.pt``
and ``state.json`` (step, epoch, data position, best metric). It is written to a temporary
sibling directory and renamed into place, so a crash never leaves a half-written checkpoint.

A LoRA model's checkpoint holds only what trains (``requires_grad``: adapters and fresh
heads), marked ``textloop.weights: trainable`` in the safetensors metadata: the frozen base is
the model the run started from, so storing it in every checkpoint (~540 MB for a 135M
decoder) buys nothing. Other models are saved in full, tied weights once.

Under FSDP ``snapshot`` gathers the shards (every rank calls it) and rank 0 writes the same
unsharded files a single process writes; ``load_checkpoint`` scatters them back.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from textloop.errors import CheckpointError
from textloop.fileio import atomic_dir
from textloop.training import distributed as dist
from textloop.training.loop import LoopState

_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
_T = TypeVar("_T")
_CONTENT_KEY = "textloop.weights"  # safetensors metadata: "full" or "trainable"


@dataclass
class Snapshot:
    """What a checkpoint writes of the model and optimizer, unsharded."""

    weights: dict[str, torch.Tensor]
    trainable_only: bool
    optimizer: dict[str, Any]


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter (an LM head tied to the embeddings), sorted, per group."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [sorted(group) for group in names.values() if len(group) > 1]


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
    """The weights and optimizer state a checkpoint of ``model`` holds.

    Every rank must call it under FSDP (it gathers the shards; ranks other than 0 get empty
    dicts). A LoRA model gives its trainable parameters only; others give the full state dict
    with each tied parameter once.
    """
    from textloop.models.lora import is_lora

    full = dist.full_model_state(model)
    trainable_only = is_lora(model)
    if trainable_only:
        keep = _trainable_names(model)
        weights = {k: v for k, v in full.items() if k in keep}
    else:
        aliases = {name for group in _tied_groups(model) for name in group[1:]}
        weights = {k: v for k, v in full.items() if k not in aliases}
    return Snapshot(weights, trainable_only, dist.full_optimizer_state(model, optimizer))


def _rng_to_safe(rng: dict[str, Any]) -> dict[str, Any]:
    # numpy's state holds an ndarray; weights_only loading accepts tensors, lists and numbers
    out = dict(rng)
    if "numpy" in out:
        kind, keys, pos, has_gauss, gauss = out["numpy"]
        out["numpy"] = [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss]
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = [version, list(internal), gauss]
    return out


def _rng_from_safe(rng: dict[str, Any]) -> dict[str, Any]:
    out = dict(rng)
    if "numpy" in out:
        kind, keys, pos, has_gauss, gauss = out["numpy"]
        out["numpy"] = (kind, keys.numpy(), pos, has_gauss, gauss)
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = (version, tuple(internal), gauss)
    return out


def save_checkpoint(
    directory: Path,
    snap: Snapshot,
    scheduler: Any,
    state: LoopState,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint (weights and optimizer from ``snapshot``) to ``directory`` atomically."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(directory) as tmp:
        save_file(
            {k: v.detach().contiguous() for k, v in snap.weights.items()},
            str(tmp / "model.safetensors"),
            metadata={_CONTENT_KEY: "trainable" if snap.trainable_only else "full"},
        )
        torch.save(snap.optimizer, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_to_safe(state.rng), tmp / "rng.pt")
        state_json = json.dumps({**state.to_json(), **(extra or {})}, indent=2)
        (tmp / "state.json").write_text(state_json)


def copy_weights(src: Path, dst: Path) -> None:
    """Copy a checkpoint's weights and state (not the optimizer) to ``dst``, atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dst) as tmp:
        for name in ("model.safetensors", "state.json"):
            shutil.copy2(src / name, tmp / name)


# what reading a truncated or corrupted file raises: safetensors' SafetensorError, torch.load's
# RuntimeError / EOFError / UnpicklingError, json's ValueError, a state that does not fit
_UNREADABLE = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    SafetensorError,
)


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return CheckpointError(
        f"checkpoint file {path} is truncated or damaged ({reason}); it cannot be resumed "
        f"from — start the run over (without --resume, with --overwrite), or delete "
        f"{path.parent} and resume from an earlier copy if you have one"
    )


def _read_file(path: Path, read: Callable[[Path], _T]) -> _T:
    """``read(path)``, with a damaged file reported as a ``CheckpointError`` naming it."""
    try:
        return read(path)
    except _UNREADABLE as exc:
        raise _damaged(path, exc) from None


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory} (state.json missing)")
    state = _read_file(path, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(state, dict):
        raise _damaged(path, ValueError("not a JSON object"))
    return state


def _examples(names: set[str]) -> str:
    shown = sorted(names)[:3]
    return ", ".join(shown) + (", ..." if len(names) > 3 else "")


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    """Load a checkpoint's weights into ``model`` (every rank under FSDP).

    Raises:
        CheckpointError: no weights file, or its tensors do not match the model (a trainable-only
            LoRA checkpoint must name only tensors the model has and every trainable one).
    """
    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no model.safetensors")

    def read(p: Path) -> tuple[bool, dict[str, torch.Tensor]]:
        with safe_open(str(p), "pt") as f:
            trainable_only = (f.metadata() or {}).get(_CONTENT_KEY) == "trainable"
        return trainable_only, load_file(p)

    trainable_only, tensors = _read_file(path, read)
    for group in _tied_groups(model):  # a tied parameter is stored under one of its names
        present = [name for name in group if name in tensors]
        for name in group:
            if present and name not in tensors:
                tensors[name] = tensors[present[0]]
    expected = set(model.state_dict())
    unexpected = set(tensors) - expected
    if trainable_only:
        missing = _trainable_names(model) - set(tensors)
        what = "the trainable (LoRA) weights of a different model"
        fix = "resume with the model and lora settings the checkpoint was written with"
    else:
        missing = expected - set(tensors)
        what = "weights that do not match the model"
        fix = "use the model (and lora settings) the checkpoint was written with"
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} holds {what}: {len(missing)} tensors missing"
            + (f" ({_examples(missing)})" if missing else "")
            + f", {len(unexpected)} unexpected"
            + (f" ({_examples(unexpected)})" if unexpected else "")
            + f"; {fix}"
        )
    dist.load_model_state(model, tensors, strict=not trainable_only)


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> LoopState:
    """Restore model, optimizer, scheduler and loop state (RNG included) from ``directory``."""
    missing = [f for f in _FILES if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")
    # every file is read (and checked) before anything is restored from it
    saved = read_state(directory)
    optimizer_state = _read_file(directory / "optimizer.pt", _torch_load)
    scheduler_state = _read_file(directory / "scheduler.pt", _torch_load)
    rng = _read_file(directory / "rng.pt", lambda p: _rng_from_safe(_torch_load(p)))
    load_weights(directory, model)
    try:
        dist.load_optimizer_state(model, optimizer, optimizer_state)
    except _UNREADABLE as exc:
        raise _damaged(directory / "optimizer.pt", exc) from None
    try:
        scheduler.load_state_dict(scheduler_state)
    except _UNREADABLE as exc:
        raise _damaged(directory / "scheduler.pt", exc) from None
    fields = LoopState.__dataclass_fields__
    try:
        state = LoopState(**{k: v for k, v in saved.items() if k in fields and k != "rng"})
    except TypeError as exc:
        raise _damaged(directory / "state.json", exc) from None
    state.rng = rng
    return state
