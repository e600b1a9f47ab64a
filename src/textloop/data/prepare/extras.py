"""The user's other columns of a corpus: every input field besides the text and the label is\nkept, in first-seen order, with one Arrow type per column (text where records disagree)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from textloop.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Extras:
    """The user's other columns: names in first-seen order, one Arrow type each; a column whose
    records disagree on the type (``1`` here, ``"a1"`` there) is kept as text (``as_text``)."""

    schema: pa.Schema
    as_text: list[str] = field(default_factory=list)


def extra_rows(column: pa.ChunkedArray | pa.Array) -> list[dict[str, Any]]:
    return [json.loads(x) if x is not None else {} for x in column.to_pylist()]


def extra_columns(table: pa.Table, status: np.ndarray, reserved: tuple[str, ...]) -> Extras:
    """The schema of the kept records' other columns, read batch by batch.

    Raises:
        DataError: a column takes the name of one of textloop's own (``reserved``).
    """
    return merge_extras([scan_extras(table, status, reserved)])


def scan_extras(table: pa.Table, status: np.ndarray, reserved: tuple[str, ...]) -> Extras:
    """``extra_columns`` of one part of a corpus, before ``merge_extras`` joins the parts.

    Raises:
        DataError: a column takes the name of one of textloop's own (``reserved``).
    """
    schema = pa.schema([])
    as_text: set[str] = set()
    offset = 0
    for batch in table.select(["_extra"]).to_batches(max_chunksize=10_000):
        kept = np.flatnonzero(status[offset : offset + batch.num_rows] == 0)
        offset += batch.num_rows
        rows = extra_rows(batch.column(0).take(pa.array(kept, type=pa.int64())))
        names = list(dict.fromkeys(k for r in rows for k in r))
        fields = []
        for name in names:
            if name in reserved:
                raise DataError(
                    f"input column {name!r} has the name of a column textloop adds to the "
                    f"corpus ({', '.join(reserved)}); rename or drop it in the input"
                )
            try:
                fields.append(pa.field(name, pa.array([r.get(name) for r in rows]).type))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                as_text.add(name)
                fields.append(pa.field(name, pa.string()))
        schema, clashes = _unify(schema, fields)
        as_text |= clashes
    return Extras(schema, sorted(as_text))


def _unify(schema: pa.Schema, fields: list[pa.Field]) -> tuple[pa.Schema, set[str]]:
    """``schema`` with ``fields`` added in order (types promoted), and the names that clash."""
    clashes = set()
    for f in fields:
        try:
            schema = pa.unify_schemas([schema, pa.schema([f])], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            clashes.add(f.name)
    return schema, clashes


def merge_extras(parts: list[Extras]) -> Extras:
    """The columns of the parts of a corpus in order: one type each, text where parts disagree."""
    schema = pa.schema([])
    as_text: set[str] = set()
    for part in parts:
        schema, clashes = _unify(schema, list(part.schema))
        as_text |= clashes | set(part.as_text)
    if as_text:
        schema = pa.schema(
            [pa.field(f.name, pa.string()) if f.name in as_text else f for f in schema]
        )
        log.warning(
            "column(s) %s hold values of different types across records; written as text "
            "(JSON for non-strings)",
            ", ".join(sorted(as_text)),
        )
    return Extras(schema, sorted(as_text))
