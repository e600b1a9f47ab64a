"""LoRA checkpoints hold only what trains, and resume from them is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from textloop.config import load_config
from textloop.errors import CheckpointError
from textloop.training.checkpoint import load_weights
from textloop.training.run import TrainingInterrupted, train


def _lora_config(model: Path, data: dict[str, Path], out: Path) -> Any:
    return load_config(
        None,
        extra={
            "model": str(model),
            "output": str(out),
            "data.train": str(data["train"]),
            "data.validation": str(data["validation"]),
            "train.max_steps": 6,
            "train.eval_every_steps": 3,
            "train.grad_accum_steps": 2,
            "train.lr": 3e-3,
            "train.batch_size": 16,
            "train.max_seq_len": 32,
            "train.threads": 1,
            "train.precision": "fp32",  # the numerics these tests compare (auto is bf16 on AMX)
            "lora.enabled": True,  # query/key/value adapters + the fresh head in full
            "lora.r": 4,
        },
    )


class _InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, info: Any) -> None:
        if info.step == self.step:
            raise KeyboardInterrupt


def test_lora_checkpoint_holds_only_trainable_weights_and_resumes_exactly(
    tiny_bert: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    full = tmp_path / "full"
    train(_lora_config(tiny_bert, toy_data, full))
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        train(_lora_config(tiny_bert, toy_data, cut), callbacks=[_InterruptAt(4)])
    last = cut / "checkpoints/last"
    saved = load_file(last / "model.safetensors")
    with safe_open(str(last / "model.safetensors"), "pt") as f:
        assert (f.metadata() or {})["textloop.weights"] == "trainable"
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved), sorted(saved)
    # the adapters (and the head) alone: a small fraction of the full model file
    model_bytes = (full / "model/model.safetensors").stat().st_size
    assert (last / "model.safetensors").stat().st_size < 0.25 * model_bytes
    assert (full / "checkpoints/best/model.safetensors").stat().st_size < 0.25 * model_bytes

    train(_lora_config(tiny_bert, toy_data, cut), resume=True)
    a = load_file(full / "model/model.safetensors")
    b = load_file(cut / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert not any("lora_" in k for k in b)  # model/ holds the merged weights
    assert (cut / "adapter/adapter_model.safetensors").is_file()
    assert (cut / "adapter/adapter_config.json").is_file()


def test_trainable_checkpoint_of_another_lora_setup_is_refused(
    tiny_bert: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from textloop.models.lora import apply_lora

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(_lora_config(tiny_bert, toy_data, out), callbacks=[_InterruptAt(1)])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    other = apply_lora(base, r=4, targets=["query"], modules_to_save=["classifier"])
    with pytest.raises(CheckpointError, match=r"trainable \(LoRA\) weights .* unexpected"):
        load_weights(out / "checkpoints/last", other)
