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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from textloop.errors import CheckpointError
from textloop.training import distributed as dist
from textloop.training.loop import LoopState

_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
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


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing what was there with one rename at the end."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


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
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous() for k, v in snap.weights.items()},
        str(tmp / "model.safetensors"),
        metadata={_CONTENT_KEY: "trainable" if snap.trainable_only else "full"},
    )
    torch.save(snap.optimizer, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_to_safe(state.rng), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state.to_json(), **(extra or {})}, indent=2))
    replace_dir(tmp, directory)


def copy_weights(src: Path, dst: Path) -> None:
    """Copy a checkpoint's weights and state (not the optimizer) to ``dst``, atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "state.json"):
        shutil.copy2(src / name, tmp / name)
    replace_dir(tmp, dst)


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory} (state.json missing)")
    return dict(json.loads(path.read_text()))


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
    with safe_open(str(path), "pt") as f:
        trainable_only = (f.metadata() or {}).get(_CONTENT_KEY) == "trainable"
    tensors = load_file(path)
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
    load_weights(directory, model)
    dist.load_optimizer_state(
        model, optimizer, torch.load(directory / "optimizer.pt", weights_only=True)
    )
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    saved = read_state(directory)
    fields = LoopState.__dataclass_fields__
    state = LoopState(**{k: v for k, v in saved.items() if k in fields and k != "rng"})
    state.rng = _rng_from_safe(torch.load(directory / "rng.pt", weights_only=True))
    return state
