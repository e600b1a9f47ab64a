"""Checkpoints that hold everything resume needs, written atomically.

A checkpoint directory holds ``model.safetensors`` (weights), ``optimizer.pt`` and
``scheduler.pt`` (tensors and numbers only, loaded with ``weights_only=True``), ``rng.pt``
and ``state.json`` (step, epoch, data position, best metric). It is written to a temporary
sibling directory and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from textloop.errors import CheckpointError
from textloop.training.loop import LoopState

_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


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
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a full checkpoint to ``directory`` atomically."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no model.safetensors")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match the model "
            f"(missing {len(missing)} tensors, unexpected {len(unexpected)})"
        )


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> LoopState:
    """Restore model, optimizer, scheduler and loop state (RNG included) from ``directory``."""
    missing = [f for f in _FILES if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")
    load_weights(directory, model)
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    saved = read_state(directory)
    fields = LoopState.__dataclass_fields__
    state = LoopState(**{k: v for k, v in saved.items() if k in fields and k != "rng"})
    state.rng = _rng_from_safe(torch.load(directory / "rng.pt", weights_only=True))
    return state
