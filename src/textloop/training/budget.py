"""``train.time_budget``: fit a run's schedule to a wall-clock budget while it trains."""

from __future__ import annotations

import logging
import time
from typing import Any

from textloop.training.loop import LoopState
from textloop.training.optim import Horizon

log = logging.getLogger("textloop")


class TimeBudget:
    """Fits a run's steps to a wall-clock budget as it trains (``train.time_budget``).

    After the first steps, and again every ``REFIT_EVERY`` steps, it projects the time the
    remaining steps and evaluations take (the time per step and per evaluation with its
    checkpoint, measured so far) and, if that overruns the budget, moves the end of the schedule
    earlier (the learning rate decays to 0 by the new end). It never lengthens a run. Should the
    run still reach the budget, that step is the last: the loop evaluates, and the best
    checkpoint is what the run keeps. The budget counts the training loop, not reading the data
    or the final evaluation.
    """

    FIRST_FIT = 10
    REFIT_EVERY = 50

    def __init__(
        self, seconds: float, horizon: Horizon, start_step: int, eval_every: int, per_epoch: int
    ) -> None:
        self.seconds, self.horizon = seconds, horizon
        self.planned = horizon.stop_at or horizon.total_steps
        self.eval_every = eval_every or per_epoch  # steps between evaluations
        self.started = self.last = time.perf_counter()
        self.start_step = start_step
        self.eval_seconds = 0.0
        self.evals = 0
        self.reached = False

    def report(self, state: LoopState) -> dict[str, Any]:
        end = self.horizon.stop_at
        return {
            "seconds": self.seconds,
            "planned_steps": self.planned,
            "fitted_steps": end if end is not None and end != self.planned else None,
            "reached": self.reached,
            "steps": state.step,
        }

    def after_eval(self) -> None:
        """Called once an evaluation and its checkpoint are done."""
        now = time.perf_counter()
        self.eval_seconds += now - self.last
        self.evals += 1
        self.last = now

    def after_step(self, state: LoopState) -> None:
        now = self.last = time.perf_counter()
        elapsed, done = now - self.started, state.step - self.start_step
        if elapsed >= self.seconds:
            if self.horizon.stop_at is None or self.horizon.stop_at > state.step:
                log.info("time budget of %.0f s reached at step %d: stopping", self.seconds, done)
                self.horizon.stop_at, self.reached = state.step, True
            return
        if done != self.FIRST_FIT and (done < self.FIRST_FIT or done % self.REFIT_EVERY):
            return
        per_step = (elapsed - self.eval_seconds) / done
        # an evaluation + checkpoint: measured once there was one, else guessed as 20 steps
        per_eval = self.eval_seconds / self.evals if self.evals else 20 * per_step
        end = self.horizon.stop_at or self.horizon.total_steps
        cost = per_step + per_eval / self.eval_every  # one step and its share of evaluation
        if (end - state.step) * cost + per_eval <= self.seconds - elapsed:
            return
        fit = int((self.seconds - elapsed - per_eval) / cost)  # keep time for the last eval
        new_end = state.step + max(1, fit)
        if new_end < end:
            log.info(
                "time budget %.0f s: %.3f s/step, %.1f s/evaluation; the schedule now ends at "
                "step %d instead of %d",
                self.seconds,
                per_step,
                per_eval,
                new_end,
                end,
            )
            self.horizon.total_steps = self.horizon.stop_at = state.stop_at = new_end
