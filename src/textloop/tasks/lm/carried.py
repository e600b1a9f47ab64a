"""Weights a pre-training run carries beside the model: tensors of the checkpoint the model
class does not load (e.g. an MLM head on a bare encoder), saved back next to the model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

log = logging.getLogger(__name__)


def unloaded_tensors(
    model: torch.nn.Module, model_dir: Path, names: Any
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors ``names`` that the LM architecture left out, keyed as the
    adapted model will save them.

    BertForMaskedLM has no pooler, so an MLM run would otherwise save a checkpoint without the
    pooler weights, and a classifier fine-tuned from it would start from a random pooler where
    the unadapted checkpoint gives it a trained one: the comparison would not be like for like.
    Names of a base checkpoint (``pooler.dense.weight``) get the model's prefix (``bert.``).
    """
    from safetensors import safe_open

    names = sorted(names)
    if not names:
        return {}
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:  # a .bin checkpoint: say what the adapted model will lack
        log.warning(
            "%s is not in safetensors format: the adapted model will not keep %s "
            "(checkpoint tensors the %s model does not use)",
            model_dir,
            ", ".join(names),
            type(model).__name__,
        )
        return {}
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    saved = set(cast(Any, model).state_dict())
    has_prefix = bool(prefix) and any(k.startswith(prefix + ".") for k in saved)
    out: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in set(names) & set(f.keys()):
                key = (
                    f"{prefix}.{name}" if has_prefix and not name.startswith(prefix + ".") else name
                )
                if key not in saved:
                    out[key] = f.get_tensor(name)
    return out


def save_carried(model_dir: Path, carried: dict[str, torch.Tensor]) -> None:
    """Add ``carried`` tensors to a folder written by ``save_pretrained`` (single-file or
    sharded safetensors), so nothing the input checkpoint held is lost."""
    import json

    from safetensors.torch import load_file, save_file

    if not carried:
        return
    single = model_dir / "model.safetensors"
    if single.is_file():
        tensors = load_file(str(single))
        tensors.update({k: v.contiguous() for k, v in carried.items()})
        save_file(tensors, str(single), metadata={"format": "pt"})
        return
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    extra = "model-carried.safetensors"
    save_file(
        {k: v.contiguous() for k, v in carried.items()},
        str(model_dir / extra),
        metadata={"format": "pt"},
    )
    index["weight_map"].update(dict.fromkeys(carried, extra))
    index_path.write_text(json.dumps(index, indent=2))


def mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head of a masked-LM model built as encoder + head (BERT's ``bert`` + ``cls``,
    RoBERTa's ``roberta`` + ``lm_head``), looking through DDP/FSDP and peft wrappers; else None.

    ``_forward`` feeds this head only the masked positions (a forward pre-hook, so wrappers
    still see the whole forward and sync gradients): the vocabulary projection is about half of
    a small encoder's forward FLOPs, and only 15% of positions need it.
    """
    from transformers import PreTrainedModel

    inner: Any = model
    for _ in range(4):  # DDP/FSDP keep the model in .module; peft behind get_base_model()
        if isinstance(inner, PreTrainedModel) and not hasattr(inner, "get_base_model"):
            break
        inner = (
            inner.get_base_model()
            if hasattr(inner, "get_base_model")
            else getattr(inner, "module", None)
        )
    if not isinstance(inner, PreTrainedModel):
        return None
    children = dict(inner.named_children())
    encoder = children.pop(getattr(inner, "base_model_prefix", ""), None)
    output = inner.get_output_embeddings()
    if encoder is None or len(children) != 1 or output is None:
        return None
    (head,) = children.values()
    return head if any(m is output for m in head.modules()) else None


def first_position_id(model: torch.nn.Module) -> int:
    """The position id of a sequence's first token: ``padding_idx + 1`` for RoBERTa-style
    embeddings (RoBERTa, XLM-R, CamemBERT number real tokens from there; lower ids are padding),
    0 for BERT and decoders. Packed documents restart their positions at this id."""
    for module in model.modules():
        if hasattr(module, "create_position_ids_from_input_ids") and hasattr(module, "padding_idx"):
            return int(cast(int, module.padding_idx)) + 1
    return 0
