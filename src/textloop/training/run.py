"""``train``: one call from a config to a finished run directory.

Everything that can fail on input (config, model, every data file) is checked before the run
directory is touched. During training the directory holds ``.incomplete`` and
``checkpoints/last`` so a killed run can be resumed; the final artifacts are written each to a
temporary path and renamed into place.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.rundir import INCOMPLETE, is_run_dir
from textloop.config import RunConfig, config_to_yaml, load_config, parse_duration
from textloop.data.batching import bucketed_batches
from textloop.errors import ConfigError, TextloopError
from textloop.tasks.base import Encoded
from textloop.tasks.classification.pooled import MeanPooledClassifier
from textloop.tasks.classification.task import ClassificationTask
from textloop.training import distributed as dist
from textloop.training.budget import TimeBudget
from textloop.training.callbacks import JsonlLog, RunControl, fire
from textloop.training.checkpoint import (
    copy_weights,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    snapshot,
)
from textloop.training.few_shot import ContrastiveObjective
from textloop.training.loop import (
    LoopState,
    restore_rng,
    train_steps,
)
from textloop.training.recipe import Recipe, few_shot_pairs, few_shot_steps
from textloop.training.rundir import (
    check_output,
    start_run_dir,
    truncate_log,
    write_run_artifacts,
)
from textloop.training.setup import RunSetup, setup_run
from textloop.training.tracking import build_trackers

log = logging.getLogger("textloop")


class TrainingInterrupted(TextloopError):
    """Ctrl-C during training; ``checkpoints/last`` holds the state to resume from."""

    exit_code = 130


def train(
    config: RunConfig | str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    control: RunControl | None = None,
    test_metrics: bool = True,
) -> Any:
    """Fine-tune a model as ``config`` says and write a run directory.

    Args:
        config: a ``RunConfig`` or the path of a YAML run file.
        resume: continue the unfinished run in ``config.output`` from ``checkpoints/last``.
        callbacks: objects with any of the events in ``textloop.training.callbacks.EVENTS``
            (the trackers ``config.track`` names are added to them).
        control: lets a callback end the run early and cleanly (``RunControl.stop``).
        test_metrics: score the test split at the end (a tuning trial does not: its test score
            must not be seen while choosing).

    Returns:
        The finished run (``textloop.Run``): ``run.metrics``, ``run.predict([...])``.

    Raises:
        ConfigError, DataError, ModelError, RunDirError, CheckpointError: bad input, found before
            anything is written.
        TrainingInterrupted: Ctrl-C; ``checkpoints/last`` was saved for ``resume=True``.

    Example:
        >>> run = textloop.train(load_config("configs/classification/bbc-news_full.yaml"))
        >>> run.metrics["test"]["accuracy"]
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if not cfg.output:
        raise ConfigError("no output directory: set output in the config or pass --output DIR")
    out = Path(cfg.output)
    trackers = build_trackers(cfg.track)  # a missing tracking library fails here, up front
    resuming = check_output(out, cfg, resume)
    s = setup_run(cfg, out)  # data, model, optimizer: every input checked, nothing written
    dist.barrier()  # every process has checked the output dir before rank 0 changes it
    main = dist.is_main_process()  # under torchrun only rank 0 writes files
    objective = _few_shot_objective(s)  # its pairs, refused (DataError) before any write
    state = _open_run_dir(s, resuming, main)
    user_callbacks = [*callbacks, *trackers] if main else []
    recorder = JsonlLog(out / "log.jsonl") if main else None
    control = control or RunControl()
    fire(
        user_callbacks,
        "on_train_start",
        {
            "total_steps": s.horizon.total_steps,
            "start_step": state.step,
            "start_examples": state.examples_seen,
            "summary": s.splits.summary,
            "config": s.cfg.model_dump(mode="json"),
            "output": str(out),
        },
    )
    started, examples_at_start = time.perf_counter(), state.examples_seen
    try:
        budget = _run_loop(s, state, recorder, user_callbacks, main, control, objective)
        train_seconds = time.perf_counter() - started
        dist.barrier()  # rank 0 has written the last checkpoint
        examples = state.examples_seen - examples_at_start
        final = _finish(
            s, state, train_seconds, examples, main, budget, test_metrics, control.reason
        )
    except BaseException as exc:  # a tracked run that did not finish is closed as such
        interrupted = isinstance(exc, (KeyboardInterrupt, TrainingInterrupted))
        for tracker in trackers:
            tracker.end("KILLED" if interrupted else "FAILED")
        raise
    fire(user_callbacks, "on_train_end", final)
    dist.barrier()  # the run dir is complete before any process reads it

    from textloop.runs import load_run

    return load_run(out)


def _open_run_dir(s: RunSetup, resuming: bool, main: bool) -> LoopState:
    """Restore ``checkpoints/last`` (resume) or start a fresh run folder; the loop's state."""
    out = s.out
    if resuming:
        state = load_checkpoint(out / "checkpoints/last", s.model, s.optimizer, s.scheduler)
        restore_rng(state.rng)
        if state.stop_at is not None:  # a time budget had shortened the schedule
            s.horizon.total_steps = s.horizon.stop_at = state.stop_at
        if state.recipe is not None:  # the saved config holds the recipe's values as if set
            s.recipe = Recipe(**state.recipe)
        if main:
            truncate_log(out / "log.jsonl", state.step)
        return state
    if main:
        start_run_dir(out, config_to_yaml(s.cfg), replace=is_run_dir(out) and s.cfg.overwrite)
    return LoopState(recipe=s.recipe.as_dict())


def _few_shot_objective(s: RunSetup) -> ContrastiveObjective | None:
    """The few-shot recipe's pair objective (training/few_shot.py), None for the default one."""
    if s.cfg.train.recipe != "few-shot":
        return None
    t = s.cfg.train
    assert isinstance(s.model, MeanPooledClassifier) and isinstance(s.task, ClassificationTask)
    assert t.batch_size is not None  # the recipe filled it
    return ContrastiveObjective(
        model=s.model,
        task=s.task,
        train=s.splits.train,
        validation=s.splits.validation,
        n_pairs=few_shot_pairs(len(s.splits.train)),
        n_steps=few_shot_steps(len(s.splits.train), t.batch_size, t.few_shot_loss),
        loss_kind=t.few_shot_loss,
        batch_size=t.batch_size,
        eval_batch_size=t.eval_batch_size,
        seed=t.seed,
        device=s.device,
        class_weights=t.class_weights or "none",
    )


def _run_loop(
    s: RunSetup,
    state: LoopState,
    recorder: JsonlLog | None,
    callbacks: list[Any],
    main: bool,
    control: RunControl,
    objective: ContrastiveObjective | None = None,
) -> dict[str, Any] | None:
    """Consume ``train_steps``: log, checkpoint after each evaluation, stop early or when a
    callback asks, or save and raise ``TrainingInterrupted`` on Ctrl-C. Returns what a time
    budget did (None without). ``objective`` replaces the task's batches, loss and evaluation
    (the few-shot recipe's sentence pairs)."""
    t, task, splits, device = s.cfg.train, s.task, s.splits, s.device
    ckpt = s.out / "checkpoints"
    recorders = [recorder] if recorder else []
    batch_size = t.batch_size
    assert batch_size is not None  # the recipe filled it
    budget: TimeBudget | None = None
    if t.time_budget is not None:  # a few-shot run's pass is its pair batches (few_shot.py)
        per_epoch = (
            objective.n_steps
            if objective is not None
            else -(-len(splits.stream or splits.train) // (batch_size * t.grad_accum_steps))
        )
        budget = TimeBudget(
            parse_duration(t.time_budget),
            s.horizon,
            state.step,
            t.eval_every_steps or 0,
            max(per_epoch, 1),
        )

    def batches_for_epoch(state: LoopState) -> Iterable[Sequence[Any]]:
        if splits.stream is not None:  # mlm / clm: packed blocks read from disk, from the cursor
            return splits.stream.micro_batches(state.epoch, batch_size, state.data_cursor)
        batches = bucketed_batches(
            splits.train.lengths, batch_size, t.bucket_batches, t.seed * 1_000_003 + state.epoch
        )
        return batches[state.batches_done_in_epoch :]

    def collate(items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if splits.stream is not None:
            return {k: v.to(device) for k, v in splits.stream.collate(items).items()}
        return {k: v.to(device) for k, v in task.collate(splits.train, items).items()}

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return task.training_loss(s.train_model, batch)

    def evaluate() -> dict[str, Any]:
        return _evaluate(s, splits.validation, callbacks)

    if objective is not None:
        batches_for_epoch, collate = objective.batches_for_epoch, objective.collate  # type: ignore[assignment]
        loss_fn, evaluate = objective.loss, objective.evaluate  # type: ignore[assignment]
    try:
        for info in train_steps(
            s.train_model,
            s.optimizer,
            s.scheduler,
            batches_for_epoch=batches_for_epoch,
            collate=collate,
            loss_fn=loss_fn,
            evaluate=evaluate,
            state=state,
            epochs=s.epochs,
            max_steps=s.horizon,
            grad_accum_steps=t.grad_accum_steps,
            grad_clip=t.grad_clip,
            eval_every_steps=t.eval_every_steps or 0,
            metric_for_best=s.metric_for_best,
            higher_is_better=s.higher_is_better,
            log_every_steps=t.log_every_steps,
            autocast_dtype=s.precision.dtype,
            loss_tokens=task.loss_tokens if task.token_weighted else None,
        ):
            if info.kind == "step":
                fire([*recorders, *callbacks], "on_step_end", info)
                if budget:
                    budget.after_step(state)
                if control.reason:
                    log.info("stopping at step %d: %s", state.step, control.reason)
                    break
                continue
            fire(recorders, "on_eval_end", info)  # logged before the checkpoint it belongs to
            snap = snapshot(s.model, s.optimizer)  # every rank: FSDP gathers the shards to rank 0
            if main:
                save_checkpoint(ckpt / "last", snap, s.scheduler, state)
                if info.is_best:
                    copy_weights(ckpt / "last", ckpt / "best")
            fire(callbacks, "on_checkpoint", ckpt / "last")
            fire(callbacks, "on_eval_end", info)
            if budget:
                budget.after_eval()
            if control.reason:
                log.info("stopping at step %d: %s", state.step, control.reason)
                break
            # the recipe's patience waits for half the planned steps (a metric flat at chance
            # early is no plateau); a patience the user set applies from the first evaluation
            patient = "early_stopping_patience" in s.recipe.reasons
            if (
                t.early_stopping_patience
                and state.evals_since_best >= t.early_stopping_patience
                and (not patient or state.step * 2 >= s.horizon.total_steps)
            ):
                log.info(
                    "early stopping at step %d: no improvement in %d evaluations",
                    state.step,
                    state.evals_since_best,
                )
                break
    except KeyboardInterrupt:
        if recorder:
            recorder.close()
        if state.step > 0:
            snap = snapshot(s.model, s.optimizer)
            if main:
                save_checkpoint(ckpt / "last", snap, s.scheduler, state)
            raise TrainingInterrupted(
                f"interrupted at step {state.step}; saved {ckpt / 'last'} — continue with --resume"
            ) from None
        if main:
            shutil.rmtree(s.out, ignore_errors=True)
        raise TrainingInterrupted("interrupted before the first step; nothing saved") from None
    if recorder:
        recorder.close()
    return budget.report(state) if budget else None


def _evaluate(s: RunSetup, data: Encoded, callbacks: list[Any]) -> dict[str, Any]:
    def progress(n: int) -> None:
        fire(callbacks, "on_eval_progress", n, len(data))

    return s.task.evaluate(s.model, data, s.cfg.train.eval_batch_size, progress=progress)


def _finish(
    s: RunSetup,
    state: LoopState,
    train_seconds: float,
    examples: int,
    main: bool,
    budget: dict[str, Any] | None = None,
    test_metrics: bool = True,
    stopped: str | None = None,
) -> dict[str, Any]:
    """Restore the best weights, compute the final metrics and write the run's artifacts."""
    t, model = s.cfg.train, s.model
    ckpt = s.out / "checkpoints"
    if (ckpt / "best").is_dir():
        load_weights(ckpt / "best", model)
    temperature = None
    if t.temperature_scaling:  # calibrates scores on validation data; the arg-max is unchanged
        temperature = s.task.fit_temperature(model, s.splits.validation, t.eval_batch_size)
    final = {"validation": _evaluate(s, s.splits.validation, [])}
    if s.splits.test is not None and test_metrics:
        final["test"] = _evaluate(s, s.splits.test, [])
    final["train"] = {
        "steps": state.step,
        "best_step": state.best_step,
        "best_metric": {s.metric_for_best: state.best_metric},
        "seconds": round(train_seconds, 2),
        "examples_per_s": round(examples / max(train_seconds, 1e-9), 2),
        "device": str(s.device),
        "precision": s.precision.name,
        "threads": s.threads,
        "temperature": temperature,
        "recipe": s.recipe.as_dict(),
        "time_budget": budget,
        "stopped": stopped,  # why a callback ended the run early (RunControl), if one did
    }
    final["data"] = s.splits.summary
    if dist.world_size() > 1:
        final["train"]["world_size"] = dist.world_size()
    if s.fsdp:  # the artifacts are an ordinary model: rank 0 loads the gathered weights into one
        weights = dist.full_model_state(model)
        if main:
            model = s.build_model(torch.device("cpu"))
            model.load_state_dict(weights)
    if main:
        write_run_artifacts(
            s.out, model, s.tokenizer, s.task, final, t.seed, s.precision, s.threads
        )
        (s.out / INCOMPLETE).unlink(missing_ok=True)
    return final
