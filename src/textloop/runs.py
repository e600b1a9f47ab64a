"""A finished run directory, loaded for prediction and evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.registry import ModelVersion, Registry
from textloop.config import RunConfig, build_config, read_yaml
from textloop.errors import CheckpointError, ModelError
from textloop.fileio import atomic_file, check_output_path
from textloop.models.resolve import force_offline
from textloop.tasks import task_module
from textloop.tasks.base import Task


@dataclass
class Run:
    """A trained model with its task, config and metrics.

    Example:
        >>> run = textloop.load_run("runs/reviews")
        >>> run.predict(["great value, arrived late"], top_k=3)
    """

    path: Path
    config: RunConfig
    task: Task
    model: torch.nn.Module
    metrics: dict[str, Any]

    def predict(self, *inputs: Any, **options: Any) -> list[dict[str, Any]]:
        """Task-appropriate predictions for raw inputs.

        Classification: ``predict(texts, pairs=None, top_k=1)`` -> label + score per text.
        """
        options.setdefault("batch_size", self.config.train.eval_batch_size)
        return self.task.predict(self.model, *inputs, **options)

    def evaluate(
        self, source: str, drop_invalid_rows: bool = False, **columns: str | None
    ) -> dict[str, Any]:
        """Metrics on any labelled file; ``columns`` (e.g. ``text_column="review"``) override the
        column names the run was trained with."""
        cols = self.config.data.model_dump()
        cols.update({k: v for k, v in columns.items() if v is not None})
        data = self.task.encode_source(source, cols, drop_invalid_rows)
        metrics = self.task.evaluate(self.model, data, self.config.train.eval_batch_size)
        metrics["truncated"] = data.n_truncated
        return metrics

    def predict_file(
        self,
        source: str,
        output: str | Path,
        text_column: str | None = None,
        top_k: int = 1,
        drop_invalid_rows: bool = False,
    ) -> int:
        """Predict every row of a file and write JSONL (atomically). Returns the row count."""
        from textloop.data.examples import select_columns
        from textloop.data.readers import read_table

        out = check_output_path(output)  # before the work: a bad --output fails at once
        d = self.config.data
        table = read_table(source)
        text = {"text": (text_column or d.text_column, "--text-column")}
        if d.text_pair_column:
            text["pair"] = (d.text_pair_column, "--text-pair-column")
        sel = select_columns(table, text, {}, drop_invalid_rows)
        preds = self.predict(sel.values["text"], sel.values.get("pair"), top_k=top_k)
        with atomic_file(out) as f:
            for loc, txt, pred in zip(sel.locations, sel.values["text"], preds):
                f.write(json.dumps({"source": loc, "text": txt, **pred}, ensure_ascii=False) + "\n")
        return len(preds)


def load_run(path: str | Path) -> Run:
    """Load a finished run directory written by ``textloop.train``.

    Raises:
        CheckpointError: not a run directory, or an unfinished run.
        ModelError: the model files cannot be loaded.
    """
    force_offline()
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"run directory not found: {p}")
    for name in ("config.yaml", "labels.json", "model"):
        if not (p / name).exists():
            hint = (
                " (an unfinished run: resume it with `textloop train ... --resume`)"
                if (p / ".incomplete").exists()
                else ""
            )
            raise CheckpointError(f"{p} is not a finished textloop run: {name} missing{hint}")
    cfg = build_config(read_yaml(p / "config.yaml"), source=str(p / "config.yaml"))
    state = json.loads((p / "labels.json").read_text(encoding="utf-8"))
    from transformers import AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    module = task_module(state.get("task", cfg.task))
    try:
        tokenizer = AutoTokenizer.from_pretrained(p / "model")
        task = module.task_from_state(state, tokenizer)
        # an exported folder (textloop export --format onnx) runs on onnxruntime instead
        from textloop.models.onnx_backend import has_onnx_model, load_onnx_model

        onnx = has_onnx_model(p / "model")
        model = load_onnx_model(p / "model") if onnx else task.load_model(p / "model")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model in {p / 'model'}: {exc}") from None
    model.eval()
    metrics_path = p / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Run(path=p, config=cfg, task=task, model=model, metrics=metrics)


__all__ = ["Run", "load_run"]


def load_registered(
    registry: Registry, name: str, version: int | None = None
) -> tuple[ModelVersion, Run]:
    """Verify a registered version (default: production) and load it as a ``Run``.

    Raises:
        RegistryError: unknown name/version, no production version, or a failed hash check.
    """
    mv = registry.resolve(name, version)
    return mv, load_run(mv.path)
