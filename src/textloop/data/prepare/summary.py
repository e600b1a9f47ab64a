"""The clean phase's summary, from the cleaned table's columns: counts per stage, examples, the
input files' entries (one per file, joined from its ranges' trailers), errors and the length
histogram. Both engines call ``summarise``: the local engine on its cleaned table, the Ray engine
on the report columns its workers wrote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from textloop.data.prepare.clean import CHANGE_STAGES, DROP_STAGES
from textloop.data.prepare.config import PrepareConfig

# _drop codes written by the clean map; 0 keeps the record
READ_ERROR, TRAILER = 1, 2
DROP_CODES = {name: 3 + i for i, name in enumerate(DROP_STAGES)}
LENGTH_BINS = np.unique(np.round(np.logspace(0, 7, 57)).astype(np.int64))  # 1 .. 10M chars


def _first(mask: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:k]]


def _join_ranges(whole: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a later range's trailer to its file's entry: counts add up, the first break stands,
    and the size and digest come from the last range (the others carry none)."""
    whole["records"] += part["records"]
    whole["errors"] += part["errors"]
    if whole["unreadable_from_line"] is None:
        whole["unreadable_from_line"] = part["unreadable_from_line"]
    if part["sha256"] is not None:
        whole["bytes"], whole["sha256"] = part["bytes"], part["sha256"]


def summarise(
    table: Any,
    raw_text_of: Callable[[int], str | None],
    cfg: PrepareConfig,
    files: list[str],
    ignored: list[str],
    workdir: Path,
) -> dict[str, Any]:
    """Counts, examples, file table and errors of the clean phase, from the table's columns.

    Args:
        table: every row read, cleaned (``clean_batch``'s columns), in input order.
        raw_text_of: the text of row i as read, before cleaning (for the report's examples).
    """
    drop = table.column("_drop").to_numpy()
    changed = table.column("_changed").to_numpy()
    chars_in = table.column("_chars_in").to_numpy()
    real = drop != TRAILER
    read_ok = real & (drop != READ_ERROR)
    k = cfg.examples_per_stage
    clean_text = table.column("text")
    file_col = table.column("_file").to_numpy()
    row_col = table.column("_row").to_numpy()

    def loc(i: int) -> str:
        return f"{files[file_col[i]]}:{row_col[i]}"

    meta_col = table.column("_meta")
    inputs: dict[int, dict[str, Any]] = {}
    breaks = 0  # each range that broke off left one error row for its unreadable rest
    for i in np.flatnonzero(drop == TRAILER):
        meta = json.loads(meta_col[int(i)].as_py())
        breaks += meta["unreadable_from_line"] is not None
        file_id = int(file_col[i])
        if file_id in inputs:  # a later range of a file read in ranges (ranges.py)
            _join_ranges(inputs[file_id], meta)
        else:
            inputs[file_id] = {"id": file_id, "path": files[file_id], **meta}
    # a file that broke off leaves one error row for its unreadable rest: not a record
    broken = [
        {"path": f["path"], "from_line": f["unreadable_from_line"], "records_read": f["records"]}
        for f in inputs.values()
        if f.get("unreadable_from_line") is not None
    ]
    examples: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {
        "read": int(real.sum()) - breaks,
        "read_errors": int((drop == READ_ERROR).sum()) - breaks,
    }
    for bit, name in enumerate(CHANGE_STAGES):
        hit = read_ok & ((changed & (1 << bit)) != 0)
        counts[name] = int(hit.sum())
        examples[name] = [
            {"location": loc(i), "before": raw_text_of(i), "after": clean_text[i].as_py()}
            for i in _first(hit & (drop == 0), k)
        ]
    for name, code in DROP_CODES.items():
        hit = drop == code
        counts[name] = int(hit.sum())
        examples[name] = [{"location": loc(i), "text": raw_text_of(i)} for i in _first(hit, k)]
    counts["clean_out"] = int((drop == 0).sum())

    errors_path = workdir / "errors.jsonl"
    err_idx = np.flatnonzero(drop == READ_ERROR)
    error_col = table.column("_error")
    first_errors: list[dict[str, Any]] = []
    with errors_path.open("w", encoding="utf-8") as f:
        for i in err_idx:
            entry = {"location": loc(int(i)), "error": error_col[int(i)].as_py()}
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            if len(first_errors) < 100:
                first_errors.append(entry)

    hist, _ = np.histogram(chars_in[read_ok], bins=LENGTH_BINS)
    return {
        "shard_index": cfg.shard_index,
        "num_shards": cfg.num_shards,
        "all_files": files,
        "files": list(inputs.values()),
        "ignored_files": ignored[:100],
        "n_ignored_files": len(ignored),
        "counts": counts,
        "examples": examples,
        "errors": first_errors,
        "unreadable_files": broken,
        "errors_file": str(errors_path),
        "input_chars_hist": hist.tolist(),
    }
