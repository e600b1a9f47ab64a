"""Stream records out of many files in bounded memory; a bad record is reported, never lost.

Inputs are files, directories, globs and ``builtin:NAME[:SPLIT]``, compressed or not (``.gz``,
``.bz2``, ``.zst``). Every record keeps its file id and line (or row) number. A record or file that
cannot be read becomes an *error record* carrying ``file:line`` and the reason, so the pipeline can
count and report it (``on_error: skip_records``, the default, for records; ``skip`` for records
and files that break off) -- or reading stops at it with a ``DataError`` (``on_error: fail``; a
file that breaks off stops the run unless ``on_error: skip``). Each file ends with one *trailer*
record holding its size, SHA-256 and counts (and where it broke off).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from textloop.data.prepare.formats import (
    FileFormatError,
    rows_builtin,
    rows_delimited,
    rows_json,
    rows_jsonl,
    rows_parquet,
    rows_txt,
)
from textloop.data.prepare.ranges import ReadTask, open_range
from textloop.data.readers import _SUFFIX_FORMAT
from textloop.errors import DataError

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
INPUT_FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "parquet")


def detect_format(path: str) -> str | None:
    """The format of a file from its suffix, looking through a compression suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None


def _walk(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def expand_inputs(inputs: list[str], fmt: str = "auto") -> tuple[list[str], list[str]]:
    """Resolve inputs into an ordered list of files (and the files ignored in directories).

    Each input's files are sorted; inputs keep the order given, so "first occurrence" in
    deduplication follows the order a user lists sources in.

    Raises:
        DataError: an input matches nothing, or names a file of unknown type.
    """
    files: dict[str, None] = {}
    ignored: list[str] = []
    for source in inputs:
        if source.startswith("builtin:"):
            from textloop.data.builtin import parse_builtin

            name, split = parse_builtin(source)
            files[f"builtin:{name}:{split}"] = None
            continue
        if any(ch in source for ch in "*?["):
            found = sorted(p for p in glob.iglob(source, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"no files match {source!r}")
        elif os.path.isdir(source):
            found = []
            for p in _walk(source):
                (found if fmt != "auto" or detect_format(p) else ignored).append(p)
            if not found:
                raise DataError(
                    f"directory {source} holds no readable files ({', '.join(INPUT_FORMATS)}, "
                    "optionally .gz/.bz2/.zst); set format to read other suffixes"
                )
        elif os.path.isfile(source):
            found = [source]
        else:
            raise DataError(f"input not found: {source}")
        for p in found:
            if fmt == "auto" and detect_format(p) is None:
                raise DataError(
                    f"{p}: unknown file type; use one of {', '.join(INPUT_FORMATS)} "
                    "(optionally .gz/.bz2/.zst) or set format"
                )
            files[p] = None
    return list(files), ignored


# encodings in which byte 0x0A is only ever "\n" (no multi-byte character contains it)
_SPLITTABLE_ENCODINGS = {"utf-8", "utf-8-sig", "ascii", "iso8859-1", "cp1252"}


def splittable(path: str, settings: dict[str, Any]) -> str | None:
    """How ``path`` can be read in ranges (ranges.py): ``"row_groups"`` for Parquet; ``"lines"``
    for an uncompressed jsonl file, or a txt file read a document per line, in an encoding where
    a newline byte is a newline; None otherwise (one task reads it whole)."""
    if path.startswith("builtin:") or Path(path).suffix.lower() in COMPRESSIONS:
        return None
    fmt = settings["format"] if settings["format"] != "auto" else detect_format(path)
    if fmt == "parquet":
        return "row_groups"
    if not (fmt == "jsonl" or (fmt == "txt" and settings["txt_mode"] == "line")):
        return None
    return "lines" if codecs.lookup(settings["encoding"]).name in _SPLITTABLE_ENCODINGS else None


def shard_files(files: list[str], num_shards: int, shard_index: int) -> list[int]:
    """Indices of the contiguous slice of ``files`` (balanced by bytes) one machine reads."""
    if num_shards == 1:
        return list(range(len(files)))
    sizes = [1 if f.startswith("builtin:") else max(os.path.getsize(f), 1) for f in files]
    total = sum(sizes)
    lo, hi = total * shard_index / num_shards, total * (shard_index + 1) / num_shards
    chosen, seen = [], 0
    for i, size in enumerate(sizes):
        middle = seen + size / 2  # a file belongs to the shard holding its midpoint
        if lo <= middle < hi:
            chosen.append(i)
        seen += size
    return chosen


def _open_binary(path: str) -> IO[bytes]:
    kind = COMPRESSIONS.get(Path(path).suffix.lower())
    if kind == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(path, "rb")
    if kind == "zstd":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 -- closed with the stream reader
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))  # type: ignore[arg-type]
    return open(path, "rb")


def _file_digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return os.path.getsize(path), h.hexdigest()


def _is_bad_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _BadRecord(Exception):
    """One record cannot be used; the reading goes on."""


def _missing_field(record: dict[str, Any], name: str, role: str) -> str:
    fields = [str(k) for k in record]
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no {role} field {name!r} (fields: {', '.join(fields[:20])}){hint}"


def _pick(record: dict[str, Any], settings: dict[str, Any]) -> tuple[str, str | None]:
    text_col, label_col = settings["text_column"], settings["label_column"]
    if text_col not in record:
        raise _BadRecord(_missing_field(record, text_col, "text"))
    text = record[text_col]
    if text is None:
        raise _BadRecord(f"null text in {text_col!r}")
    if not isinstance(text, str):
        raise _BadRecord(f"text in {text_col!r} is {type(text).__name__}, not a string")
    if _is_bad_unicode(text):
        raise _BadRecord(f"text is not valid {settings['encoding']} (undecodable bytes)")
    label = None
    if label_col:
        if label_col not in record:
            raise _BadRecord(_missing_field(record, label_col, "label"))
        value = record[label_col]
        if isinstance(value, (list, dict)):
            raise _BadRecord(
                f"label in {label_col!r} is a {type(value).__name__}; expected one value"
            )
        label = "" if value is None else str(value).strip()
        if not label:
            raise _BadRecord(f"empty label in {label_col!r}")
        if _is_bad_unicode(label):
            raise _BadRecord("label is not valid text (undecodable bytes)")
    return text, label


def _records(
    task: ReadTask, settings: dict[str, Any]
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    path = task.path
    if path.startswith("builtin:"):
        yield from rows_builtin(path)
        return
    fmt = settings["format"] if settings["format"] != "auto" else detect_format(path)
    if fmt == "parquet":  # a range of a Parquet file is a run of its row groups
        groups = None if task.end is None else range(task.start, task.end)
        yield from rows_parquet(path, settings, groups, task.first_line)
        return
    encoding = settings["encoding"]
    if task.end is None:
        binary = _open_binary(path)
    else:  # one byte range of a large file (ranges.py): its lines keep their numbers
        binary = open_range(path, task.start, task.end)
        if task.start > 0 and codecs.lookup(encoding).name == "utf-8-sig":
            encoding = "utf-8"  # a BOM can only open the file, not a range inside it
    with binary:
        stream = io.TextIOWrapper(binary, encoding=encoding, errors="surrogateescape", newline="")
        if fmt == "jsonl":
            yield from rows_jsonl(stream, task.first_line)
        elif fmt == "json":
            yield from rows_json(stream)
        elif fmt in ("csv", "tsv"):
            yield from rows_delimited(stream, "," if fmt == "csv" else "\t", path)
        else:
            yield from rows_txt(stream, settings["txt_mode"], task.first_line)


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, csv.Error, FileFormatError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    import pyarrow as pa

    errors.append(pa.ArrowException)
    return tuple(errors)


def record(
    file_id: int,
    row: int,
    text: str | None = None,
    label: str | None = None,
    error: str | None = None,
    meta: str | None = None,
    extra: str | None = None,
) -> dict[str, Any]:
    """One row of the ingest table (the schema ``INGEST_FEATURES`` describes)."""
    return {
        "text": text,
        "label": label,
        "_file": file_id,
        "_row": row,
        "_error": error,
        "_meta": meta,
        "_extra": extra,
    }


def _json_value(value: Any) -> Any:
    """A parquet value JSON cannot hold, as text: dates and times in ISO form, decimals and
    bytes as their ``str``."""
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)


def other_fields(rec: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """The record's fields other than the text and label, as JSON (kept in the output)."""
    own = (settings["text_column"], settings["label_column"])
    rest = {str(k): v for k, v in rec.items() if k not in own}
    return json.dumps(rest, ensure_ascii=False, default=_json_value) if rest else None


def generate_records(
    files: list[tuple[int, str]] | list[ReadTask], settings: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Yield every record of ``files`` in order, then one trailer per file or byte range.

    Args:
        files: ``ReadTask``s, or (file id, path) pairs for whole files; the id is the file's
            index in the whole input list. A file read in ranges has one trailer per range;
            ``summary.summarise`` joins them.
        settings: format, txt_mode, text_column, label_column, encoding, on_error.

    Raises:
        DataError: the first bad record when ``settings['on_error'] == 'fail'``; a file that
            breaks off unless ``settings['on_error'] == 'skip'``.
    """
    fail = settings["on_error"] == "fail"
    skip_files = settings["on_error"] == "skip"
    read_errors = _read_errors()
    for task in files:
        task = ReadTask(*task)
        file_id, path = task.file_id, task.path
        n_records = n_errors = 0
        last = task.first_line - 1
        broken_at: int | None = None
        builtin = path.startswith("builtin:")
        try:
            for row, rec in _records(task, settings):
                last = row
                try:
                    if isinstance(rec, str):
                        raise _BadRecord(rec)
                    text, label = _pick(rec, settings)
                except _BadRecord as exc:
                    if fail:
                        raise DataError(f"{path}:{row}: {exc} (on_error: fail)") from None
                    n_errors += 1
                    yield record(file_id, row, error=str(exc))
                    continue
                n_records += 1
                # a builtin's own columns are not the user's: only its text and label are kept
                extra = None if builtin else other_fields(rec, settings)
                yield record(file_id, row, text, label, extra=extra)
        except read_errors as exc:
            line = exc.line if isinstance(exc, FileFormatError) else last + 1
            what = exc if isinstance(exc, FileFormatError) else f"{type(exc).__name__}: {exc}"
            if not skip_files:
                raise DataError(
                    f"{path}: unreadable from line {line} on ({what}) after {n_records} "
                    "record(s): the file is truncated or corrupt — repair or replace it, or pass "
                    "--on-error skip to keep the records before the break "
                    f"(on_error: {settings['on_error']})"
                ) from None
            broken_at = line
            yield record(
                file_id,
                line,
                error=f"file breaks off here ({what}): the rest of the file is unreadable; "
                f"{n_records} record(s) were read from it",
            )
        # the file's size and digest: once per file, in its last range's trailer
        size, digest = (0, None) if builtin or not task.last else _file_digest(path)
        meta = {
            "bytes": size,
            "sha256": digest,
            "records": n_records,
            "errors": n_errors,
            "unreadable_from_line": broken_at,
        }
        yield record(file_id, 0, meta=json.dumps(meta))


def check_fields(files: list[str], settings: dict[str, Any]) -> None:
    """Fail fast when the first record of the first file lacks the text or label field.

    Raises:
        DataError: naming the file, the missing field, the fields found and the flag to set.
    """
    for path in files[:1]:
        fmt = settings["format"] if settings["format"] != "auto" else detect_format(path)
        if fmt == "txt" and not path.startswith("builtin:"):
            if settings["label_column"]:
                raise DataError(
                    f"{path}: txt files hold no labels; drop --label-column or use jsonl/csv"
                )
            return
        try:
            rows = _records(ReadTask(0, path), settings)
            first = next((r for _, r in rows if isinstance(r, dict)), None)
        except _read_errors():
            return  # reported with its line by the reading itself
        if first is None:
            return
        for name, flag in (
            (settings["text_column"], "--text-column"),
            (settings["label_column"], "--label-column"),
        ):
            if name and name not in first:
                raise DataError(
                    f"{path}: first record has {_missing_field(first, name, 'the')} — set {flag}"
                )
