"""Training objectives that resist forgetting, as task wrappers around a classification task.

Each wrapper has the ``training_loss(model, batch)`` of a task, adding its penalty to the
task's own loss, so the training loop runs unchanged:

- ``EWCObjective``: elastic weight consolidation (Kirkpatrick et al. 2017, PNAS 114(13)):
  ``lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` with the diagonal Fisher ``F`` estimated on
  earlier data at the starting weights ``theta*``;
- ``LwFObjective``: learning without forgetting (Li & Hoiem 2016, ECCV): the old model's
  softened outputs on the new inputs are distilled into the new model's old-label logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from textloop.data.batching import sorted_batches
from textloop.tasks.base import Encoded


def estimate_fisher(
    model: torch.nn.Module,
    collate: Callable[[Encoded, list[int]], dict[str, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Encoded,
    batch_size: int = 8,
    new_rows: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters on labelled ``data``, mean 1.

    Squared gradients of each micro-batch's mean loss, times the batch size (an estimate of
    the per-example squared gradient that costs one backward per batch instead of per
    example), summed over batches and scaled to mean 1, so that ``ewc_lambda`` depends neither
    on the model's size nor on how many examples the Fisher was estimated on.

    ``new_rows`` maps a parameter to its first row that the earlier model did not have (a
    class-incremental head's new labels): those rows get Fisher 0, free to learn. Anchoring them too would hold every new label's logit at its starting value, since
    on earlier data the loss only pushes new labels down: on BBC News, EWC then learned 0-10%
    of each new topic (bench/continual.py).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()  # no dropout: the Fisher of the deterministic model
    for idx in sorted_batches(data.lengths, batch_size):
        batch = collate(data, idx)
        targets = batch.pop("targets")
        model.zero_grad(set_to_none=True)
        logits = model(**batch).logits.float()  # (B, C)
        loss(logits, targets).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 * len(idx)
    model.zero_grad(set_to_none=True)
    for n, first in (new_rows or {}).items():
        fisher[n][first:] = 0.0
    total = sum(float(f.sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    scale = count / total if total > 0 else 1.0
    return {n: f * scale for n, f in fisher.items()}


@dataclass
class EWCObjective:
    """The task's loss plus the EWC penalty around the starting weights."""

    task: Any
    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    strength: float

    @classmethod
    def build(
        cls,
        task: Any,
        model: torch.nn.Module,
        old_data: Encoded,
        strength: float,
        new_rows: Mapping[str, int] | None = None,
    ) -> EWCObjective:
        """Estimate the Fisher on ``old_data`` and anchor at the model's current weights
        (``new_rows``: see ``estimate_fisher``)."""
        fisher = estimate_fisher(model, task.collate, task.loss, old_data, new_rows=new_rows)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in fisher}
        return cls(task, fisher, anchor, strength)

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        terms = [
            (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
            for n, p in model.named_parameters()
            if n in self.fisher
        ]
        return 0.5 * self.strength * torch.stack(terms).sum()

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task.training_loss(model, batch) + self.penalty(model)


@dataclass
class LwFObjective:
    """The task's loss plus distillation of the old model on the old labels.

    ``teacher`` is the model before the update (frozen); the first ``n_old`` logits of the
    student are the old labels (a class-incremental head appends new rows after them).
    """

    task: Any
    teacher: torch.nn.Module
    n_old: int
    strength: float
    temperature: float

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("targets")
        logits = model(**batch).logits.float()  # (B, C_new)
        loss = self.task.loss(logits, targets)
        with torch.no_grad():
            self.teacher.eval()
            old = self.teacher(**batch).logits.float()  # (B, C_old)
        t = self.temperature
        distill = F.kl_div(
            F.log_softmax(logits[:, : self.n_old] / t, -1),
            F.log_softmax(old / t, -1),
            log_target=True,
            reduction="batchmean",
        )
        return loss + self.strength * t * t * distill  # T^2 keeps gradient scale (Hinton 2015)
