"""``engine: ray``: the output written by the workers, not the driver.

After the global stages the driver knows, for every record, whether it is kept and its split
(numpy arrays, 2 bytes a record). What is left is the costly part of writing: reading the kept
records' text and other columns, turning them into the output table and compressing Parquet.
Both run as Ray tasks over the memory-mapped pieces the workers wrote (``ray_engine``):

- the schema of the user's other columns: one task per piece scans its kept records
  (``extras.scan_extras``) and the driver joins the parts in input order (``merge_extras``),
  which gives the schema one scan in order gives;
- the shards: ``finalize.shard_plan`` names every shard and its records (the next
  ``shard_rows`` kept records of its split in input order), and one task per shard writes it
  with ``finalize.write_shard``, the local engine's own writer. A task that Ray retries after
  losing its worker rewrites the same file (written to a temp name, then renamed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from textloop.data.prepare.extras import Extras, merge_extras, scan_extras
from textloop.data.prepare.finalize import OWN_COLUMNS, ShardSpec, ShardWriter, write_shard
from textloop.data.prepare.ray_dedup import Pieces
from textloop.data.prepare.ray_engine import ipc_read, task_errors_unwrapped


def piece_rows(pieces: Pieces) -> Callable[[np.ndarray], pa.Table]:
    """Records by global row number (sorted) from the pieces, each piece opened once."""
    offsets = np.asarray(pieces.offsets, dtype=np.int64)
    opened: dict[int, pa.Table] = {}

    def rows(idx: np.ndarray) -> pa.Table:
        which = np.searchsorted(offsets, idx, side="right") - 1
        parts = []
        for k in np.unique(which).tolist():
            if k not in opened:
                opened[k] = ipc_read(pieces.paths[k])
            local = idx[which == k] - offsets[k]
            parts.append(opened[k].take(pa.array(local)))
        return pa.concat_tables(parts)

    return rows


def _scan_piece(path: str, status: np.ndarray) -> tuple[Extras, float]:
    started = time.perf_counter()
    found = scan_extras(ipc_read(path).select(["_extra"]), status, OWN_COLUMNS)
    return found, time.perf_counter() - started


def _write_one(pieces: Pieces, idx: np.ndarray, spec: ShardSpec, path: str) -> float:
    started = time.perf_counter()
    write_shard(piece_rows(pieces), idx, spec, Path(path))
    return time.perf_counter() - started


def _record(
    stats: dict[str, dict[str, Any]], name: str, started: float, task_s: list[float]
) -> None:
    stats[name] = {
        "wall_s": time.perf_counter() - started,
        "task_s": sum(task_s),
        "tasks": len(task_s),
    }


def extras_on_ray(pieces: Pieces, status: np.ndarray, stats: dict[str, dict[str, Any]]) -> Extras:
    """The user's other columns of the kept records, scanned piece by piece on the workers;
    the step's wall and task seconds go to ``stats["extras"]``."""
    import ray

    started = time.perf_counter()
    scan = ray.remote(max_retries=3)(_scan_piece)
    bounds = [*pieces.offsets, pieces.rows]
    refs = [
        scan.remote(path, status[lo:hi])
        for path, lo, hi in zip(pieces.paths, bounds[:-1], bounds[1:])
    ]
    found = _get(refs)
    _record(stats, "extras", started, [s for _, s in found])
    return merge_extras([e for e, _ in found])


def shard_writer(pieces: Pieces, stats: dict[str, dict[str, Any]]) -> ShardWriter:
    """A ``finalize.ShardWriter`` that writes every shard in its own Ray task; the step's wall
    and task seconds go to ``stats["write"]``."""

    def write(jobs: list[tuple[str, np.ndarray]], spec: ShardSpec, out: Path) -> None:
        import ray

        started = time.perf_counter()
        one = ray.remote(max_retries=3)(_write_one)
        shared, spec_ref = ray.put(pieces), ray.put(spec)
        seconds = _get([one.remote(shared, idx, spec_ref, str(out / rel)) for rel, idx in jobs])
        _record(stats, "write", started, seconds)

    return write


def _get(refs: list[Any]) -> list[Any]:
    """``ray.get``, with a TextloopError a task raised re-raised as itself."""
    import ray

    with task_errors_unwrapped():
        return list(ray.get(refs))
