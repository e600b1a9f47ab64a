"""The training loop: plain PyTorch, in order, in one place.

``train_steps`` is a generator. It runs warmup + decay, gradient accumulation, clipping, the
optimizer step and evaluation, and yields a ``StepInfo`` after every optimizer step and every
evaluation. Whoever iterates decides what to do with them: log, checkpoint, stop early (just stop
iterating). ``LoopState`` holds the data position and everything else resume needs, so a run
that is stopped after step k and resumed from its checkpoint replays steps k+1.. exactly.

Under torchrun every process walks the same global micro-batches and computes its share of each
(``distributed.rank_share``); DDP or FSDP reduces gradients once per step (``gradient_sync`` skips
it on the accumulation micro-batches). In one process both are no-ops.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Literal

import numpy as np
import torch

from textloop.training.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    gradient_sync,
    rank_share,
    world_size,
)
from textloop.training.optim import Horizon, clip_gradients


@dataclass
class LoopState:
    """Progress that a checkpoint stores: position in the data, counters, best metric."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # global micro-batches of the current epoch already consumed
    data_cursor: dict[str, Any] | None = None  # a stream's position after them (mlm / clm)
    examples_seen: int = 0
    best_metric: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    stop_at: int | None = None  # a time budget's fitted end (kept so a resume keeps the schedule)
    recipe: dict[str, Any] | None = None  # what the default recipe chose and why (resume keeps it)
    rng: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("rng")
        return out


@dataclass
class StepInfo:
    """What the loop reports after an optimizer step (kind='step') or an evaluation (kind='eval')."""

    kind: Literal["step", "eval"]
    step: int
    epoch: float
    lr: float
    loss: float | None = None  # mean training loss since the last report (None between reports)
    grad_norm: float | None = None
    examples: int = 0  # examples in this step
    tokens: int = 0  # real (non-pad) tokens in this step
    padded_tokens: int = 0  # batch positions computed, padding included
    seconds: float = 0.0  # wall time of this step
    metrics: dict[str, Any] | None = None
    is_best: bool = False


def capture_rng() -> dict[str, Any]:
    """Every RNG state training touches (dropout, shuffles), to restore on resume."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(n_batches: int, grad_accum_steps: int) -> int:
    return math.ceil(n_batches / grad_accum_steps)


def _accumulation_groups(
    batches: Iterable[Sequence[Any]], size: int
) -> Iterator[tuple[list[Sequence[Any]], bool]]:
    """Consecutive groups of ``size`` micro-batches, each flagged True if it ends the epoch."""
    it = iter(batches)
    group = list(islice(it, size))
    while group:
        following = list(islice(it, size))  # one group of look-ahead tells where the epoch ends
        yield group, not following
        group = following


def _better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    batches_for_epoch: Callable[[LoopState], Iterable[Sequence[Any]]],
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    evaluate: Callable[[], dict[str, Any]],
    state: LoopState,
    epochs: int,
    max_steps: int | Horizon | None,
    grad_accum_steps: int,
    grad_clip: float,
    eval_every_steps: int,
    metric_for_best: str,
    higher_is_better: bool,
    log_every_steps: int,
    autocast_dtype: torch.dtype | None = None,
    loss_tokens: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> Iterator[StepInfo]:
    """Train until ``epochs`` (or ``max_steps``) are done, yielding after each step and eval.

    ``max_steps`` may be a ``Horizon`` whose ``stop_at`` the caller moves while iterating (a time
    budget): the loop evaluates and stops once the step count reaches it.

    ``batches_for_epoch`` gives the global micro-batches of ``state.epoch`` that remain after
    the position ``state`` holds (example indices, or a stream's items). ``collate`` builds a
    batch (model inputs + targets) from this process's share of one; ``loss_fn`` runs the model
    on it and returns the mean loss. ``evaluate`` returns a metrics dict holding
    ``metric_for_best``; it must not consume RNG.

    Without ``loss_tokens`` each micro-batch's mean loss is weighted by its share of examples.
    With it (token-level losses: MLM, causal LM), ``loss_tokens(batch)`` counts the tokens a
    batch's mean is over, and each mean is weighted by its share of all the tokens of the step,
    counted over every micro-batch and process: the step's gradient is that of the mean over all
    its tokens, whatever the number of processes and accumulation micro-batches (a mean of
    per-batch means would weight a token in a lightly masked batch more).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = next(model.parameters()).device.type
    autocast = (
        torch.autocast(device_type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    loss_sum = torch.zeros(())  # summed on the host side lazily: one sync per report, not per step
    loss_count = 0

    def run_eval() -> StepInfo:
        metrics = evaluate()
        value = float(metrics[metric_for_best])
        is_best = _better(value, state.best_metric, higher_is_better)
        if is_best:
            state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
        else:
            state.evals_since_best += 1
        lr = float(scheduler.get_last_lr()[0])
        return StepInfo("eval", state.step, state.epoch, lr, metrics=metrics, is_best=is_best)

    while state.epoch < epochs:
        batches = batches_for_epoch(state)
        n_batches = state.batches_done_in_epoch + len(batches) if isinstance(batches, Sized) else 0
        for group, ends_epoch in _accumulation_groups(batches, grad_accum_steps):
            t0 = time.perf_counter()
            model.train()
            n_examples = n_tokens = n_padded = 0
            shares = [rank_share(global_batch) for global_batch in group]  # all in one process
            micro = [collate(items) for items, _ in shares]
            weights = [w for _, w in shares]
            if loss_tokens is not None:  # each mean weighted by its share of the step's tokens
                # one device-to-host copy for the whole group; a stand-in share (weight 0) has none
                found = torch.stack([loss_tokens(b) for b in micro]).tolist()
                counts = [c if w > 0 else 0 for c, w in zip(found, weights)]
                total = float(all_reduce_sum(torch.tensor(sum(counts), dtype=torch.float64)))
                scale = world_size() * len(group)  # DDP averages over ranks, the loop over micro
                weights = [c * scale / max(total, 1.0) for c in counts]
            for i, (global_batch, batch, weight) in enumerate(zip(group, micro, weights)):
                n_tokens += int(batch["attention_mask"].sum())
                n_padded += batch["attention_mask"].numel()
                with gradient_sync(model, enabled=i == len(group) - 1):
                    with autocast:
                        loss = loss_fn(batch)
                    (loss * weight / len(group)).backward()
                loss_sum = loss_sum + loss.detach() * weight
                loss_count += 1
                n_examples += len(global_batch)
            grad_norm = clip_gradients(params, grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.examples_seen += n_examples
            state.batches_done_in_epoch += len(group)
            state.data_cursor = getattr(group[-1], "cursor", None)
            if ends_epoch:
                state.epoch += 1
                state.batches_done_in_epoch, state.data_cursor = 0, None
            state.rng = capture_rng()

            report = state.step % log_every_steps == 0
            info = StepInfo(
                "step",
                state.step,
                state.epoch + (state.batches_done_in_epoch / n_batches if n_batches else 0.0),
                float(scheduler.get_last_lr()[0]),
                examples=n_examples,
                tokens=n_tokens,
                padded_tokens=n_padded,
                seconds=time.perf_counter() - t0,
                grad_norm=float(grad_norm) if report else None,
            )
            if report:
                info.loss = float(all_reduce_mean(loss_sum)) / loss_count  # over all processes
                loss_sum, loss_count = torch.zeros(()), 0
            yield info

            limit = max_steps.stop_at if isinstance(max_steps, Horizon) else max_steps
            done = limit is not None and state.step >= limit
            if done or (eval_every_steps and state.step % eval_every_steps == 0):
                yield run_eval()
            if done:
                return
        if not eval_every_steps:
            yield run_eval()
    if eval_every_steps and state.step % eval_every_steps:
        yield run_eval()  # the last steps since the previous evaluation
