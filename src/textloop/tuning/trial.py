"""One trial of a study: an ordinary run of the training driver, with two callbacks.

- ``TrialReporter`` reports each evaluation's validation metric to the Optuna trial, at a step
  counted in training examples seen (a resource that means the same at any batch size), and asks
  the pruner; a pruned trial is stopped through ``RunControl`` and finishes as a run does (best
  checkpoint, metrics, report).
- ``Deadline`` stops the run when the study's time budget is spent. A trial is also given the
  time left as its ``train.time_budget``, so its schedule is fitted to end in time and it seldom
  needs the deadline.

The trial's run folder is ``trials/NNNN`` (its number) under the study folder. A trial that a
killed worker left behind is continued by a new trial with the same parameters: its folder is
renamed to the new number and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloop.config import build_config, load_resume_config
from textloop.errors import TextloopError
from textloop.training.callbacks import RunControl
from textloop.training.loop import StepInfo
from textloop.training.run import TrainingInterrupted, train
from textloop.tuning.space import Param, with_values

log = logging.getLogger("textloop")

PRUNED = "pruned by the study's pruner"
OUT_OF_TIME = "the study's time budget is spent"


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / f"{number:04d}"


class TrialReporter:
    """Feeds the loop's evaluations to an Optuna trial; stops the run when it is pruned."""

    def __init__(
        self,
        trial: Any,
        metric: str,
        control: RunControl,
        reported: set[int] | None = None,
        beat: Any = None,
    ) -> None:
        self.trial, self.metric, self.control = trial, metric, control
        self.examples = 0
        self.reported = set(reported or ())  # steps already reported (a continued trial's)
        self.beat = beat  # called at each evaluation: the worker is alive
        self.pruned_at: int | None = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.examples = int(info.get("start_examples") or 0)

    def on_step_end(self, info: StepInfo) -> None:
        self.examples += info.examples

    def on_eval_end(self, info: StepInfo) -> None:
        value = (info.metrics or {}).get(self.metric)
        if value is None:
            return
        step = max(self.examples, 1)
        if step not in self.reported:
            self.trial.report(float(value), step)
            self.reported.add(step)
        if self.beat is not None:
            self.beat()
        if self.trial.should_prune():
            self.pruned_at = step
            self.control.stop(PRUNED)


class Deadline:
    """Stops the run once ``time.time()`` passes ``at``."""

    def __init__(self, at: float, control: RunControl) -> None:
        self.at, self.control = at, control

    def on_step_end(self, info: StepInfo) -> None:
        if time.time() >= self.at:
            self.control.stop(OUT_OF_TIME)


@dataclass
class TrialPlan:
    """What a trial runs: its parameters, folder, time and whether it continues a killed one."""

    values: dict[str, Any]
    folder: Path
    time_budget: float | None  # seconds for the training loop (train.time_budget)
    deadline: float | None  # time.time() when the study's budget is spent
    continues: int | None = None  # the number of the killed trial it continues


def prepare_folder(plan: TrialPlan, study_dir: Path) -> bool:
    """Move a killed trial's folder to this trial's number; True when it can resume."""
    if plan.continues is None:
        return False
    old = trial_dir(study_dir, plan.continues)
    if old.is_dir() and not plan.folder.exists():
        os.replace(old, plan.folder)
    last = plan.folder / "checkpoints" / "last" / "state.json"
    return last.is_file() and (plan.folder / ".incomplete").exists()


def run_trial(
    trial: Any,
    plan: TrialPlan,
    base: dict[str, Any],
    space: list[Param],
    metric: str,
    study_dir: Path,
    reported: set[int] | None = None,
    beat: Any = None,
) -> dict[str, Any]:
    """Train one trial through the driver; returns what ``study.tell`` needs.

    Returns:
        ``state`` (complete / pruned / fail), ``value``, and ``attrs`` to record on the trial.
        A failed run is a result too (its error recorded), never an exception.

    Raises:
        TrainingInterrupted: Ctrl-C; the trial is left running, and ``--resume`` continues it.
    """
    resume = prepare_folder(plan, study_dir)
    folder = plan.folder
    attrs: dict[str, Any] = {"run_dir": str(folder.relative_to(study_dir))}
    control = RunControl()
    reporter = TrialReporter(trial, metric, control, reported, beat)
    callbacks: list[Any] = [reporter]
    if plan.deadline is not None:
        callbacks.append(Deadline(plan.deadline, control))
    started = time.perf_counter()
    try:
        if resume:  # the killed trial's own saved config, in its new folder
            cfg = load_resume_config(None, extra={"output": str(folder)})
        else:
            tree = with_values(base, space, plan.values)
            tree["output"], tree["overwrite"] = str(folder), True
            if plan.time_budget is not None:
                train_tree = tree.setdefault("train", {})
                given = train_tree.get("time_budget")
                seconds = _seconds(given, plan.time_budget)
                train_tree["time_budget"] = round(seconds, 1)
            cfg = build_config(tree, source=f"trial {trial.number}")
        run = train(cfg, resume=resume, callbacks=callbacks, control=control, test_metrics=False)
    except TrainingInterrupted:
        raise
    except Exception as exc:  # a failed trial is recorded and the study goes on
        kind = "" if isinstance(exc, TextloopError) else f"{type(exc).__name__}: "
        attrs["error"] = (kind + str(exc)).splitlines()[0][:1000]
        attrs["seconds"] = round(time.perf_counter() - started, 2)
        log.warning("trial %d failed: %s", trial.number, attrs["error"])
        return {"state": "fail", "value": None, "attrs": attrs}
    m = run.metrics
    del run
    gc.collect()
    t = m["train"]
    attrs.update(
        {
            "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": t["seconds"],
            "steps": t["steps"],
            "examples": reporter.examples,
            "stopped": t.get("stopped"),
        }
    )
    if control.reason == PRUNED:
        attrs["pruned_at_examples"] = reporter.pruned_at
        return {"state": "pruned", "value": None, "attrs": attrs}
    return {"state": "complete", "value": float(m["validation"][metric]), "attrs": attrs}


def _seconds(given: Any, left: float) -> float:
    """The shorter of a time budget the base config set and the time the study has left."""
    if given is None:
        return left
    from textloop.config import parse_duration

    return min(parse_duration(given), left)
