"""File integrity for registered models: sha256 of every file, a config hash, and the check
that a folder is a finished run with pickle-free weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from textloop.errors import RegistryError

# weights formats that load without unpickling
SAFE_WEIGHTS = ("model.safetensors", "model.onnx")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its relative POSIX path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def config_hash(config_yaml: Path) -> str:
    """sha256 of the resolved config, canonicalised (key order and formatting do not matter)."""
    data = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def check_model_folder(src: Path) -> str:
    """Check that a folder is a loadable run or export with pickle-free weights; its format.

    Raises:
        RegistryError: not a finished run, no safetensors/ONNX weights, or pickle files in it.
    """
    for name in ("config.yaml", "labels.json", "model"):
        if not (src / name).exists():
            raise RegistryError(
                f"{src} is not a finished run or export: {name} missing "
                "(register a folder written by `textloop train` or `textloop export`)"
            )
    model_dir = src / "model"
    pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise RegistryError(
            f"{model_dir} holds pickle files ({', '.join(pickled)}); the registry only takes "
            "safetensors or ONNX weights — re-save with save_pretrained(safe_serialization=True)"
        )
    weights = [w for w in SAFE_WEIGHTS if (model_dir / w).is_file()]
    if not weights:
        raise RegistryError(
            f"{model_dir} has no {' or '.join(SAFE_WEIGHTS)}; export the run first "
            "(`textloop export RUN --output DIR`)"
        )
    if "model.onnx" not in weights:
        return "safetensors"
    export = src / "export.json"
    quant = json.loads(export.read_text()).get("quantize") if export.is_file() else None
    return f"onnx-{quant}" if quant else "onnx"
