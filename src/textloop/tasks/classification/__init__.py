"""The classification task: the task module ``textloop.tasks.task_module`` returns.

``task.py`` holds the ``Task`` (ClassificationTask) and ``task_from_state``; ``splits.py`` reads a config's
data into splits (``build_splits``). The names below are the contract of
``textloop.tasks.base.TaskModule``.
"""

from textloop.tasks.classification.splits import build_splits
from textloop.tasks.classification.task import (
    LORA_DEFAULT,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    ClassificationTask,
    task_from_state,
)

__all__ = [
    "LORA_DEFAULT",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "ClassificationTask",
    "build_splits",
    "task_from_state",
]
