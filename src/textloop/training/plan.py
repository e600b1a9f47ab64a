"""What ``train`` would decide for a config, and how long its fixed parts take, without training
or writing anything.

A tuning study reads this before its first trial: the default recipe's settings (the default
search space is centred on them), the metric that picks the best checkpoint and its direction,
and the time any trial spends besides training (reading the data, building the model, an
evaluation), which says whether a time budget can hold one trial at all. It runs the driver's
own setup, so every input problem a trial would meet is found here, before a study exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.config import RunConfig
from textloop.training.setup import setup_run


@dataclass(frozen=True)
class RunPlan:
    """A run's decisions and measured fixed costs (see the module docstring)."""

    settings: dict[str, Any]  # the train keys the recipe fills, as the run would have them
    n_train: int  # training examples (windows, features or blocks)
    n_validation: int
    metric: str  # the validation metric that picks the best checkpoint
    higher_is_better: bool
    setup_seconds: float  # reading and encoding the data, building the model and optimizer
    eval_seconds: float  # one pass over the validation split
    test_source: str | None  # the test split the run would score (None: none)


def plan_run(cfg: RunConfig) -> RunPlan:
    """Set up the run ``cfg`` describes (data, model, recipe) and time one evaluation.

    Raises:
        ConfigError, DataError, ModelError: what ``train(cfg)`` would raise before writing.
    """
    started = time.perf_counter()
    s = setup_run(cfg, Path(cfg.output or "."))
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    s.task.evaluate(s.model, s.splits.validation, s.cfg.train.eval_batch_size)
    eval_seconds = time.perf_counter() - started
    train = s.splits.stream if s.splits.stream is not None else s.splits.train
    return RunPlan(
        settings=dict(s.recipe.settings),
        n_train=len(train),
        n_validation=len(s.splits.validation),
        metric=s.metric_for_best,
        higher_is_better=s.higher_is_better,
        setup_seconds=setup_seconds,
        eval_seconds=eval_seconds,
        test_source=s.splits.summary.get("test_source"),
    )
