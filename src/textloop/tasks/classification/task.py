"""Text classification: single-label (binary, multi-class), multi-label, and sentence pairs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from textloop.data.examples import Selected, select_columns
from textloop.data.readers import read_table
from textloop.errors import DataError
from textloop.tasks.base import Encoded, Task, eval_batches, pad_inputs
from textloop.tasks.classification.clip import clip_long_texts
from textloop.tasks.classification.pooled import MeanPooledClassifier
from textloop.tasks.classification.temperature import calibration_summary, fit_temperature

MULTI_LABEL_THRESHOLD = 0.5
METRIC_NAMES = ("macro_f1", "accuracy", "micro_f1", "weighted_f1")  # the first is the default
LOWER_IS_BETTER: tuple[str, ...] = ()
LORA_DEFAULT = False  # encoders train in full unless lora.enabled is true


def parse_labels(raw: Sequence[Any], multi_label: bool, separator: str | None) -> list[Any]:
    """Normalise raw label cells to strings (single-label) or sorted string lists (multi-label)."""

    def one(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()

    if not multi_label:
        return [one(v) for v in raw]
    out = []
    for value in raw:
        if isinstance(value, (list, tuple)):
            items = [one(v) for v in value]
        elif separator:
            items = [s.strip() for s in str(value).split(separator)]
        else:
            items = [one(value)]
        out.append(sorted({s for s in items if s}))
    return out


def label_set(labels: Sequence[Any], multi_label: bool, source: str) -> list[str]:
    """The sorted label vocabulary of the training data; at least two classes are required."""
    counts = Counter(x for ls in labels for x in ls) if multi_label else Counter(labels)
    if len(counts) < 2:
        only = next(iter(counts), "<none>")
        raise DataError(
            f"{source}: training data has a single class {only!r}; classification needs at "
            "least two (check data.label_column)"
        )
    return sorted(
        counts,
        key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s),
    )


@dataclass
class ClassificationTask(Task):
    """Classification over a fixed label set, with a linear head on the [CLS] representation."""

    can_scale_temperature: ClassVar[bool] = True
    tokenizer: Any
    labels: list[str]
    max_seq_len: int
    multi_label: bool = False
    pair: bool = False
    class_weights: list[float] | None = None
    label_separator: str | None = None
    temperature: float = 1.0  # logits are divided by it before softmax/sigmoid (calibration)
    # what the head reads: "cls", the model's own (a BERT's pooler output); "mean", the mean of
    # the token vectors (pooled.py), which the few-shot recipe fine-tunes and classifies
    pooling: Literal["cls", "mean"] = "cls"
    name: str = "classification"

    metric_names: tuple[str, ...] = METRIC_NAMES
    head_prefixes: tuple[str, ...] = ("classifier", "score", "pre_classifier")

    # ---- preprocessing -------------------------------------------------------------------
    def targets_for(
        self, labels: Sequence[Any], source: str, locations: Sequence[str]
    ) -> list[Any]:
        """Map label strings to ids (or multi-hot rows); unknown labels are an error naming them."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        flat = [x for ls in labels for x in ls] if self.multi_label else list(labels)
        unknown = sorted({x for x in flat if x not in index})
        if unknown:
            first = next(
                loc
                for lab, loc in zip(labels, locations)
                if (set(lab) if self.multi_label else {lab}) & set(unknown)
            )
            raise DataError(
                f"{source}: label(s) not in the training data: {', '.join(map(repr, unknown[:10]))}"
                f" (first at {first}); training labels are: {', '.join(self.labels)}"
            )
        if not self.multi_label:
            return [index[x] for x in labels]
        rows = []
        for ls in labels:
            row = [0.0] * len(self.labels)
            for x in ls:
                row[index[x]] = 1.0
            rows.append(row)
        return rows

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None) -> Encoded:
        """Tokenize with truncation to ``max_seq_len``, counting truncated examples."""
        texts, _ = clip_long_texts(self.tokenizer, texts, self.max_seq_len)
        if pairs is not None:
            pairs, _ = clip_long_texts(self.tokenizer, pairs, self.max_seq_len, "text pair")
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=self.max_seq_len,
            return_attention_mask=False,
            return_token_type_ids=pairs is not None,
        )
        n_truncated = sum(1 for e in enc.encodings if e.overflowing)
        types = enc["token_type_ids"] if pairs is not None else None
        return Encoded(
            input_ids=enc["input_ids"], targets=[], token_type_ids=types, n_truncated=n_truncated
        )

    def encode_selected(self, sel: Selected, source: str) -> Encoded:
        """Encode rows chosen by ``select_columns`` (roles: text, pair?, label?)."""
        enc = self.encode(sel.values["text"], sel.values.get("pair"))
        if "label" in sel.values:
            labels = parse_labels(sel.values["label"], self.multi_label, self.label_separator)
            enc.targets = self.targets_for(labels, source, sel.locations)
        enc.locations = sel.locations
        return enc

    # ---- model ---------------------------------------------------------------------------
    def build_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        if self.pooling == "mean":
            return MeanPooledClassifier.from_body(model_dir, self.labels)
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={lab: i for i, lab in enumerate(self.labels)},
            problem_type=(
                "multi_label_classification" if self.multi_label else "single_label_classification"
            ),
        )

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        if self.pooling == "mean":
            return MeanPooledClassifier.load(model_dir)
        return AutoModelForSequenceClassification.from_pretrained(model_dir)

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = pad_inputs(data, indices, self.tokenizer.pad_token_id or 0)
        if data.targets:
            dtype = torch.float32 if self.multi_label else torch.long
            batch["targets"] = torch.tensor([data.targets[i] for i in indices], dtype=dtype)
        return batch

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = (
            torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device)
            if self.class_weights
            else None
        )
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        return F.cross_entropy(logits, targets, weight=weight)

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("targets")
        logits = model(**batch).logits  # (B, C)
        return self.loss(logits.float(), targets)

    # ---- metrics -------------------------------------------------------------------------
    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        logits = self.logits_for(model, data, batch_size, progress)
        targets = torch.tensor(
            data.targets, dtype=torch.float32 if self.multi_label else torch.long
        )
        metrics = self.metrics(logits, targets)
        metrics["loss"] = float(self.loss(logits, targets))
        return metrics

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        from sklearn.metrics import (
            accuracy_score,
            confusion_matrix,
            f1_score,
            precision_recall_fscore_support,
        )

        y_true = targets.numpy()
        if self.multi_label:
            y_pred = (torch.sigmoid(logits).numpy() >= MULTI_LABEL_THRESHOLD).astype(int)
            y_true = y_true.astype(int)
        else:
            y_pred = logits.argmax(-1).numpy()
        label_ids = list(range(len(self.labels)))
        p, r, f, s = precision_recall_fscore_support(
            y_true, y_pred, labels=None if self.multi_label else label_ids, zero_division=0
        )
        out: dict[str, Any] = {
            "n": len(y_true),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "per_class": {
                lab: {
                    "precision": float(p[i]),
                    "recall": float(r[i]),
                    "f1": float(f[i]),
                    "support": int(s[i]),
                }
                for i, lab in enumerate(self.labels)
            },
        }
        if self.multi_label:
            out["subset_accuracy"] = float(accuracy_score(y_true, y_pred))
            out["accuracy"] = out["subset_accuracy"]
        else:
            out["accuracy"] = float(accuracy_score(y_true, y_pred))
            out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=label_ids).tolist()
        out["calibration"] = calibration_summary(
            logits, targets, self.multi_label, self.temperature
        )
        out["ece"] = out["calibration"]["ece"]
        if self.temperature != 1.0:
            out["ece_before_temperature"] = calibration_summary(logits, targets, self.multi_label)[
                "ece"
            ]
        return out

    def fit_temperature(self, model: torch.nn.Module, data: Encoded, batch_size: int) -> float:
        """Fit temperature scaling on a labelled split (validation) and keep it in the task."""
        logits = self.logits_for(model, data, batch_size)
        targets = torch.tensor(
            data.targets, dtype=torch.float32 if self.multi_label else torch.long
        )
        self.temperature = fit_temperature(logits, targets, self.multi_label)
        return self.temperature

    # ---- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def logits_for(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Logits for every example, batched by length; rows come back in input order.

        ``progress`` is called with the number of examples in each finished batch.
        """
        out = torch.empty((len(data), len(self.labels)))
        for idx, inputs, _ in eval_batches(self, model, data, batch_size, progress):
            out[idx] = model(**inputs).logits.float().cpu()
        return out

    def decode(self, logits: torch.Tensor, top_k: int = 1) -> list[dict[str, Any]]:
        """Turn logits into predictions: label + score (+ top-k), or a label set for multi-label."""
        results: list[dict[str, Any]] = []
        logits = logits / self.temperature
        if self.multi_label:
            probs = torch.sigmoid(logits).numpy()
            for row in probs:
                chosen = [self.labels[i] for i in np.flatnonzero(row >= MULTI_LABEL_THRESHOLD)]
                results.append(
                    {
                        "labels": chosen,
                        "scores": {
                            lab: round(float(row[i]), 6) for i, lab in enumerate(self.labels)
                        },
                    }
                )
            return results
        k = max(1, min(top_k, len(self.labels)))
        top_p, top_i = torch.softmax(logits, -1).topk(k, dim=-1)
        for ps, ids in zip(top_p.tolist(), top_i.tolist()):
            item: dict[str, Any] = {"label": self.labels[ids[0]], "score": round(ps[0], 6)}
            if top_k > 1:
                item["top_k"] = [
                    {"label": self.labels[i], "score": round(p, 6)} for p, i in zip(ps, ids)
                ]
            results.append(item)
        return results

    def predict(
        self,
        model: torch.nn.Module,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        top_k: int = 1,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """Labels with scores for raw texts (and their second texts for a pair model)."""
        if self.pair and pairs is None:
            raise DataError("this model classifies text pairs; pass a second text for each input")
        if pairs is not None and len(pairs) != len(texts):
            raise DataError(f"got {len(texts)} texts but {len(pairs)} second texts")
        if not texts:
            return []
        data = self.encode(list(texts), list(pairs) if pairs is not None else None)
        return self.decode(self.logits_for(model, data, batch_size), top_k=top_k)

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        table = read_table(source)
        text = {"text": (columns["text_column"], "--text-column")}
        if columns.get("text_pair_column"):
            text["pair"] = (columns["text_pair_column"], "--text-pair-column")
        label = {"label": (columns["label_column"], "--label-column")}
        return self.encode_selected(select_columns(table, text, label, drop_invalid), table.source)

    def state(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "labels": self.labels,
            "multi_label": self.multi_label,
            "pair": self.pair,
            "label_separator": self.label_separator,
            "max_seq_len": self.max_seq_len,
            "temperature": self.temperature,
            "pooling": self.pooling,
        }


def balanced_weights(targets: Sequence[Any], n_labels: int, multi_label: bool) -> list[float]:
    """Inverse-frequency class weights (sklearn's 'balanced'); pos_weight for multi-label."""
    if multi_label:
        arr = np.asarray(targets, dtype=float)
        pos = arr.sum(0).clip(min=1.0)
        return ((len(arr) - pos) / pos).tolist()
    counts = np.bincount(np.asarray(targets), minlength=n_labels).clip(min=1)
    return (len(targets) / (n_labels * counts)).astype(float).tolist()


def task_from_state(state: dict[str, Any], tokenizer: Any) -> ClassificationTask:
    """Rebuild the task a finished run used from its ``labels.json``."""
    return ClassificationTask(
        tokenizer=tokenizer,
        labels=state["labels"],
        max_seq_len=state["max_seq_len"],
        multi_label=state["multi_label"],
        pair=state["pair"],
        label_separator=state.get("label_separator"),
        temperature=float(state.get("temperature", 1.0)),
        pooling=state.get("pooling", "cls"),
    )
