"""What every task provides. Tasks are composed, not subclassed: any object with these methods is a task.

A task module (``textloop.tasks.<name>``) exposes two functions besides its task class:

- ``build_splits(cfg, tokenizer) -> Splits``: read, validate and encode the data a run config
  names (all problems raised as ``DataError`` before anything is trained);
- ``task_from_state(state, tokenizer) -> Task``: rebuild the task of a finished run from the
  ``labels.json`` it wrote (``Task.state()``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class Encoded:
    """A split turned into token ids and targets, ready for batching.

    ``extra`` carries whatever else a task needs per example (word ids, offsets, gold answers).
    """

    input_ids: list[list[int]]
    targets: list[Any]
    token_type_ids: list[list[int]] | None = None
    n_truncated: int = 0
    locations: list[str] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)


class Stream(Protocol):
    """Training data read from disk as it is consumed (mlm / clm: packed token blocks).

    ``micro_batches`` yields global micro-batches from a data position (``cursor``, None at the
    start of an epoch); each carries ``.cursor``, the position right after it, which the loop
    stores in ``LoopState.data_cursor`` for exact resume.
    """

    def micro_batches(
        self, epoch: int, batch_size: int, cursor: dict[str, Any] | None
    ) -> Iterator[Sequence[Any]]: ...

    def collate(self, items: Sequence[Any]) -> dict[str, Any]: ...

    def __len__(self) -> int: ...


def pad_inputs(data: Encoded, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for the examples at ``indices``, right-padded to the longest of them."""
    from textloop.data.batching import pad_batch

    types = [data.token_type_ids[i] for i in indices] if data.token_type_ids else None
    return pad_batch([data.input_ids[i] for i in indices], pad_id, types)


@dataclass
class Splits:
    """A task with its encoded train / validation / (test) splits and a data summary.

    A streaming task leaves ``train`` empty and sets ``stream`` instead.
    """

    task: Task
    train: Encoded
    validation: Encoded
    test: Encoded | None
    summary: dict[str, Any] = field(default_factory=dict)
    stream: Stream | None = None


class Task(Protocol):
    """A task owns its preprocessing, head, batching, loss, metrics and prediction."""

    name: str
    tokenizer: Any

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Validation metrics that may pick the best checkpoint (besides 'loss')."""
        ...

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the freshly initialised head (may get ``head_lr``)."""
        ...

    def build_model(self, model_dir: Path) -> torch.nn.Module:
        """The pretrained body with a fresh head for this task, loaded from a local directory."""
        ...

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        """A fine-tuned model saved by a run (head included)."""
        ...

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One padded batch: model inputs plus ``targets``."""
        ...

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch (the batch holds ``targets``; the model is in train mode)."""
        ...

    def evaluate(self, model: torch.nn.Module, data: Encoded, batch_size: int) -> dict[str, Any]:
        """Metrics (with 'loss') over a whole labelled split; must not consume RNG."""
        ...

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        """Read and encode a labelled file for evaluation; ``columns`` overrides data config keys."""
        ...

    def predict(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Task-appropriate predictions for raw inputs."""
        ...

    def state(self) -> dict[str, Any]:
        """What is needed to rebuild the task from a run dir (label map, options)."""
        ...
