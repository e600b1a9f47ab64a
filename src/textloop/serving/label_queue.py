"""The texts a labelling session walks through, read from a queue file.

A queue is what ``textloop select`` writes (JSONL rows with ``id``, ``text`` and optionally
``predictions``: ``[{"label", "score"}, ...]``, ``score``, ``reason`` and, for texts taken from
the traffic log, ``prediction_id``), or any file the readers
take (CSV, JSONL, JSON, Parquet, plain text) with a text column. Rows without predictions get
them from the run when they are shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from textloop.artifacts.feedback import text_hash
from textloop.data.readers import read_table
from textloop.data.visible import has_visible_text
from textloop.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class QueueItem:
    """One text to label, with what the queue knew about it."""

    id: str
    text: str
    predictions: list[dict[str, Any]] | None = None  # best first: {"label", "score"}
    score: float | None = None  # the selection score (uncertainty, margin, ...)
    reason: str | None = None  # why it was chosen
    prediction_id: str | None = None  # the served prediction it came from (--from-traffic)
    hash: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.hash = text_hash(self.text)


def _predictions(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A row's ``predictions`` as a best-first list of ``{"label", "score"}``, or None."""
    if value is None:
        return None
    if isinstance(value, dict) and "label" in value:  # one prediction, as `textloop predict`
        value = value.get("top_k") or [{"label": value["label"], "score": value.get("score")}]
    if not isinstance(value, list) or not all(
        isinstance(p, dict) and isinstance(p.get("label"), str) for p in value
    ):
        raise DataError(
            f'{where}: \'predictions\' must be a list of {{"label": ..., "score": ...}}, '
            f"found {str(value)[:80]!r}"
        )
    out = [{"label": p["label"], "score": _number(p.get("score"))} for p in value]
    return sorted(out, key=lambda p: -(p["score"] or 0.0))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_queue(source: str, text_column: str = "text") -> list[QueueItem]:
    """The items of a queue file, in file order.

    Args:
        source: a file, directory or glob the readers take (``textloop select``'s JSONL).
        text_column: the column holding the text.

    Rows without visible text (blank lines) are left out, with a warning.

    Raises:
        DataError: no such column, malformed predictions, or no text at all.
    """
    table = read_table(source)
    if len(table) and text_column not in table.columns:
        raise DataError(
            f"{source}: no column {text_column!r} to label; columns are: "
            f"{', '.join(map(str, table.columns))} — set --text-column"
        )
    items, empty = [], []
    for row, where in zip(table.rows, table.locations):
        text = row.get(text_column)
        if not isinstance(text, str) or not has_visible_text(text):
            empty.append(where)  # a blank line of a text file, an empty cell: nothing to label
            continue
        rid = row.get("id")
        items.append(
            QueueItem(
                id=str(rid) if rid is not None else where,
                text=text,
                predictions=_predictions(row.get("predictions"), where),
                score=_number(row.get("score")),
                reason=str(row["reason"]) if row.get("reason") is not None else None,
                prediction_id=str(pid) if (pid := row.get("prediction_id")) else None,
            )
        )
    if empty:
        log.warning("%d rows without text left out of the queue (first: %s)", len(empty), empty[0])
    if not items:
        raise DataError(f"{source}: the queue holds no text to label")
    return items
