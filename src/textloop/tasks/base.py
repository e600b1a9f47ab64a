"""The contract between the training driver and a task: everything the driver calls is declared here.

A task module (``textloop.tasks.<name>``) satisfies ``TaskModule``: three constants and two
functions besides its task class:

- ``METRIC_NAMES``: validation metrics that may pick the best checkpoint, the default first;
- ``LOWER_IS_BETTER``: those of them where lower is better (perplexity);
- ``LORA_DEFAULT``: whether the task trains LoRA adapters when ``lora.enabled`` is unset;
- ``build_splits(cfg, tokenizer) -> Splits``: read, validate and encode the data a run config
  names (all problems raised as ``DataError`` before anything is trained);
- ``task_from_state(state, tokenizer) -> Task``: rebuild the task of a finished run from the
  ``labels.json`` it wrote (``Task.state()``).

A task class names ``Task`` as its base to take the defaults of the optional hooks (token-level
loss weighting, temperature scaling, extra files, a report section); the required methods have
no default. The driver calls only what this module declares: it never probes a task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

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
    """A task owns its preprocessing, head, batching, loss, metrics and prediction.

    Required: the methods without a body below. Optional hooks, with the default a task
    inherits by naming ``Task`` as its base: ``token_weighted`` / ``loss_tokens``,
    ``can_scale_temperature`` / ``fit_temperature``, ``save_extras``, ``report_section``.
    """

    name: str
    tokenizer: Any
    # token-level losses (MLM, causal LM, NER): the driver weights each micro-batch's mean loss
    # by its share of the step's tokens (``loss_tokens``) instead of its share of examples
    token_weighted: ClassVar[bool] = False
    # whether ``fit_temperature`` calibrates this task's scores (train.temperature_scaling)
    can_scale_temperature: ClassVar[bool] = False

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

    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Metrics (with 'loss') over a whole labelled split; must not consume RNG.

        ``progress(n)`` is called with the examples each batch finished, where the task reports
        progress (a task may ignore it).
        """
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

    # ---- optional hooks, with their defaults -------------------------------------------------
    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The units a batch's mean loss is over; the driver weights by them only where
        ``token_weighted`` (default: the batch's examples, i.e. plain per-example weighting)."""
        return torch.tensor(len(batch["targets"]))

    def fit_temperature(self, model: torch.nn.Module, data: Encoded, batch_size: int) -> float:
        """Fit one temperature on ``data``; called only where ``can_scale_temperature``
        (default: 1.0, the identity)."""
        return 1.0

    def save_extras(self, model_dir: Path) -> None:
        """Add task-specific files to a saved model folder (default: nothing)."""
        return None

    def report_section(self, metrics: dict[str, Any]) -> str:
        """The task's own Markdown section of report.md (default: none)."""
        return ""


def eval_batches(
    task: Task,
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor | None]]:
    """Every example of ``data`` once, for inference, in batches of similar length.

    Puts the model in eval mode, then yields ``(indices, inputs, targets)`` per batch: the
    model inputs on the model's device and the batch's targets (None when unlabelled), also
    on that device. ``progress(n)`` hears each batch's size once the caller has used it. The
    caller holds ``torch.no_grad`` and puts rows back in input order with ``indices``.
    """
    from textloop.data.batching import sorted_batches

    model.eval()
    device = next(model.parameters()).device
    for idx in sorted_batches(data.lengths, batch_size):
        batch = {k: v.to(device) for k, v in task.collate(data, idx).items()}
        targets = batch.pop("targets", None)
        yield idx, batch, targets
        if progress is not None:
            progress(len(idx))


class TaskModule(Protocol):
    """What ``textloop.tasks.task_module(name)`` returns: see this module's docstring."""

    METRIC_NAMES: tuple[str, ...]
    LOWER_IS_BETTER: tuple[str, ...]
    LORA_DEFAULT: bool

    def build_splits(self, cfg: Any, tokenizer: Any) -> Splits: ...

    def task_from_state(self, state: dict[str, Any], tokenizer: Any) -> Task: ...
