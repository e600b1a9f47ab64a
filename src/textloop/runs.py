"""A finished run directory, loaded for prediction and evaluation."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textloop.config import RunConfig, build_config, read_yaml
from textloop.data.examples import select_columns
from textloop.data.readers import read_table
from textloop.errors import CheckpointError, DataError, ModelError
from textloop.models.resolve import force_offline
from textloop.tasks.classification import ClassificationTask


@dataclass
class Run:
    """A trained model with its task, config and metrics.

    Example:
        >>> run = textloop.load_run("runs/reviews")
        >>> run.predict(["great value, arrived late"], top_k=3)
    """

    path: Path
    config: RunConfig
    task: ClassificationTask
    model: torch.nn.Module
    metrics: dict[str, Any]

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, top_k: int = 1
    ) -> list[dict[str, Any]]:
        """Predict labels for raw texts (and second texts for a pair model)."""
        if self.task.pair and pairs is None:
            raise DataError("this model classifies text pairs; pass a second text for each input")
        if not texts:
            return []
        data = self.task.encode(list(texts), list(pairs) if pairs is not None else None)
        logits = self.task.logits_for(self.model, data, self.config.train.eval_batch_size)
        return self.task.decode(logits, top_k=top_k)

    def evaluate(
        self,
        source: str,
        text_column: str | None = None,
        label_column: str | None = None,
        text_pair_column: str | None = None,
        drop_invalid_rows: bool = False,
    ) -> dict[str, Any]:
        """Metrics on any labelled file (columns default to those the run was trained with)."""
        d = self.config.data
        table = read_table(source)
        text = {"text": (text_column or d.text_column, "--text-column")}
        pair_col = text_pair_column or d.text_pair_column
        if pair_col:
            text["pair"] = (pair_col, "--text-pair-column")
        sel = select_columns(
            table,
            text,
            {"label": (label_column or d.label_column, "--label-column")},
            drop_invalid_rows,
        )
        data = self.task.encode_selected(sel, table.source)
        logits = self.task.logits_for(self.model, data, self.config.train.eval_batch_size)
        dtype = torch.float32 if self.task.multi_label else torch.long
        targets = torch.tensor(data.targets, dtype=dtype)
        metrics = self.task.metrics(logits, targets)
        metrics["loss"] = float(self.task.loss(logits, targets))
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
        d = self.config.data
        table = read_table(source)
        text = {"text": (text_column or d.text_column, "--text-column")}
        if d.text_pair_column:
            text["pair"] = (d.text_pair_column, "--text-pair-column")
        sel = select_columns(table, text, {}, drop_invalid_rows)
        preds = self.predict(sel.values["text"], sel.values.get("pair"), top_k=top_k)
        out = Path(output)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for loc, txt, pred in zip(sel.locations, sel.values["text"], preds):
                f.write(json.dumps({"source": loc, "text": txt, **pred}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(p / "model")
        model = AutoModelForSequenceClassification.from_pretrained(p / "model")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model in {p / 'model'}: {exc}") from None
    model.eval()
    task = ClassificationTask(
        tokenizer=tokenizer,
        labels=state["labels"],
        max_seq_len=state["max_seq_len"],
        multi_label=state["multi_label"],
        pair=state["pair"],
        label_separator=state.get("label_separator"),
    )
    metrics_path = p / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Run(path=p, config=cfg, task=task, model=model, metrics=metrics)


__all__ = ["Run", "load_run"]
