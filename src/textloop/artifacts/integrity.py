"""File integrity for registered models: sha256 of every file, a config hash, and the check
that a folder is a finished run with pickle-free weights."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import yaml

from textloop.errors import RegistryError

# weights formats that load without unpickling
SAFE_WEIGHTS = ("model.safetensors", "model.onnx")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# the files next to model/ that a registered version holds (checkpoints/ is never copied)
TOP_FILES = ("config.yaml", "labels.json", "metrics.json", "env.json", "report.md", "export.json")


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


def linked_files(root: Path) -> dict[str, str]:
    """What is wrong with each entry under ``root`` that is not a plain folder or regular file.

    Symbolic links (to files or folders, never followed), hard-linked files (another name
    elsewhere can change them), sockets, FIFOs and devices, keyed by relative POSIX path: a
    registered model must be made of its own regular files, so that its recorded hashes say
    what is loaded.
    """
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in dirs + files:
            path = here / name
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                found[rel] = f"is a symbolic link (to {os.readlink(path)})"
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                found[rel] = f"is hard-linked ({info.st_nlink} names)"
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                found[rel] = "is not a regular file"
    return found


def pickle_files(root: Path) -> list[str]:
    """Relative paths of pickle-format files at any depth under ``root``."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in PICKLE_SUFFIXES
    )


def config_hash(config_yaml: Path) -> str:
    """sha256 of the resolved config, canonicalised (key order and formatting do not matter)."""
    data = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def check_model_folder(src: Path) -> str:
    """Check that a folder is a loadable run or export with pickle-free weights; its format.

    Raises:
        RegistryError: not a finished run, no safetensors/ONNX weights, pickle files in it at
            any depth of ``model/``, or a symbolic or hard link among the files a registry
            copies (a link's target would be copied in and trusted, or could change later).
    """
    for name in ("config.yaml", "labels.json", "model"):
        if not (src / name).exists():
            raise RegistryError(
                f"{src} is not a finished run or export: {name} missing "
                "(register a folder written by `textloop train` or `textloop export`)"
            )
    model_dir = src / "model"
    odd = [
        f"{rel} {why}"
        for rel, why in sorted(linked_files(src).items())
        if rel in TOP_FILES or rel == "model" or rel.startswith("model/")  # what add copies
    ]
    if odd:
        raise RegistryError(
            f"{src}: {'; '.join(odd[:5])}; a registered or served model must be made "
            "of its own regular files — replace each link with a copy of the file it points to"
        )
    pickled = pickle_files(model_dir)
    if pickled:
        raise RegistryError(
            f"{model_dir} holds pickle files ({', '.join(pickled[:5])}); the registry only takes "
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
