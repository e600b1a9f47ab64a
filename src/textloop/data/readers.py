"""Read labelled tables from csv, tsv, jsonl, json, parquet and txt files (optionally .gz).

A source is a file, a directory (every readable file under it, sorted), a glob, or builtin:NAME.
Rows keep where they came from (``file:line``) so every data error can name the row.

Text is decoded as UTF-8 with ``surrogateescape``: undecodable bytes survive as lone surrogates,
so a bad row is reported (or dropped) by row number instead of failing the whole file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path

from textloop.data.table import Table
from textloop.errors import DataError

__all__ = ["FORMATS", "Table", "detect_format", "expand_source", "read_table"]

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "txt")
_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
}


def detect_format(path: Path) -> str | None:
    """The format of a file from its suffix (``.gz`` looked through), or None if unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None


def expand_source(source: str) -> list[Path]:
    """Files named by a path, directory or glob, sorted; a clear error when none match."""
    path = Path(source)
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {source!r}")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and detect_format(p))
        if not files:
            kinds = ", ".join(FORMATS)
            raise DataError(f"directory {source} holds no readable files ({kinds}, optionally .gz)")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data file not found: {source}")
    for f in files:
        if detect_format(f) is None:
            raise DataError(
                f"{f}: unknown file type; use one of {', '.join(FORMATS)} (optionally .gz)"
            )
    return files


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


# csv's default field limit is 128 KiB; a document can be longer. 2**31 - 1 fits a C long
# everywhere (csv raises OverflowError above the platform's long)
CSV_FIELD_LIMIT = 2**31 - 1


def check_header(path: Path | str, fieldnames: Sequence[str]) -> None:
    """Refuse a header that names a column twice (DictReader would keep only the last one).

    Raises:
        DataError: naming the file and the duplicated column(s).
    """
    twice = sorted({name for name in fieldnames if fieldnames.count(name) > 1})
    if twice:
        raise DataError(
            f"{path}: column {', '.join(map(repr, twice))} appears more than once in the header "
            f"({', '.join(fieldnames)}); rename the duplicates so each column has one name"
        )


def _read_delimited(path: Path, delimiter: str, table: Table) -> None:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    try:
        if reader.fieldnames is None:
            return
        check_header(path, reader.fieldnames)
        for row in reader:
            # line_num counts physical lines, so multi-line quoted fields point at the row's end
            if None in row:
                raise DataError(
                    f"{path}:{reader.line_num}: more fields than the header has "
                    f"({len(reader.fieldnames)}); check the delimiter or quoting"
                )
            table.rows.append(row)
            table.locations.append(f"{path}:{reader.line_num}")
    except csv.Error as exc:
        raise DataError(
            f"{path}:{reader.line_num}: cannot parse the row ({exc}); check its quoting"
        ) from None


def _read_jsonl(path: Path, table: Table) -> None:
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}:{n}: expected a JSON object per line, got {type(record).__name__}"
            )
        table.rows.append(record)
        table.locations.append(f"{path}:{n}")


def _read_json(path: Path, table: Table) -> None:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of records (objects)")
    table.rows.extend(data)
    table.locations.extend(f"{path}:record {i}" for i in range(1, len(data) + 1))


def _read_parquet(path: Path, table: Table) -> None:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read parquet ({exc})") from None
    table.rows.extend(records)
    table.locations.extend(f"{path}:row {i}" for i in range(1, len(records) + 1))


def _read_txt(path: Path, table: Table) -> None:
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        table.rows.append({"text": line})
        table.locations.append(f"{path}:{n}")


def read_table(source: str) -> Table:
    """Read every row of a source into memory.

    Args:
        source: a file, directory, glob, ``builtin:NAME`` (see ``textloop.data.builtin``), or a
            corpus written by ``textloop prepare``: ``DIR`` (its train split) or ``DIR:SPLIT``.

    Returns:
        The rows with their locations.

    Raises:
        DataError: missing files, unknown types, corrupt or malformed content, or no rows.
    """
    if source.startswith("builtin:"):
        from textloop.data.builtin import read_builtin

        return read_builtin(source)
    from textloop.data.prepare.corpus import read_prepared

    prepared = read_prepared(source)
    if prepared is not None:
        return prepared
    table = Table(source=source)
    for path in expand_source(source):
        fmt = detect_format(path)
        if fmt == "csv":
            _read_delimited(path, ",", table)
        elif fmt == "tsv":
            _read_delimited(path, "\t", table)
        elif fmt == "jsonl":
            _read_jsonl(path, table)
        elif fmt == "json":
            _read_json(path, table)
        elif fmt == "parquet":
            _read_parquet(path, table)
        else:
            _read_txt(path, table)
    if not table.rows:
        raise DataError(f"{source}: no rows found")
    return table
