"""``train``: one call from a config to a finished run directory.

Everything that can fail on input (config, model, every data file) is checked before the run
directory is touched. During training the directory holds ``.incomplete`` and
``checkpoints/last`` so a killed run can be resumed; the final artifacts are written each to a
temporary path and renamed into place.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from textloop.artifacts.rundir import INCOMPLETE, check_replaceable, is_run_dir
from textloop.config import RunConfig, config_to_yaml, load_config, read_yaml
from textloop.data.batching import bucketed_batches
from textloop.errors import CheckpointError, ConfigError, ModelError, RunDirError, TextloopError
from textloop.evaluation.report import write_report
from textloop.fileio import atomic_dir, write_text_atomic
from textloop.models.resolve import resolve_model
from textloop.tasks import task_module
from textloop.tasks.base import Encoded, Task
from textloop.training import distributed as dist
from textloop.training.callbacks import fire
from textloop.training.checkpoint import (
    copy_weights,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    snapshot,
)
from textloop.training.loop import (
    LoopState,
    restore_rng,
    seed_everything,
    steps_per_epoch,
    train_steps,
)
from textloop.training.optim import build_optimizer, build_scheduler, make_embeddings_sparse
from textloop.training.precision import PrecisionChoice, choose_precision, read_cpu_info

log = logging.getLogger("textloop")

_VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "scikit-learn",
    "numpy",
    "textloop",
)


# keys a resumed run may change: where and how it runs, not what it trains (a checkpoint is the
# same file under one process, DDP or FSDP; a moved run folder is the same run)
_FREE_ON_RESUME = ("output", "overwrite", "train.distributed")


class TrainingInterrupted(TextloopError):
    """Ctrl-C during training; ``checkpoints/last`` holds the state to resume from."""

    exit_code = 130


def environment(seed: int, precision: PrecisionChoice | str, threads: int) -> dict[str, Any]:
    """Package versions, seed, precision (and why) and hardware, as written to env.json."""
    if isinstance(precision, str):
        precision = PrecisionChoice(precision, "requested", None)
    cpu = read_cpu_info()
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "seed": seed,
        **precision.as_dict(),
        "threads": threads,
        "cpu": cpu.model if cpu.model != "unknown" else platform.processor() or platform.machine(),
        "cpu_flags": list(cpu.flags),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(_config_diff(va, vb, f"{prefix}{key}."))
        elif va != vb and f"{prefix}{key}" not in _FREE_ON_RESUME:
            diffs.append(f"{prefix}{key} {va!r} -> {vb!r}")
    return diffs


def _check_output(out: Path, cfg: RunConfig, resume: bool) -> bool:
    """Decide fresh start vs resume; refuse to clobber a different run or anything that is not a
    textloop run (never replaced, even with --overwrite). Returns True to resume."""
    last = out / "checkpoints" / "last"
    if resume:
        if not (last / "state.json").is_file() or not (out / "config.yaml").is_file():
            raise CheckpointError(
                f"nothing to resume in {out}: no checkpoints/last (start without --resume)"
            )
        if not (out / INCOMPLETE).exists():
            raise CheckpointError(
                f"{out} holds a finished run; nothing to resume (use --overwrite to retrain)"
            )
        saved = read_yaml(out / "config.yaml")
        diffs = _config_diff(saved, cfg.model_dump(mode="json"))
        if diffs:
            raise ConfigError(
                f"--resume with settings that differ from {out}/config.yaml: {'; '.join(diffs)}; "
                "drop those flags (--resume continues with the saved config)"
            )
        return True
    try:
        check_replaceable(out, cfg.overwrite)
    except RunDirError as exc:
        if not is_run_dir(out) or cfg.overwrite:
            raise
        # a run without --overwrite: say which run it is
        what = (
            "an unfinished run (pass --resume to continue it)"
            if (out / INCOMPLETE).exists()
            else "a run"
        )
        diffs = _config_diff(read_yaml(out / "config.yaml"), cfg.model_dump(mode="json"))
        if diffs:
            what += f" with a different config ({'; '.join(diffs[:3])})"
        raise RunDirError(
            f"output directory {out} already holds {what}; pass --overwrite to replace it"
        ) from exc
    return False


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {model_dir}: {exc}") from None


def _set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def train(
    config: RunConfig | str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Fine-tune a model as ``config`` says and write a run directory.

    Args:
        config: a ``RunConfig`` or the path of a YAML run file.
        resume: continue the unfinished run in ``config.output`` from ``checkpoints/last``.
        callbacks: objects with any of the events in ``textloop.training.callbacks.EVENTS``.

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
    resuming = _check_output(out, cfg, resume)
    t = cfg.train
    module = task_module(cfg.task)
    metric_for_best = t.metric_for_best or module.METRIC_NAMES[0]
    if metric_for_best not in ("loss", *module.METRIC_NAMES):
        raise ConfigError(
            f"train.metric_for_best: {metric_for_best!r} is not a {cfg.task} metric; use one of: "
            + ", ".join(("loss", *module.METRIC_NAMES))
        )
    model_dir = resolve_model(cfg.model)
    tokenizer = _load_tokenizer(model_dir)
    splits = module.build_splits(cfg, tokenizer)
    task: Task = splits.task
    if t.temperature_scaling and not hasattr(task, "fit_temperature"):
        raise ConfigError(f"train.temperature_scaling: the {cfg.task} task has no scores to scale")

    threads = _set_threads(t.threads)
    device = dist.init()  # under torchrun: join the process group; cuda:LOCAL_RANK on GPUs
    precision = choose_precision(t.precision, device)
    autocast = precision.dtype
    log.info("precision: %s (%s)", precision.name, precision.reason)
    seed_everything(t.seed)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    fsdp = t.distributed == "fsdp" and dist.is_distributed()
    lora = cfg.lora  # adapters: on by default where the task module says so (decoders)
    use_lora = lora.enabled if lora.enabled is not None else getattr(module, "LORA_DEFAULT", False)

    def build_model(on: torch.device) -> torch.nn.Module:
        try:
            model = task.build_model(model_dir).to(on)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load model from {model_dir}: {exc}") from None
        if use_lora:
            from textloop.models.lora import apply_lora

            fresh_heads = [name for name in task.head_prefixes if hasattr(model, name)]
            model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.targets, fresh_heads)
        return model

    # FSDP moves each layer to the device as it shards it: the full model never sits on one GPU
    model = build_model(torch.device("cpu") if fsdp else device)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(  # type: ignore[operator]
            gradient_checkpointing_kwargs={"use_reentrant": False}  # works with DDP
        )
    if t.embedding_update == "lazy" and not dist.is_distributed():  # DDP reduces dense grads
        make_embeddings_sparse(model)
    # DDP wraps `model`; FSDP shards it in place (train_model is model), before the optimizer
    # is built on its sharded parameters
    train_model = dist.wrap_model(model, device, t.distributed)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.head_lr, task.head_prefixes)
    if t.max_steps is not None:
        total_steps, epochs = t.max_steps, sys.maxsize  # the loop stops at max_steps
    else:  # a stream (mlm / clm) counts its blocks in one tokenizing pass
        n_batches = -(-len(splits.stream or splits.train) // t.batch_size)
        total_steps = t.epochs * steps_per_epoch(n_batches, t.grad_accum_steps)
        epochs = t.epochs
    scheduler = build_scheduler(
        optimizer, round(t.warmup_ratio * total_steps), total_steps, t.scheduler
    )

    # -- the run dir: only now, with all input checked ------------------------------------
    ckpt = out / "checkpoints"
    dist.barrier()  # every process has checked the output dir before rank 0 changes it
    main = dist.is_main_process()  # under torchrun only rank 0 writes files
    if resuming:
        state = load_checkpoint(ckpt / "last", model, optimizer, scheduler)
        restore_rng(state.rng)
        if main:
            _truncate_log(out / "log.jsonl", state.step)
    else:
        if main:
            if is_run_dir(out) and cfg.overwrite:  # checked by _check_output: only a run
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            (out / INCOMPLETE).write_text("training in progress; resume with --resume\n")
            write_text_atomic(out / "config.yaml", config_to_yaml(cfg))
        state = LoopState()

    def batches_for_epoch(state: LoopState) -> Iterable[Sequence[Any]]:
        if splits.stream is not None:  # mlm / clm: packed blocks read from disk, from the cursor
            return splits.stream.micro_batches(state.epoch, t.batch_size, state.data_cursor)
        batches = bucketed_batches(
            splits.train.lengths, t.batch_size, t.bucket_batches, t.seed * 1_000_003 + state.epoch
        )
        return batches[state.batches_done_in_epoch :]

    def collate(items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if splits.stream is not None:
            return {k: v.to(device) for k, v in splits.stream.collate(items).items()}
        return {k: v.to(device) for k, v in task.collate(splits.train, items).items()}

    callbacks = list(callbacks) if main else []
    progress_hooks = [cb.on_eval_progress for cb in callbacks if hasattr(cb, "on_eval_progress")]
    reports_progress = "progress" in inspect.signature(task.evaluate).parameters

    def evaluate(data: Encoded) -> dict[str, Any]:
        if not (progress_hooks and reports_progress):
            return task.evaluate(model, data, t.eval_batch_size)

        def progress(n: int) -> None:
            for hook in progress_hooks:
                hook(n, len(data))

        return task.evaluate(model, data, t.eval_batch_size, progress=progress)  # type: ignore[call-arg]

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return task.training_loss(train_model, batch)

    higher = metric_for_best != "loss" and metric_for_best not in getattr(
        module, "LOWER_IS_BETTER", ()
    )
    fire(
        callbacks,
        "on_train_start",
        {"total_steps": total_steps, "start_step": state.step, "summary": splits.summary},
    )
    started = time.perf_counter()
    examples_at_start = state.examples_seen
    log_file = (out / "log.jsonl" if main else Path(os.devnull)).open("a", encoding="utf-8")
    try:
        for info in train_steps(
            train_model,
            optimizer,
            scheduler,
            batches_for_epoch=batches_for_epoch,
            collate=collate,
            loss_fn=loss_fn,
            evaluate=lambda: evaluate(splits.validation),
            state=state,
            epochs=epochs,
            max_steps=t.max_steps,
            grad_accum_steps=t.grad_accum_steps,
            grad_clip=t.grad_clip,
            eval_every_steps=t.eval_every_steps,
            metric_for_best=metric_for_best,
            higher_is_better=higher,
            log_every_steps=t.log_every_steps,
            autocast_dtype=autocast,
            loss_tokens=getattr(task, "loss_tokens", None),
        ):
            if info.kind == "step":
                if info.loss is not None:
                    log_file.write(
                        json.dumps(
                            {
                                "kind": "train",
                                "step": info.step,
                                "epoch": round(info.epoch, 4),
                                "loss": info.loss,
                                "lr": info.lr,
                                "grad_norm": info.grad_norm,
                                "examples_per_s": info.examples / max(info.seconds, 1e-9),
                            }
                        )
                        + "\n"
                    )
                fire(callbacks, "on_step_end", info)
                continue
            metrics = {
                k: v for k, v in (info.metrics or {}).items() if not isinstance(v, (dict, list))
            }
            log_file.write(
                json.dumps(
                    {"kind": "eval", "step": info.step, "epoch": round(info.epoch, 4), **metrics}
                )
                + "\n"
            )
            log_file.flush()
            snap = snapshot(model, optimizer)  # every rank: FSDP gathers the shards to rank 0
            if main:
                save_checkpoint(ckpt / "last", snap, scheduler, state)
                if info.is_best:
                    copy_weights(ckpt / "last", ckpt / "best")
            fire(callbacks, "on_checkpoint", ckpt / "last")
            fire(callbacks, "on_eval_end", info)
            if t.early_stopping_patience and state.evals_since_best >= t.early_stopping_patience:
                log.info(
                    "early stopping at step %d: no improvement in %d evaluations",
                    state.step,
                    state.evals_since_best,
                )
                break
    except KeyboardInterrupt:
        log_file.close()
        if state.step > 0:
            snap = snapshot(model, optimizer)
            if main:
                save_checkpoint(ckpt / "last", snap, scheduler, state)
            raise TrainingInterrupted(
                f"interrupted at step {state.step}; saved {ckpt / 'last'} — continue with --resume"
            ) from None
        if main:
            shutil.rmtree(out, ignore_errors=True)
        raise TrainingInterrupted("interrupted before the first step; nothing saved") from None
    log_file.close()
    train_seconds = time.perf_counter() - started
    dist.barrier()  # rank 0 has written the last checkpoint

    # -- finish: best weights, final metrics, artifacts ------------------------------------
    if (ckpt / "best").is_dir():
        load_weights(ckpt / "best", model)
    temperature = None
    if t.temperature_scaling:  # calibrates scores on validation data; the arg-max is unchanged
        temperature = task.fit_temperature(model, splits.validation, t.eval_batch_size)  # type: ignore[attr-defined]
    final = {"validation": evaluate(splits.validation)}
    if splits.test is not None:
        final["test"] = evaluate(splits.test)
    final["train"] = {
        "steps": state.step,
        "best_step": state.best_step,
        "best_metric": {metric_for_best: state.best_metric},
        "seconds": round(train_seconds, 2),
        "examples_per_s": round(
            (state.examples_seen - examples_at_start) / max(train_seconds, 1e-9), 2
        ),
        "device": str(device),
        "precision": precision.name,
        "threads": threads,
        "temperature": temperature,
    }
    final["data"] = splits.summary
    if dist.world_size() > 1:
        final["train"]["world_size"] = dist.world_size()
    if fsdp:  # the artifacts are an ordinary model: rank 0 loads the gathered weights into one
        weights = dist.full_model_state(model)
        if main:
            model = build_model(torch.device("cpu"))
            model.load_state_dict(weights)
    if main:
        _write_artifacts(out, model, tokenizer, task, final, t.seed, precision, threads)
        (out / INCOMPLETE).unlink(missing_ok=True)
    fire(callbacks, "on_train_end", final)
    dist.barrier()  # the run dir is complete before any process reads it

    from textloop.runs import load_run

    return load_run(out)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be replayed)."""
    if not path.is_file():
        return
    kept = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    write_text_atomic(path, "".join(ln + "\n" for ln in kept))


def _write_artifacts(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    metrics: dict[str, Any],
    seed: int,
    precision: PrecisionChoice,
    threads: int,
) -> None:
    from textloop.models.lora import is_lora, merge_lora, save_adapter

    if is_lora(model):  # adapter/ alone (small, peft format); model/ holds the merged weights
        with atomic_dir(out / "adapter") as tmp:
            save_adapter(model, tmp)
        model = merge_lora(model)
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(emb, torch.nn.Embedding):
        emb.sparse = False  # a training-time choice; the saved model is a plain checkpoint
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        carried = getattr(task, "carried", None)  # checkpoint tensors the LM head model dropped
        if carried:
            from textloop.tasks.pretrain import save_carried

            save_carried(tmp, carried)
        tokenizer.save_pretrained(tmp)
    write_text_atomic(out / "labels.json", json.dumps(task.state(), indent=2, ensure_ascii=False))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    write_text_atomic(out / "env.json", json.dumps(environment(seed, precision, threads), indent=2))
    write_report(out, metrics, list(task.state().get("labels", [])))
    section = getattr(task, "report_section", None)  # a task's own part of the report
    if callable(section):
        report = out / "report.md"
        write_text_atomic(report, report.read_text(encoding="utf-8") + "\n" + section(metrics))
