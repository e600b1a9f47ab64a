"""``Table``: rows read from one source, each with its location (the readers' common result).

Its own module so the readers that produce tables (files, builtin datasets, prepared corpora)
and the dispatcher that picks one (``readers.read_table``) import it from below, in one direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """Rows read from one source, each with its location for error messages."""

    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows[:1000]:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def __len__(self) -> int:
        return len(self.rows)
