"""Everything a run needs, built and checked before its folder is touched: the config's
task, data splits, tokenizer, model (LoRA, DDP / FSDP), the recipe's settings, optimizer and
schedule (``setup_run``). Nothing here writes a file."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textloop.config import RunConfig
from textloop.errors import ConfigError, ModelError
from textloop.models.resolve import resolve_model
from textloop.tasks import task_module
from textloop.tasks.base import Splits, Task
from textloop.tasks.classification.task import ClassificationTask
from textloop.training import distributed as dist
from textloop.training.loop import (
    seed_everything,
    steps_per_epoch,
)
from textloop.training.optim import (
    Horizon,
    build_optimizer,
    build_scheduler,
    make_embeddings_sparse,
)
from textloop.training.precision import PrecisionChoice, choose_precision
from textloop.training.recipe import (
    RECIPE_FIELDS,
    DataShape,
    Recipe,
    choose_recipe,
    decide,
    few_shot_settings,
    few_shot_steps,
    model_width,
)

log = logging.getLogger("textloop")


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


@dataclass
class RunSetup:
    """Everything a run needs, built and checked before its folder is touched."""

    cfg: RunConfig
    out: Path
    task: Task
    splits: Splits
    tokenizer: Any
    model: torch.nn.Module  # the model the artifacts are saved from
    train_model: torch.nn.Module  # the same model, wrapped for DDP (or sharded by FSDP)
    build_model: Callable[[torch.device], torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    precision: PrecisionChoice
    threads: int
    horizon: Horizon
    epochs: int
    recipe: Recipe
    metric_for_best: str
    higher_is_better: bool
    fsdp: bool


def setup_run(cfg: RunConfig, out: Path) -> RunSetup:
    """Read and encode the data, build the model, optimizer and schedule; write nothing."""
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
    if t.temperature_scaling and not task.can_scale_temperature:
        raise ConfigError(f"train.temperature_scaling: the {cfg.task} task has no scores to scale")

    threads = _set_threads(t.threads)
    device = dist.init()  # under torchrun: join the process group; cuda:LOCAL_RANK on GPUs
    precision = choose_precision(t.precision, device)
    log.info("precision: %s (%s)", precision.name, precision.reason)
    seed_everything(t.seed)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    method, method_why = _choose_method(cfg, splits)
    fsdp = t.distributed == "fsdp" and dist.is_distributed()
    lora = cfg.lora  # adapters: on by default where the task module says so (decoders)
    use_lora = lora.enabled if lora.enabled is not None else module.LORA_DEFAULT

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
    recipe = _decide_recipe(cfg, splits, model, method, method_why)
    cfg = cfg.model_copy(update={"train": t.model_copy(update=recipe.settings)})
    t = cfg.train
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(  # type: ignore[operator]
            gradient_checkpointing_kwargs={"use_reentrant": False}  # works with DDP
        )
    if t.embedding_update == "lazy" and not dist.is_distributed():  # DDP reduces dense grads
        make_embeddings_sparse(model)
    # DDP wraps `model`; FSDP shards it in place (train_model is model), before the optimizer
    # is built on its sharded parameters
    train_model = dist.wrap_model(model, device, t.distributed)
    assert t.lr is not None and t.epochs is not None and t.batch_size is not None  # the recipe's
    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.head_lr, task.head_prefixes)
    if t.max_steps is not None:
        horizon, epochs = Horizon(t.max_steps, t.max_steps), sys.maxsize  # stops at max_steps
    else:  # a stream (mlm / clm) counts its blocks in one tokenizing pass
        n_batches = -(-len(splits.stream or splits.train) // t.batch_size)
        if method == "few-shot":  # a pass is over sentence pairs, not examples
            n_batches = few_shot_steps(len(splits.train), t.batch_size, t.few_shot_loss)
        horizon = Horizon(t.epochs * steps_per_epoch(n_batches, t.grad_accum_steps))
        epochs = t.epochs
    scheduler = build_scheduler(
        optimizer, round(t.warmup_ratio * horizon.total_steps), horizon, t.scheduler
    )
    return RunSetup(
        cfg=cfg,
        out=out,
        task=task,
        splits=splits,
        tokenizer=tokenizer,
        model=model,
        train_model=train_model,
        build_model=build_model,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        precision=precision,
        threads=threads,
        horizon=horizon,
        epochs=epochs,
        recipe=recipe,
        metric_for_best=metric_for_best,
        higher_is_better=metric_for_best != "loss"
        and metric_for_best not in module.LOWER_IS_BETTER,
        fsdp=fsdp,
    )


def _choose_method(cfg: RunConfig, splits: Splits) -> tuple[str, str | None]:
    """``train.recipe`` resolved (auto -> default or few-shot) and why; a few-shot task is switched
    to the mean-pooled head its contrastive training uses (before the model is built)."""
    t, task = cfg.train, splits.task
    single = isinstance(task, ClassificationTask) and not task.multi_label and not task.pair
    per_class, largest = None, 0
    if isinstance(task, ClassificationTask):
        counts = Counter(str(y) for y in splits.train.targets)
        per_class = sum(counts.values()) / max(len(counts), 1)
        largest = max(counts.values(), default=0)
    method, why = choose_recipe(t.recipe, per_class, single, largest)
    if method != "few-shot":
        return method, why
    if not single:
        raise ConfigError(
            f"train.recipe: few-shot trains single-label, single-text classifiers; this run is "
            f"{cfg.task}{' (multi-label)' if cfg.data.multi_label else ''}"
            f"{' with text pairs' if cfg.data.text_pair_column else ''} — use train.recipe: default"
        )
    if dist.is_distributed() or t.max_steps is not None:
        raise ConfigError(
            "train.recipe: few-shot runs in one process for its planned pairs; drop torchrun "
            "and train.max_steps (or use train.recipe: default)"
        )
    assert isinstance(task, ClassificationTask)
    task.pooling = "mean"
    return method, why


def _decide_recipe(
    cfg: RunConfig, splits: Splits, model: torch.nn.Module, method: str, method_why: str | None
) -> Recipe:
    """The recipe's values for the train keys the config left unset (see training/recipe.py)."""
    t = cfg.train
    labels = splits.summary.get("labels")
    shape = DataShape(
        task=cfg.task,
        n_train=len(splits.stream) if splits.stream is not None else len(splits.train),
        n_classes=len(labels) if cfg.task == "classification" and labels else None,
        hidden_size=model_width(model),
        grad_accum_steps=t.grad_accum_steps,
        n_validation=len(splits.validation),
    )
    values = t.model_dump()
    given = {k: values[k] for k in RECIPE_FIELDS}
    if method == "few-shot":
        recipe = few_shot_settings(given, shape.n_train, t.few_shot_loss)
    else:
        recipe = decide(shape, given, {k for k, v in given.items() if v is not None})
    recipe.settings["recipe"] = method
    if method_why is None:
        recipe.user_set.insert(0, "recipe")
    else:  # the method first: it explains the settings after it
        recipe.reasons = {"recipe": method_why, **recipe.reasons}
    for key, why in recipe.reasons.items():
        log.info("recipe: train.%s = %s (%s)", key, recipe.settings[key], why)
    return recipe
