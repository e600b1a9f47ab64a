"""Experiment tracking as training callbacks: MLflow and TensorBoard (``track:`` / ``--track``).

A tracker sees the same events as any callback (``training/callbacks.py``): the run's resolved
config as parameters at the start, the training loss, learning rate and gradient norm at each
logged step, the validation metrics at each evaluation, and at the end the final metrics and the
run's files (report, metrics, config, plots, the model folder).

Tracking never fails a run. Whatever a tracker raises (an unreachable server, a read-only store,
a full disk) becomes one warning, and that tracker is off for the rest of the run. The one error
a tracker raises is up front, before anything is written: its library is not installed.

- ``mlflow``: the MLflow client, so ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` are
  respected; without them MLflow's own default, a local SQLite store (``./mlflow.db``, artifacts
  under ``./mlruns``), and the experiment ``textloop``. One MLflow run per textloop run, named by
  its output folder.
- ``tensorboard``: event files in ``<run>/tensorboard/`` (written with ``tensorboardX``, which
  needs no TensorFlow), so ``tensorboard --logdir runs/`` shows every run side by side; the
  final metrics with the training settings go to the HParams tab.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from textloop.errors import ConfigError
from textloop.training.loop import StepInfo

log = logging.getLogger("textloop")

TrackName = Literal["none", "mlflow", "tensorboard"]
TRACKERS: tuple[str, ...] = ("none", "mlflow", "tensorboard")
_INSTALL = {"mlflow": "mlflow-skinny", "tensorboard": "tensorboardX"}
# the run folder's files worth keeping next to the metrics (the model folder goes separately)
_RUN_FILES = ("report.md", "metrics.json", "config.yaml", "labels.json", "env.json", "log.jsonl")
# config sections that only matter to some tasks: logged only for those
_TASK_SECTIONS = {"generation": ("generation",), "ner": ("ner",), "qa": ("qa",)}
_PRETRAIN_TASKS = ("mlm", "clm")
_METRIC_CHARS = re.compile(r"[^\w\-. /]")  # what MLflow accepts in a metric name


def build_trackers(kind: str, log_dir: Path | None = None) -> list[Tracker]:
    """The trackers ``track`` names (none: an empty list). ``log_dir``: where TensorBoard
    writes (default ``<run output>/tensorboard``).

    Raises:
        ConfigError: the tracker's library is not installed (say which package to install).
    """
    if kind == "none":
        return []
    if kind == "mlflow":
        return [MlflowTracker(log_dir)]
    if kind == "tensorboard":
        return [TensorBoardTracker(log_dir)]
    raise ConfigError(f"track: got {kind!r}; allowed: {', '.join(TRACKERS)}")


def _require(module: str, kind: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--track {kind} needs the {_INSTALL[kind]} package: pip install {_INSTALL[kind]}"
        ) from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def run_params(config: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a run worth comparing: its config, flattened, without the sections of
    other tasks (generation options on a classifier say nothing)."""
    task = config.get("task", "")
    keep = set(_TASK_SECTIONS.get(task, ()))
    if task in _PRETRAIN_TASKS:
        keep.add("pretrain")
    dropped = {"generation", "ner", "qa", "pretrain"} - keep
    return flatten({k: v for k, v in config.items() if k not in dropped})


def scalars(metrics: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """The numeric entries of a metrics dict (not nested tables), keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in (metrics or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def final_scalars(final: dict[str, Any]) -> dict[str, float]:
    """A finished run's headline numbers: validation and test metrics of the kept weights and
    the training facts (steps, seconds, speed)."""
    out = scalars(final.get("validation"), "final/validation/")
    out.update(scalars(final.get("test"), "final/test/"))
    train = final.get("train") or {}
    out.update(
        scalars({k: train.get(k) for k in ("steps", "best_step", "seconds", "examples_per_s")}, "")
    )
    return out


class Tracker:
    """The callback events, guarded: the first exception in any of them turns the tracker off
    with one warning. ``finish`` and ``end`` are public for callers outside the training driver
    (an update fires the step events from its own fine-tuning and finishes with its report).
    Subclasses implement ``_start``, ``_log``, ``_finish`` and ``_close``."""

    name = "tracking"

    def __init__(self, log_dir: Path | None = None) -> None:
        self.broken = False
        self.output: Path | None = None
        self.log_dir = log_dir  # where file-based trackers write (default: under the output)

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as exc:  # tracking must never fail a run
            self.broken = True
            first = str(exc).splitlines()[0] if str(exc) else ""
            log.warning(
                "%s tracking failed at %s (%s: %s); the run goes on without it",
                self.name,
                what,
                type(exc).__name__,
                first,
            )

    # -- callback events ----------------------------------------------------------------------
    def on_train_start(self, info: dict[str, Any]) -> None:
        """``info``: ``config`` (a dict), ``output`` (the run folder, or None) and optionally
        ``name`` (default: the output folder)."""
        output = info.get("output")
        self.output = Path(output) if output else None
        name = str(info.get("name") or output or "run")
        self._guard("start", self._start, info.get("config") or {}, name)

    def on_step_end(self, info: StepInfo) -> None:
        if info.loss is None:  # only the logged steps
            return
        values = {"train/loss": info.loss, "train/lr": info.lr}
        if info.grad_norm is not None:
            values["train/grad_norm"] = info.grad_norm
        self._guard("step", self._log, values, info.step)

    def on_eval_end(self, info: StepInfo) -> None:
        self._guard("evaluation", self._log, scalars(info.metrics, "validation/"), info.step)

    def on_train_end(self, final: dict[str, Any]) -> None:
        out = self.output
        files = [out / f for f in _RUN_FILES] if out else []
        if out and (out / "plots").is_dir():
            files += sorted((out / "plots").glob("*.png"))
        self.finish(final, files, out / "model" if out else None)

    def finish(self, final: dict[str, Any], files: Iterable[Path], model_dir: Path | None) -> None:
        """Log the final metrics, the files that exist and the model folder; close the run."""
        self._guard("end", self._finish, final, list(files), model_dir)

    def end(self, status: str) -> None:
        """Close a run that did not finish (``FAILED``, ``KILLED``); nothing if it was closed."""
        self._guard("end", self._close, status)

    # -- what a tracker implements --------------------------------------------------------------
    def _start(self, config: dict[str, Any], name: str) -> None:
        raise NotImplementedError

    def _log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _finish(self, final: dict[str, Any], files: list[Path], model_dir: Path | None) -> None:
        raise NotImplementedError

    def _close(self, status: str) -> None:
        raise NotImplementedError


class MlflowTracker(Tracker):
    """One MLflow run per textloop run, through ``MlflowClient`` (no global active run, so the
    trials of a tuning study in one process never share one)."""

    name = "mlflow"
    MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value
    BATCH = 100  # MLflow's limit on parameters per log_batch call

    def __init__(self, log_dir: Path | None = None) -> None:
        super().__init__(log_dir)
        self.mlflow = _require("mlflow", "mlflow")
        self.client: Any = None
        self.run_id: str | None = None

    def _start(self, config: dict[str, Any], name: str) -> None:
        from mlflow.entities import Param

        self.client = self.mlflow.tracking.MlflowClient()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "textloop")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {"textloop.task": str(config.get("task", ""))}
        if self.output is not None:
            tags["textloop.output"] = str(self.output.resolve())
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[: self.MAX_PARAM_CHARS]) for k, v in run_params(config).items()]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + self.BATCH])
        log.info("mlflow: run %s in experiment %r (%s)", self.run_id, experiment, self._uri())

    def _uri(self) -> str:
        return str(self.mlflow.get_tracking_uri())

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.run_id is None or not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_METRIC_CHARS.sub("_", k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _finish(self, final: dict[str, Any], files: list[Path], model_dir: Path | None) -> None:
        if self.run_id is None:
            return
        steps = int((final.get("train") or {}).get("steps") or 0)
        self._log(final_scalars(final), steps)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if model_dir is not None and model_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(model_dir), artifact_path="model")
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status=status)


class TensorBoardTracker(Tracker):
    """Event files under ``<run>/tensorboard/`` (tensorboardX: no TensorFlow needed)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path | None = None) -> None:
        super().__init__(log_dir)
        self.tbx = _require("tensorboardX", "tensorboard")
        self.writer: Any = None
        self.params: dict[str, Any] = {}

    def _start(self, config: dict[str, Any], name: str) -> None:
        import yaml

        log_dir = self.log_dir or (self.output or Path(".")) / "tensorboard"
        self.writer = self.tbx.SummaryWriter(str(log_dir))
        self.params = {
            k: v
            for k, v in run_params(config).items()
            if isinstance(v, (int, float, str, bool)) and not k.startswith("data.")
        }
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "```", 0)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _finish(self, final: dict[str, Any], files: list[Path], model_dir: Path | None) -> None:
        if self.writer is None:
            return
        steps = int((final.get("train") or {}).get("steps") or 0)
        numbers = final_scalars(final)
        self._log(numbers, steps)
        hparams = {k.replace("/", "_"): v for k, v in numbers.items() if k.startswith("final/")}
        if hparams:  # the HParams tab: settings next to the final scores, one row per run
            self.writer.add_hparams(
                self.params, {f"hparam/{k}": v for k, v in hparams.items()}, name="hparams"
            )
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
