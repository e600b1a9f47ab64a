"""Pick the columns a task needs from a table, checking every row before anything is trained."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from textloop.data.table import Table
from textloop.errors import DataError

_SHOWN_ROWS = 5


@dataclass
class Selected:
    """Rows reduced to the needed columns, plus the rows dropped and why."""

    values: dict[str, list[Any]]
    locations: list[str]
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.locations)


def _column_error(table: Table, role: str, name: str, flag: str) -> DataError:
    columns = table.columns
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DataError(
        f"column {name!r} not found in {table.source}{hint}; columns are: "
        f"{', '.join(columns)} — set {flag}"
    )


def _is_bad_text(value: Any) -> str | None:
    if value is None:
        return "empty"
    if not isinstance(value, str):
        return None if isinstance(value, (int, float)) else "not text"
    if not value.strip():
        return "empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    return None


def _rows_text(locations: list[str]) -> str:
    shown = ", ".join(locations[:_SHOWN_ROWS])
    more = f" and {len(locations) - _SHOWN_ROWS} more" if len(locations) > _SHOWN_ROWS else ""
    return shown + more


def select_columns(
    table: Table,
    text_columns: dict[str, tuple[str, str]],
    other_columns: dict[str, tuple[str, str]],
    drop_invalid: bool,
) -> Selected:
    """Take the named columns from every row, validating text cells.

    Args:
        table: rows read by ``read_table``.
        text_columns: role -> (column name, config key/flag to change it); cells must be
            non-empty UTF-8 text.
        other_columns: role -> (column name, flag); cells must be present and non-empty.
        drop_invalid: drop bad rows (recorded in ``dropped``) instead of raising.

    Raises:
        DataError: a column is missing (the columns found are listed), or rows are empty or not
            UTF-8 and ``drop_invalid`` is off (the rows are named).
    """
    for role, (name, flag) in {**text_columns, **other_columns}.items():
        if not any(name in row for row in table.rows):
            raise _column_error(table, role, name, flag)
    values: dict[str, list[Any]] = {role: [] for role in {**text_columns, **other_columns}}
    locations: list[str] = []
    bad: dict[str, list[str]] = {}
    for row, loc in zip(table.rows, table.locations):
        problem = None
        for name, _ in text_columns.values():
            problem = _is_bad_text(row.get(name))
            if problem:
                problem = f"{problem} {name!r}"
                break
        if problem is None:
            for name, _ in other_columns.values():
                cell = row.get(name)
                if cell is None or (isinstance(cell, str) and not cell.strip()):
                    problem = f"empty {name!r}"
                    break
        if problem:
            bad.setdefault(problem, []).append(loc)
            continue
        for role, (name, _) in {**text_columns, **other_columns}.items():
            values[role].append(row[name])
        locations.append(loc)
    if bad and not drop_invalid:
        worst = max(bad, key=lambda k: len(bad[k]))
        total = sum(len(v) for v in bad.values())
        raise DataError(
            f"{table.source}: {total} row(s) with {worst} text: {_rows_text(bad[worst])}; "
            "fix them or pass --drop-invalid-rows (data.drop_invalid_rows=true) to drop them"
        )
    if not locations:
        raise DataError(f"{table.source}: no usable rows left after dropping invalid ones")
    return Selected(values=values, locations=locations, dropped=bad)


def subset(sel: Selected, idx: list[int]) -> Selected:
    """The rows of ``sel`` at ``idx``, in that order."""
    return Selected(
        values={k: [v[i] for i in idx] for k, v in sel.values.items()},
        locations=[sel.locations[i] for i in idx],
        dropped=sel.dropped,
    )
