"""The one writer of a run folder: its start, its log's truncation on resume, its artifacts.

``training.run.train`` and an update's candidate (``continual.retrain.write_run_dir``) both write
through here, so every run folder has the same layout (see README "Run directory"), which
``runs.load_run`` and the registry read.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.rundir import INCOMPLETE
from textloop.evaluation.report import write_report
from textloop.fileio import atomic_dir, write_text_atomic
from textloop.tasks.base import Task
from textloop.training.precision import PrecisionChoice, read_cpu_info

_VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "scikit-learn",
    "numpy",
    "textloop",
)


def environment(seed: int, precision: PrecisionChoice | str, threads: int) -> dict[str, Any]:
    """Package versions, seed, precision (and why) and hardware, as written to env.json."""
    if isinstance(precision, str):
        precision = PrecisionChoice(precision, "requested", None)
    cpu = read_cpu_info()
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "seed": seed,
        **precision.as_dict(),
        "threads": threads,
        "cpu": cpu.model if cpu.model != "unknown" else platform.processor() or platform.machine(),
        "cpu_flags": list(cpu.flags),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def start_run_dir(out: Path, config_yaml: str, replace: bool) -> None:
    """A fresh run folder holding its resolved config and the ``.incomplete`` marker.

    ``replace`` removes what ``out`` holds first; the caller has checked that it is a run
    (``artifacts.rundir.check_replaceable``).
    """
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("training in progress; resume with --resume\n")
    write_text_atomic(out / "config.yaml", config_yaml)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be replayed)."""
    if not path.is_file():
        return
    kept = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    write_text_atomic(path, "".join(ln + "\n" for ln in kept))


def write_run_artifacts(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    metrics: dict[str, Any],
    seed: int,
    precision: PrecisionChoice,
    threads: int,
) -> None:
    from textloop.models.lora import is_lora, merge_lora, save_adapter

    if is_lora(model):  # adapter/ alone (small, peft format); model/ holds the merged weights
        with atomic_dir(out / "adapter") as tmp:
            save_adapter(model, tmp)
        model = merge_lora(model)
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(emb, torch.nn.Embedding):
        emb.sparse = False  # a training-time choice; the saved model is a plain checkpoint
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        task.save_extras(tmp)  # e.g. checkpoint tensors the LM head model dropped
        tokenizer.save_pretrained(tmp)
    write_text_atomic(out / "labels.json", json.dumps(task.state(), indent=2, ensure_ascii=False))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    write_text_atomic(out / "env.json", json.dumps(environment(seed, precision, threads), indent=2))
    write_report(out, metrics, list(task.state().get("labels", [])))
    section = task.report_section(metrics)  # a task's own part of the report
    if section:
        report = out / "report.md"
        write_text_atomic(report, report.read_text(encoding="utf-8") + "\n" + section)
