"""What every task provides. Tasks are composed, not subclassed: any object with these methods is a task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class Encoded:
    """A split turned into token ids and targets, ready for batching."""

    input_ids: list[list[int]]
    targets: list[Any]
    token_type_ids: list[list[int]] | None = None
    n_truncated: int = 0
    locations: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)


class Task(Protocol):
    """A task owns its preprocessing, head, batching, loss, metrics and prediction."""

    name: str
    primary_metric: str

    def build_model(self, model_dir: Path) -> torch.nn.Module:
        """The pretrained body with this task's head, loaded from a local directory."""
        ...

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One padded batch: model inputs plus ``targets``."""
        ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""
        ...

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Evaluation metrics over a whole split (logits and targets concatenated)."""
        ...

    def state(self) -> dict[str, Any]:
        """What is needed to rebuild the task from a run dir (label map, options)."""
        ...
