"""What every worker of a study agrees on (stored in the study), and what a worker reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class StudySettings:
    """What every worker of a study must agree on, stored in the study when it is created."""

    base: dict[str, Any]  # the base config as given (what best.yaml starts from)
    space: list[str]  # the space, as --space specs
    metric: str
    direction: Literal["maximize", "minimize"]
    pruner: str
    min_resource: int  # training examples: the pruner's first rung
    max_resource: int
    recipe: dict[str, Any]  # the default recipe's settings for the data
    min_trial_seconds: float
    overhead_seconds: float  # a first guess of a trial's time outside its training loop
    test_source: str | None
    seed: int
    n_trials: int = 20
    budget_seconds: float | None = None


@dataclass
class TuneResult:
    """What a finished (or stopped) worker reports."""

    output: Path
    storage: str
    study_name: str
    counts: dict[str, int]
    spent_seconds: float
    budget_seconds: float | None
    best: dict[str, Any] | None = None
    default_value: float | None = None
    test: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    metric: str = ""


def counted(trials: Sequence[Any]) -> int:
    """Trials that count towards --trials: all but those a dead worker left (continued)."""
    from optuna.trial import TrialState

    return sum(not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")) for t in trials)
