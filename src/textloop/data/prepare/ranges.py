"""Read one large file as many ranges, each its own task.

A Parquet file is cut between row groups (from its footer; a range's first row number is the
rows of the groups before it). The rest of this docstring is about line files.

A jsonl file, or a txt file read a document per line, is cut at line starts into ranges of
about ``split_bytes``. A range's first line number comes from a scan that counts the line ends
before it, so every record keeps the line number the whole-file reader gives it, and a range's
reader sees exactly the lines the whole-file reader would: the ones that start inside it.

Line ends are the ones the readers' text stream splits on (``newline=""``): ``\\n``, ``\\r\\n``
and a lone ``\\r``. Cuts are made only just after a ``\\n``, which is always a line end and, in
the encodings allowed here, never part of a multi-byte character. Compressed files (not
seekable), csv (a quoted field may hold a newline), json and whole-file txt are never split.

Both engines read the same ranges: ``scan_span`` runs once per span, serially on this machine
or as Ray tasks, and ``split_tasks`` turns the scans into ``ReadTask``s.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import IO, NamedTuple

_CHUNK = 1 << 22  # bytes read at a time by the scan and the ranged reader


class ReadTask(NamedTuple):
    """One reading task: a whole file, or the byte range [start, end) of one."""

    file_id: int
    path: str
    start: int = 0  # [start, end): bytes of a line file, row groups of a Parquet file
    end: int | None = None  # None: to the end of the file (a whole file)
    first_line: int = 1  # line (Parquet: row) number of the range's first record
    part: int = 0  # the range's index in its file
    last: bool = True  # the file's last range: its trailer carries the file's size and digest


class Span(NamedTuple):
    """What the scan found for one cut of a file: the range's exact bounds and line ends (the
    rows, for a Parquet file's row groups)."""

    file_id: int
    part: int
    start: int
    end: int
    line_ends: int


def row_group_spans(file_id: int, path: str, split_bytes: int) -> list[Span]:
    """A Parquet file's row groups, in runs of about ``split_bytes`` (compressed) each."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    spans: list[Span] = []
    first = rows = size = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        rows += group.num_rows
        if size >= split_bytes or g == meta.num_row_groups - 1:
            spans.append(Span(file_id, len(spans), first, g + 1, rows))
            first, rows, size = g + 1, 0, 0
    return spans


def _line_start_at_or_after(f: IO[bytes], pos: int, size: int) -> int:
    """The first byte at or after ``pos`` that begins a line (just after a ``\\n``), or
    ``size`` when no line begins there."""
    if pos <= 0:
        return 0
    f.seek(pos - 1)
    offset = pos - 1
    while offset < size:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(chunk)
    return size


def _line_ends(data: bytes, after_cr: bool) -> int:
    """Line ends in ``data`` (``\\n``, ``\\r\\n``, lone ``\\r``); ``after_cr``: the byte before
    ``data`` was ``\\r`` (so a leading ``\\n`` ends no new line)."""
    n = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return n - 1 if after_cr and data[:1] == b"\n" else n


def scan_span(file_id: int, path: str, part: int, lo: int, hi: int) -> Span:
    """The range of lines starting in [lo, hi) and the line ends in it."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = _line_start_at_or_after(f, lo, size)
        end = _line_start_at_or_after(f, hi, size) if hi < size else size
        ends, after_cr = 0, False
        f.seek(start)
        left = max(end - start, 0)
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            ends += _line_ends(chunk, after_cr)
            after_cr, left = chunk.endswith(b"\r"), left - len(chunk)
    return Span(file_id, part, start, end, ends)


def cuts(size: int, split_bytes: int) -> list[tuple[int, int]]:
    """The [lo, hi) byte cuts of a file of ``size`` bytes, about ``split_bytes`` each."""
    n = max(1, -(-size // split_bytes))
    return [(size * k // n, size * (k + 1) // n) for k in range(n)]


def split_tasks(
    tasks: Iterable[ReadTask],
    splittable: Callable[[str], str | None],
    split_bytes: int | None,
    scan: Callable[[list[tuple[int, str, int, int, int]]], list[Span]],
) -> list[ReadTask]:
    """``tasks`` with every splittable file larger than ``split_bytes`` replaced by its ranges.

    Args:
        splittable: how a path can be read in ranges: ``"lines"``, ``"row_groups"`` or None
            (``sources.splittable``).
        scan: runs ``scan_span`` over a list of its arguments and returns the spans (serially
            here, or as Ray tasks), in any order.
    """
    tasks = list(tasks)
    if split_bytes is None:
        return tasks
    kinds = {
        t.file_id: (t, kind, size)
        for t in tasks
        if (kind := splittable(t.path)) and (size := os.path.getsize(t.path)) > split_bytes
    }
    jobs = [
        (t.file_id, t.path, part, lo, hi)
        for t, kind, size in kinds.values()
        if kind == "lines"
        for part, (lo, hi) in enumerate(cuts(size, split_bytes))
    ]
    found = list(scan(jobs)) if jobs else []
    for t, kind, _ in kinds.values():
        if kind == "row_groups":  # the footer says where: no scan
            found += row_group_spans(t.file_id, t.path, split_bytes)
    spans: dict[int, list[Span]] = {}
    for span in sorted(found, key=lambda s: (s.file_id, s.part)):
        if span.end > span.start:  # a line longer than a cut leaves the next cut empty
            spans.setdefault(span.file_id, []).append(span)
    out: list[ReadTask] = []
    for t in tasks:
        if len(spans.get(t.file_id, [])) < 2:  # not split (or one row group): read it whole
            out.append(t)
            continue
        line = 1
        ranges = spans[t.file_id]
        for k, span in enumerate(ranges):
            last = k == len(ranges) - 1
            out.append(ReadTask(t.file_id, t.path, span.start, span.end, line, k, last))
            line += span.line_ends
    return out


def serial_scan(jobs: list[tuple[int, str, int, int, int]]) -> list[Span]:
    """``scan_span`` over ``jobs`` on this process."""
    return [scan_span(*job) for job in jobs]


class _Window(io.RawIOBase):
    """The bytes [start, end) of a file, as a raw stream."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 -- closed with the stream
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self._left)]
        n = self._f.readinto(view)
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_range(path: str, start: int, end: int) -> IO[bytes]:
    """A buffered binary stream over the bytes [start, end) of ``path``."""
    return io.BufferedReader(_Window(path, start, end), buffer_size=_CHUNK)
