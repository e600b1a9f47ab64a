"""Tasks: each module owns preprocessing, head, batching, loss, metrics and prediction.

A task module exposes ``build_splits(cfg, tokenizer)`` and ``task_from_state(state, tokenizer)``
(see ``textloop.tasks.base``); this table maps a config's ``task`` to its module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TASK_MODULES: dict[str, str] = {
    "classification": "textloop.tasks.classification",
    "generation": "textloop.tasks.generation",
    "mlm": "textloop.tasks.pretrain",
    "clm": "textloop.tasks.pretrain",
    "ner": "textloop.tasks.ner",
    "qa": "textloop.tasks.qa",
}


def task_module(name: str) -> ModuleType:
    """The module implementing task ``name``."""
    return importlib.import_module(TASK_MODULES[name])
