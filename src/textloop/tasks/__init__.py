"""Tasks: each module owns preprocessing, head, batching, loss, metrics and prediction.

A task package exposes ``build_splits(cfg, tokenizer)`` and ``task_from_state(state, tokenizer)``
(see ``textloop.tasks.base``); this table maps a config's ``task`` to its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from textloop.tasks.base import TaskModule

TASK_MODULES: dict[str, str] = {
    "classification": "textloop.tasks.classification",
    "generation": "textloop.tasks.generation",
    "mlm": "textloop.tasks.lm",
    "clm": "textloop.tasks.lm",
    "ner": "textloop.tasks.ner",
    "qa": "textloop.tasks.qa",
}


def task_module(name: str) -> TaskModule:
    """The module implementing task ``name`` (it satisfies ``textloop.tasks.base.TaskModule``)."""
    return cast("TaskModule", importlib.import_module(TASK_MODULES[name]))
