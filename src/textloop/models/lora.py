"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv:2106.09685) on any transformers model, via peft.

Plain arguments in, model out, so any task (generation, continued pre-training, classification)
can use them without a config object. Training updates only the adapter matrices (and whatever
``modules_to_save`` names, e.g. a fresh classification head); ``merge_lora`` folds the adapters
back into the base weights so the saved model is an ordinary checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textloop.errors import ConfigError, ModelError

# projection names of the common decoder/encoder families; "auto" picks those the model has
_AUTO_TARGETS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, SmolLM
    ("query", "key", "value"),  # BERT, RoBERTa, MiniLM
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("c_attn",),  # GPT-2
)


def lora_targets(model: torch.nn.Module, targets: Sequence[str] | str = "auto") -> list[str]:
    """The module names LoRA wraps: ``targets`` checked against the model, or the attention
    projections of a known family for ``"auto"``.

    Raises:
        ConfigError: a named target matches no linear layer of the model (the names it has are
            listed), or ``auto`` finds no known projection.
    """
    linear = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
    }
    if targets == "auto" or list(targets) == ["auto"]:
        for family in _AUTO_TARGETS:
            if set(family) <= linear:
                return list(family)
        raise ConfigError(
            f"lora.targets=auto: no known attention projections in {type(model).__name__}; "
            f"set lora.targets to some of its linear layers: {', '.join(sorted(linear))}"
        )
    names = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in names if t not in linear]
    if unknown:
        raise ConfigError(
            f"lora.targets: {', '.join(unknown)} not found in {type(model).__name__}; "
            f"its linear layers are: {', '.join(sorted(linear))}"
        )
    return names


def apply_lora(
    model: torch.nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    targets: Sequence[str] | str = "auto",
    modules_to_save: Sequence[str] = (),
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters; only adapters (and ``modules_to_save``) stay trainable.

    Args:
        model: a transformers model.
        r: adapter rank.
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter input.
        targets: module-name suffixes to adapt (e.g. ``["q_proj", "v_proj"]``) or ``"auto"``.
        modules_to_save: modules trained in full next to the adapters (a fresh task head).

    Returns:
        A ``peft.PeftModel``; call it like the original model.

    Raises:
        ConfigError: bad targets (see ``lora_targets``).
        ModelError: peft is not installed.

    Example:
        >>> model = apply_lora(AutoModelForCausalLM.from_pretrained(path), r=8, alpha=16)
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("LoRA needs the 'peft' package: pip install 'peft>=0.13'") from None
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(model, targets),
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )
    with warnings.catch_warnings():  # peft reads a property transformers has deprecated
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)  # type: ignore[arg-type]


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merge_lora(model: torch.nn.Module, in_place: bool = False) -> torch.nn.Module:
    """Fold the adapters into the base weights and return the plain base model.

    Args:
        model: a model from ``apply_lora`` (any other model is returned as is).
        in_place: merge into ``model`` itself (no copy; the adapters are gone afterwards).
            By default a copy is merged, so training can go on with the adapters.
    """
    if not is_lora(model):
        return model
    if not in_place:
        import copy

        model = copy.deepcopy(model)
    return model.merge_and_unload()  # type: ignore[operator]


def save_adapter(model: torch.nn.Module, folder: Path) -> None:
    """Write the adapter weights and their config alone (a few MB) with peft's format."""
    if not is_lora(model):
        raise ModelError("save_adapter: the model has no LoRA adapters")
    model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]


_SPEC_KEYS = {"r": int, "alpha": int, "dropout": float, "targets": str}


def parse_lora_spec(spec: str) -> dict[str, Any]:
    """Read a command-line LoRA spec into ``lora.*`` config values.

    ``on`` / ``off`` switch adapters on or off; otherwise comma-separated ``key=value`` pairs
    (keys r, alpha, dropout, targets) switch them on, and names after ``targets=`` that carry no
    ``=`` are more targets: ``r=8,alpha=16,targets=q_proj,v_proj`` (or ``targets=q_proj+v_proj``).

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    text = spec.strip()
    if text.lower() in ("off", "none", "false", "0"):
        return {"enabled": False}
    if text.lower() in ("on", "true", "1"):
        return {"enabled": True}
    out: dict[str, Any] = {"enabled": True}
    key = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in _SPEC_KEYS:
                raise ConfigError(
                    f"--lora {spec!r}: unknown key {key!r}; keys: {', '.join(_SPEC_KEYS)}"
                )
        elif key == "targets":
            value = part
        else:
            raise ConfigError(f"--lora {spec!r}: expected KEY=VALUE, found {part!r}")
        if key == "targets":
            out.setdefault("targets", []).extend(t for t in value.split("+") if t)
            continue
        try:
            out[key] = _SPEC_KEYS[key](value)
        except ValueError:
            raise ConfigError(
                f"--lora {spec!r}: {key} must be {_SPEC_KEYS[key].__name__}, got {value!r}"
            ) from None
    return out
