"""A study's clock and its workers: the time budget spent so far, across kills and machines.

Each worker process (``textloop tune``) records itself in the study's storage as
``[start, alive]``: when it started and when it last said it was alive (a heartbeat every
``HEARTBEAT_SECONDS``, from a thread, so reading data or a long evaluation count too). The
study's spent time is the wall time covered by at least one worker: two workers side by side
spend the budget together, and the time between a kill and ``--resume`` is not counted (the
killed worker's interval ends at its last heartbeat).

A worker is dead when its process is gone (same host: its pid no longer runs) or its heartbeat
is older than ``STALE_SECONDS`` (any host); the trial it was running is then continued by the
next worker that starts (``tuning/study.py``).

How long a trial takes, for deciding whether one more fits (``estimate_trial_seconds``): the
median of the completed trials' wall times; before any trial completed, the least a trial needs
(``minimum_trial_seconds``): reading the data and building the model, two evaluations (one in
the loop, the final one) and ``TimeBudget.FIRST_FIT`` steps, a step estimated as three times the
forward pass of a batch (forward + backward), all timed on this machine before the study starts.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from textloop.training.budget import TimeBudget
from textloop.training.plan import RunPlan

log = logging.getLogger("textloop")

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0
WORKER_PREFIX = "textloop.worker:"


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the study's storage records it."""

    id: str
    host: str
    pid: int
    start: float  # time.time() at its start
    alive: float  # time.time() at its last heartbeat

    def is_dead(self, now: float) -> bool:
        if now - self.alive > STALE_SECONDS:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


def workers(user_attrs: dict[str, Any]) -> dict[str, WorkerInfo]:
    """Every worker recorded in a study's user attributes, by id."""
    found = {}
    for key, value in user_attrs.items():
        if key.startswith(WORKER_PREFIX) and isinstance(value, dict):
            wid = key[len(WORKER_PREFIX) :]
            found[wid] = WorkerInfo(
                wid, value["host"], value["pid"], value["start"], value["alive"]
            )
    return found


def covered_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of ``[start, end]`` intervals."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


class Worker:
    """This process as a worker of a study: registered on start, a heartbeat thread, and the
    study's spent time as seen from here."""

    def __init__(self, study: Any) -> None:
        self.study = study
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.start = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the beat of the thread and of the main thread

    def _record(self) -> dict[str, Any]:
        host, pid = socket.gethostname(), os.getpid()
        return {"host": host, "pid": pid, "start": self.start, "alive": time.time()}

    def beat(self) -> None:
        """Say this worker is alive (a write to the study's storage)."""
        with self._lock:
            self.study.set_user_attr(WORKER_PREFIX + self.id, self._record())

    def __enter__(self) -> Worker:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="textloop-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        try:
            self.beat()  # the end of this worker's interval
        except Exception as exc:  # a storage gone away must not hide the error being raised
            log.warning("could not record the end of this worker: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception as exc:  # a busy database: the next beat will do
                log.debug("heartbeat failed: %s", exc)

    def spent_seconds(self) -> float:
        """The study's wall time so far: every worker's interval, this one's up to now."""
        now = time.time()
        known = workers(self.study.user_attrs)
        intervals = [(w.start, w.alive) for wid, w in known.items() if wid != self.id]
        intervals.append((self.start, now))
        return covered_seconds(intervals)


def continue_stale(study: Any, storage: Any, me: str) -> None:
    """Record each trial a dead worker left running as interrupted, and queue its values as a
    new trial that continues its run (only one worker succeeds in marking it)."""
    from optuna.trial import TrialState

    now, known = time.time(), workers(study.user_attrs)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = known.get(t.user_attrs.get("worker", ""))
        if owner is not None and (owner.id == me or not owner.is_dead(now)):
            continue
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if owner is None and now - started < STALE_SECONDS:  # just asked: owner not recorded yet
            continue
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        why = f"its worker {owner.id if owner else '?'} stopped during the trial (killed?)"
        try:  # attributes first: a finished trial takes none
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "error", why)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception:  # another worker marked it first
            continue
        study.enqueue_trial(t.params, user_attrs={"continues": t.number})
        log.info(
            "trial %d was left running by a dead worker: it continues as a new trial", t.number
        )


def others_running(study: Any, me: str) -> bool:
    """Whether a live worker other than ``me`` is running a trial (then it writes last)."""
    from optuna.trial import TrialState

    now, known = time.time(), workers(study.user_attrs)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = known.get(t.user_attrs.get("worker", ""))
        if owner is not None and owner.id != me and not owner.is_dead(now):
            return True
    return False


def minimum_trial_seconds(plan: RunPlan, batch_size: int) -> float:
    """The least time one trial needs on this machine (see the module docstring)."""
    per_example = plan.eval_seconds / max(plan.n_validation, 1)
    step = 3.0 * per_example * batch_size
    return plan.setup_seconds + 2.0 * plan.eval_seconds + TimeBudget.FIRST_FIT * step


def estimate_trial_seconds(trials: Iterable[Any], minimum: float) -> float:
    """How long the next trial will take: the median completed trial, else ``minimum``."""
    done = [t.user_attrs["seconds"] for t in trials if _complete(t) and "seconds" in t.user_attrs]
    return float(statistics.median(done)) if done else minimum


def overhead_seconds(trials: Iterable[Any], first_guess: float) -> float:
    """A trial's time outside its training loop (setup, final evaluation, writing): the median
    over finished trials, else ``first_guess``."""
    spans = [
        t.user_attrs["seconds"] - t.user_attrs["train_seconds"]
        for t in trials
        if "seconds" in t.user_attrs and "train_seconds" in t.user_attrs
    ]
    return float(statistics.median(spans)) if spans else first_guess


def _complete(trial: Any) -> bool:
    from optuna.trial import TrialState

    return bool(trial.state == TrialState.COMPLETE)
