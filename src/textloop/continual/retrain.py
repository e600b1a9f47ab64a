"""Retraining a served classifier: head extension, the fine-tune driver, scoring, the run dir.

The driver is a caller of ``textloop.training.loop.train_steps`` (the one training loop),
with textloop's optimizer and scheduler; what differs from ``textloop train`` is only what an
update needs: it starts from the production weights and label order (not a fresh head over a
re-sorted label set) and takes the loss from an objective (the task, or a task wrapped by a
regulariser in ``regularisers.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textloop.config import ScheduleConfig
from textloop.continual.replay import Row
from textloop.data.batching import bucketed_batches
from textloop.fileio import atomic_dir, write_text_atomic
from textloop.tasks.base import Encoded
from textloop.training.callbacks import fire
from textloop.training.loop import LoopState, seed_everything, steps_per_epoch, train_steps
from textloop.training.optim import build_optimizer, build_scheduler


# ---- class-incremental head ----------------------------------------------------------------
def _head_linear(model: torch.nn.Module, n_labels: int) -> tuple[torch.nn.Module, str]:
    """The classifier's output layer (last Linear with ``n_labels`` outputs) and its parent."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == n_labels:
            found = name
    if found is None:
        raise ValueError(f"no output layer with {n_labels} outputs in {type(model).__name__}")
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr


def extend_head(
    model: torch.nn.Module, old_labels: Sequence[str], new_labels: Sequence[str], seed: int = 0
) -> torch.nn.Module:
    """Append output rows for ``new_labels``; the old rows are copied exactly.

    The old classes' logits are unchanged until training moves them. A new row starts as the
    model's usual init (normal, std ``initializer_range``) with the old rows' mean bias, so a
    new class starts neither dominant nor unreachable.
    """
    if not new_labels:
        return model
    parent, attr = _head_linear(model, len(old_labels))
    old: torch.nn.Linear = getattr(parent, attr)
    n_old, n_new = len(old_labels), len(old_labels) + len(new_labels)
    head = torch.nn.Linear(old.in_features, n_new, bias=old.bias is not None)
    std = float(getattr(model.config, "initializer_range", 0.02))  # type: ignore[union-attr]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight[:n_old] = old.weight
        head.weight[n_old:] = torch.randn(n_new - n_old, old.in_features, generator=gen) * std
        if old.bias is not None:
            head.bias[:n_old] = old.bias
            head.bias[n_old:] = old.bias.mean()
    head.to(old.weight.device, old.weight.dtype)
    setattr(parent, attr, head)
    labels = [*old_labels, *new_labels]
    cfg: Any = model.config
    cfg.num_labels = n_new
    cfg.id2label = dict(enumerate(labels))
    cfg.label2id = {lab: i for i, lab in enumerate(labels)}
    if hasattr(model, "num_labels"):
        setattr(model, "num_labels", n_new)  # noqa: B010  (an nn.Module attribute, not typed)
    return model


def head_rows(model: torch.nn.Module, n_labels: int, n_old: int) -> dict[str, int]:
    """The output layer's parameter names, each with its first new label's row (``n_old``);
    empty when no label was added."""
    if n_labels == n_old:
        return {}
    parent, attr = _head_linear(model, n_labels)
    layer = getattr(parent, attr)
    mine = {id(p) for p in layer.parameters()}
    return {n: n_old for n, p in model.named_parameters() if id(p) in mine}


# ---- scoring -------------------------------------------------------------------------------
def score_predictions(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision / recall / F1 over the gold labels."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    if not gold:
        return {"n": 0, "accuracy": None, "macro_f1": None, "per_class": {}}
    labels = sorted(set(gold))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0
    )
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(
            f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
        ),
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
    }


def _logits(
    model: torch.nn.Module, task: Any, rows: Sequence[Row], batch_size: int
) -> torch.Tensor:
    return task.logits_for(model, task.encode([r["text"] for r in rows], None), batch_size)


def score(
    model: torch.nn.Module, task: Any, rows: Sequence[Row], batch_size: int = 64
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall / F1 of ``model`` on labelled rows.

    Gold labels the model does not know count as errors, so a model can be scored on data with
    new labels before it learns them.
    """
    if not rows:
        return score_predictions([], [])
    predicted = [task.labels[i] for i in _logits(model, task, rows, batch_size).argmax(-1).tolist()]
    return score_predictions([r["label"] for r in rows], predicted)


def score_in_old_label_space(
    model: torch.nn.Module,
    task: Any,
    rows: Sequence[Row],
    old_labels: Sequence[str],
    batch_size: int = 64,
    examples_per_pair: int = 3,
) -> dict[str, Any]:
    """Scores of a model with a grown label space on earlier data, from one pass of logits.

    Returns:
        ``full``: the score of its prediction over all its labels; ``old_labels``: the score
        of its prediction restricted to ``old_labels`` (argmax over those logits only: the
        answer it gives when asked what the production model was asked); ``old_to_new``: the
        rows whose gold is an old label but whose full prediction is a new one, counted per
        (gold, predicted) pair, most frequent first, with up to ``examples_per_pair`` texts.
    """
    if not rows:
        empty = score_predictions([], [])
        return {"full": empty, "old_labels": empty, "old_to_new": old_to_new_confusions([], 0)}
    logits = _logits(model, task, rows, batch_size)  # (N, C_all)
    old_index = [task.labels.index(lab) for lab in old_labels]
    full = [task.labels[i] for i in logits.argmax(-1).tolist()]
    restricted = [old_labels[i] for i in logits[:, old_index].argmax(-1).tolist()]
    gold = [r["label"] for r in rows]
    old = set(old_labels)
    pairs = [(g, p, r["text"]) for g, p, r in zip(gold, full, rows) if g in old and p not in old]
    n_old_gold = sum(g in old for g in gold)
    return {
        "full": score_predictions(gold, full),
        "old_labels": score_predictions(gold, restricted),
        "old_to_new": old_to_new_confusions(pairs, n_old_gold, examples_per_pair),
    }


def old_to_new_confusions(
    pairs: Sequence[tuple[str, str, str]], n_old_gold: int, examples_per_pair: int = 3
) -> dict[str, Any]:
    """Count (old gold, new predicted, text) triples per pair, most frequent pair first."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for gold, predicted, text in pairs:
        grouped.setdefault((gold, predicted), []).append(text)
    ordered = sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {
        "n_old_gold": n_old_gold,
        "n_to_new": len(pairs),
        "share": len(pairs) / n_old_gold if n_old_gold else 0.0,
        "pairs": [
            {
                "gold": gold,
                "predicted": predicted,
                "count": len(texts),
                "examples": texts[:examples_per_pair],
            }
            for (gold, predicted), texts in ordered
        ],
    }


# ---- fine-tune driver ----------------------------------------------------------------------
def encode_rows(task: Any, rows: Sequence[Row]) -> Encoded:
    """Tokenize labelled rows with the task (labels must be in ``task.labels``)."""
    data: Encoded = task.encode([r["text"] for r in rows], None)
    data.targets = task.targets_for(
        [r["label"] for r in rows], "update data", [str(i) for i in range(len(rows))]
    )
    return data


def finetune(
    model: torch.nn.Module,
    task: Any,
    objective: Any,
    train: Encoded,
    schedule: ScheduleConfig,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``model`` in place on ``train`` with ``objective.training_loss``; the last weights.

    There is no best-checkpoint pick on a validation split: every labelled example of an
    update goes either into training or to the gate, which judges the result. ``callbacks``
    (trackers) see each step's ``on_step_end``.
    """
    if schedule.epochs is None or schedule.lr is None or schedule.batch_size is None:
        raise ValueError("finetune needs a resolved schedule: epochs, lr and batch_size set")
    epochs, batch_size = schedule.epochs, schedule.batch_size
    seed_everything(schedule.seed)
    optimizer = build_optimizer(
        model, schedule.lr, schedule.weight_decay, schedule.head_lr, task.head_prefixes
    )
    n_batches = -(-len(train) // batch_size)
    total = epochs * steps_per_epoch(n_batches, 1)
    scheduler = build_scheduler(optimizer, round(schedule.warmup_ratio * total), total, "linear")
    device = next(model.parameters()).device
    state = LoopState()
    losses: list[float] = []

    def batches_for_epoch(s: LoopState) -> list[list[int]]:
        order = bucketed_batches(train.lengths, batch_size, 50, schedule.seed * 1_000_003 + s.epoch)
        return order[s.batches_done_in_epoch :]

    def collate(items: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in task.collate(train, list(items)).items()}

    started = time.perf_counter()
    for info in train_steps(
        model,
        optimizer,
        scheduler,
        batches_for_epoch=batches_for_epoch,
        collate=collate,
        loss_fn=lambda batch: objective.training_loss(model, batch),
        evaluate=lambda: {"loss": float(np.mean(losses[-n_batches:])) if losses else 0.0},
        state=state,
        epochs=epochs,
        max_steps=None,
        grad_accum_steps=1,
        grad_clip=schedule.grad_clip,
        eval_every_steps=0,
        metric_for_best="loss",
        higher_is_better=False,
        log_every_steps=1,
    ):
        if info.kind == "step" and info.loss is not None:
            losses.append(info.loss)
        if info.kind == "step":
            fire(list(callbacks), "on_step_end", info)
    model.eval()
    seconds = time.perf_counter() - started
    return {
        "steps": state.step,
        "seconds": round(seconds, 2),
        "examples_per_s": round(state.examples_seen / max(seconds, 1e-9), 2),
        "seed": schedule.seed,
        "device": str(device),
        "precision": "fp32",  # updates train without autocast
        "first_loss": losses[0] if losses else None,
        "last_epoch_loss": float(np.mean(losses[-n_batches:])) if losses else None,
    }


def write_run_dir(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    config_yaml: str,
    metrics: dict[str, Any],
) -> None:
    """Write a finished run directory that ``load_run`` and the registry accept, through the
    one run-folder writer ``training.rundir`` (the whole folder appears at once)."""
    from textloop.training.precision import PrecisionChoice
    from textloop.training.rundir import write_run_artifacts

    train = metrics.get("train", {})
    precision = PrecisionChoice(train.get("precision", "fp32"), "update: no autocast", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        write_text_atomic(tmp / "config.yaml", config_yaml)
        write_run_artifacts(
            tmp,
            model,
            tokenizer,
            task,
            metrics,
            train.get("seed", 0),
            precision,
            torch.get_num_threads(),
        )
