"""The update's candidate (and its joint reference): the production model fine-tuned on the\nnew rows with the strategy's replay / EWC / LwF objective, on the default recipe's schedule for\nthe rows and labels it trains on."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from textloop.continual.config import ReplayConfig, UpdateConfig
from textloop.continual.regularisers import EWCObjective, LwFObjective
from textloop.continual.replay import (
    REPLAY_MIN_PER_CLASS,
    Row,
    SampleSize,
    balanced_sample,
)
from textloop.continual.retrain import (
    encode_rows,
    extend_head,
    finetune,
    head_rows,
)
from textloop.errors import DataError
from textloop.tasks.classification.task import ClassificationTask
from textloop.training.recipe import DataShape, Recipe, model_width
from textloop.training.recipe import decide as decide_recipe


def build_buffer_size(replay: ReplayConfig) -> SampleSize:
    """The frozen buffer's size rule: ``buffer_per_class`` per class, or a fixed total."""
    return SampleSize(replay.buffer_per_class, replay.max_size, replay.buffer_size)


def build_replay_size(
    replay: ReplayConfig, new_train: Sequence[Row], old_labels: Sequence[str]
) -> SampleSize:
    """The replayed sample's size rule: ``replay_per_class`` per earlier class, or a fixed total.

    Unset, the per-class count follows the new data: its mean rows per new label (per label
    when the update adds none), at least ``REPLAY_MIN_PER_CLASS``. An earlier class replayed
    with fewer rows than a new label brings is outnumbered in every batch: on BBC News, 50
    business articles against 120 of the new politics sent half of business to politics (full
    label space 0.51, joint retraining 1.0; bench/continual.py)."""
    per_class = replay.replay_per_class
    if per_class is None:
        counts = Counter(r["label"] for r in new_train)
        known = set(old_labels)
        fresh = [n for label, n in counts.items() if label not in known] or list(counts.values())
        per_class = max(REPLAY_MIN_PER_CLASS, -(-sum(fresh) // max(len(fresh), 1)))
    return SampleSize(per_class, replay.max_size, replay.replay_size)


def build_candidate(
    model: torch.nn.Module,
    task: Any,
    new_train: Sequence[Row],
    replay_buffer: Sequence[Row],
    cfg: UpdateConfig,
    callbacks: Sequence[Any] = (),
) -> tuple[torch.nn.Module, ClassificationTask, dict[str, Any]]:
    """Train a candidate from ``model`` (left untouched) on a new batch with ``cfg.strategy``;
    ``callbacks`` (trackers) see its training steps.

    Returns:
        The trained copy, its task (old labels first, new labels appended), and training facts.
    """
    old_labels = list(task.labels)
    new_labels = sorted({r["label"] for r in new_train} - set(old_labels))
    candidate = extend_head(copy.deepcopy(model), old_labels, new_labels, cfg.seed)
    ctask = ClassificationTask(
        tokenizer=task.tokenizer,
        labels=[*old_labels, *new_labels],
        max_seq_len=cfg.max_seq_len or task.max_seq_len,
        pooling=task.pooling,  # a few-shot run's mean-pooled head stays mean-pooled
    )
    rows = list(new_train)
    n_replay = 0
    objective: Any = ctask
    if cfg.strategy == "replay":
        size = build_replay_size(cfg.replay, new_train, old_labels)
        replayed = size.sample(replay_buffer, cfg.seed)
        rows += replayed
        n_replay = len(replayed)
    elif cfg.strategy == "ewc":
        old = balanced_sample(replay_buffer, cfg.fisher_samples, cfg.seed)
        if not old:
            raise DataError("strategy ewc needs earlier data for the Fisher; the buffer is empty")
        objective = EWCObjective.build(
            ctask,
            candidate,
            encode_rows(ctask, old),
            cfg.ewc_lambda,
            new_rows=head_rows(candidate, len(ctask.labels), len(old_labels)),
        )
    elif cfg.strategy == "lwf":
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        objective = LwFObjective(
            ctask, teacher, len(old_labels), cfg.lwf_lambda, cfg.lwf_temperature
        )
    recipe = update_recipe(cfg, len(rows), len(ctask.labels), model_width(candidate))
    schedule = cfg.model_copy(update=recipe.settings)  # the recipe fills the unset keys
    info = finetune(candidate, ctask, objective, encode_rows(ctask, rows), schedule, callbacks)
    info.update(
        {
            "strategy": cfg.strategy,
            "n_train": len(rows),
            "n_replay": n_replay,
            "new_labels": new_labels,
            "recipe": recipe.as_dict(),
        }
    )
    return candidate, ctask, info


_UPDATE_RECIPE = ("batch_size", "epochs", "lr", "head_lr")


def update_recipe(cfg: UpdateConfig, n_rows: int, n_labels: int, width: int | None) -> Recipe:
    """The update's batch size, epochs and learning rates: those set in ``cfg``, the rest from
    the default recipe (``training/recipe.py``) for the rows it trains on (new + replayed) and
    the labels it ends with, so a class-incremental update is not under-trained."""
    values = cfg.model_dump()
    given = {k: values[k] for k in _UPDATE_RECIPE}
    shape = DataShape("classification", n_rows, n_labels, width)
    recipe = decide_recipe(shape, given, {k for k, v in given.items() if v is not None})
    recipe.settings = {k: recipe.settings[k] for k in _UPDATE_RECIPE}
    recipe.reasons = {k: v for k, v in recipe.reasons.items() if k in _UPDATE_RECIPE}
    return recipe


def build_reference(
    model: torch.nn.Module,
    task: Any,
    new_train: Sequence[Row],
    replay_buffer: Sequence[Row],
    cfg: UpdateConfig,
) -> tuple[torch.nn.Module, ClassificationTask, dict[str, Any]]:
    """The joint reference: plain fine-tuning from ``model`` on the whole buffer plus the new
    training rows, with the candidate's schedule (what retraining on everything kept could do)."""
    everything = cfg.replay.model_copy(update={"replay_size": len(replay_buffer)})
    joint = cfg.model_copy(update={"strategy": "replay", "replay": everything})
    reference, rtask, info = build_candidate(model, task, new_train, replay_buffer, joint)
    info["strategy"] = "joint"
    return reference, rtask, info
