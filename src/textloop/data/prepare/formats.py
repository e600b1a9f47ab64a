"""Record readers of each input format (txt, jsonl, json, csv/tsv, parquet, builtin:): each\nyields (line or row number, record) pairs, a string standing for a record that could not be\nparsed; a file that breaks off raises FileBreak."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from textloop.data.readers import CSV_FIELD_LIMIT, check_header

_PARQUET_BATCH = 1024  # rows per parquet batch read


def rows_txt(
    stream: IO[str], mode: str, first_line: int = 1
) -> Iterator[tuple[int, dict[str, Any]]]:
    if mode == "file":
        yield 1, {"text": stream.read().lstrip("\ufeff")}
        return
    for n, line in enumerate(stream, start=first_line):
        line = line.rstrip("\r\n")
        if n == 1:
            line = line.lstrip("\ufeff")
        if line.strip():  # a blank line separates documents; it is not one
            yield n, {"text": line}


def rows_jsonl(stream: IO[str], first_line: int = 1) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for n, line in enumerate(stream, start=first_line):
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, f"invalid JSON ({exc.msg}, column {exc.colno})"
            continue
        yield (
            n,
            record
            if isinstance(record, dict)
            else f"expected a JSON object, got {type(record).__name__}",
        )


def rows_json(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # a .json file is one document, read whole: keep big data in jsonl
    try:
        data = json.loads(stream.read().lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise FileFormatError(exc.lineno, f"invalid JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise FileFormatError(1, "expected a JSON list of records (objects)")
    for n, record in enumerate(data, start=1):
        yield n, record if isinstance(record, dict) else f"record {n} is not a JSON object"


def rows_delimited(
    stream: IO[str], delimiter: str, path: str
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # documents can exceed csv's 128 KiB default field limit
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(stream, delimiter=delimiter)
    if reader.fieldnames is not None:
        check_header(path, reader.fieldnames)
    for row in reader:
        if None in row:
            yield (
                reader.line_num,
                f"more fields than the header has ({len(reader.fieldnames or [])})",
            )
        else:
            yield reader.line_num, row


def rows_parquet(
    path: str, settings: dict[str, Any], groups: range | None = None, first_row: int = 1
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """The rows of ``path`` (of its row ``groups`` only, numbered from ``first_row``)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    wanted = [c for c in (settings["text_column"], settings["label_column"]) if c and c in names]
    n = first_row - 1
    batches = pf.iter_batches(
        batch_size=_PARQUET_BATCH, row_groups=None if groups is None else list(groups)
    )
    for batch in batches:  # every column is kept
        for record in batch.to_pylist():
            n += 1
            yield n, record if wanted else {k: record[k] for k in list(record)[:20]}


class FileFormatError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def rows_builtin(source: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    from textloop.data.builtin import BUILTIN_DATASETS, parse_builtin, read_builtin

    name, _ = parse_builtin(source)
    facts = BUILTIN_DATASETS[name]
    for n, row in enumerate(read_builtin(source).rows, start=1):
        # the builtin's own column names, reachable under the default names too
        yield n, {"text": row[facts["text_column"]], "label": row[facts["label_column"]], **row}
