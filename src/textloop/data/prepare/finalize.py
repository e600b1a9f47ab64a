"""Global decisions over the cleaned records of every shard, then the split Parquet shards.

Order: label conflicts, exact duplicates, near-duplicates, rare classes, split assignment,
leakage check. Each step reads whole columns (8 bytes per record) from memory-mapped Arrow and
marks records; texts are only touched to verify near-duplicate candidates and to write the output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from textloop.data.prepare.config import SPLIT_NAMES, PrepareConfig
from textloop.data.prepare.dedup import DuplicateFinder, LocalFinder, clusters
from textloop.data.prepare.extras import (
    Extras,
    extra_columns,
    extra_rows,
)
from textloop.data.prepare.fingerprint import build_representations
from textloop.data.prepare.splits import assign_splits, cross_split_pairs, rare_classes
from textloop.data.prepare.summary import LENGTH_BINS

log = logging.getLogger(__name__)

# status codes of the global stages; 0 keeps the record
FINAL_STAGES = ("label_conflict", "exact_duplicate", "near_duplicate", "rare_class", "leakage")
_CODE = {name: i + 1 for i, name in enumerate(FINAL_STAGES)}
_CLUSTERS_SHOWN = 5


@dataclass
class Outcome:
    """What the global stages decided, for the manifest and the report."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    clusters: dict[str, Any] = field(default_factory=dict)
    words_hist: dict[str, list[int]] = field(default_factory=dict)


class _Columns:
    """Column access on a memory-mapped Arrow table."""

    def __init__(self, table: pa.Table, paths: list[str]) -> None:
        self.table = table
        self.paths = paths
        self._file = table.column("_file").to_numpy()
        self._row = table.column("_row").to_numpy()

    def numpy(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    def texts(self, idx: np.ndarray) -> list[str]:
        """The texts of rows ``idx``, in that order, read chunk by chunk: ``take`` on the whole
        chunked column would first concatenate it, copying the corpus into memory."""
        column = self.table.column("text")
        idx = np.asarray(idx, dtype=np.int64)
        starts = np.cumsum([0] + [len(c) for c in column.chunks])
        chunk_of = np.searchsorted(starts, idx, side="right") - 1
        out: list[str] = [""] * len(idx)
        for c in np.unique(chunk_of):
            where = np.flatnonzero(chunk_of == c)
            rows = pa.array(idx[where] - starts[c], type=pa.int64())
            for j, text in zip(where, column.chunk(int(c)).take(rows).to_pylist()):
                out[j] = text
        return out

    def loc(self, i: int) -> str:
        return f"{self.paths[self._file[i]]}:{self._row[i]}"


def _label_codes(table: pa.Table) -> tuple[np.ndarray, list[str]] | None:
    column = table.column("label")
    if column.null_count == len(column):
        return None
    encoded = pc.dictionary_encode(column).combine_chunks()
    names = encoded.dictionary.to_pylist()
    order = sorted(range(len(names)), key=lambda i: names[i])
    remap = np.empty(len(names), dtype=np.int32)
    remap[order] = np.arange(len(names), dtype=np.int32)
    return remap[encoded.indices.to_numpy(zero_copy_only=False)], [names[i] for i in order]


def _cluster_report(
    cols: _Columns, kept: np.ndarray, removed: np.ndarray, kind: str, path: Path
) -> dict[str, Any]:
    """Write every cluster (kept record, removed records) to ``path``; summarise the largest."""
    if len(removed) == 0:
        return {"clusters": 0, "removed": 0, "largest": []}
    order = np.lexsort((removed, kept))
    kept, removed = kept[order], removed[order]
    starts = np.flatnonzero(np.r_[True, kept[1:] != kept[:-1]])
    bounds = list(zip(starts, [*starts[1:], len(kept)]))
    with path.open("a", encoding="utf-8") as f:
        for a, b in bounds:
            entry = {
                "kind": kind,
                "kept": cols.loc(int(kept[a])),
                "removed": [cols.loc(int(r)) for r in removed[a:b]],
            }
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    largest = sorted(bounds, key=lambda ab: (-(ab[1] - ab[0]), ab[0]))[:_CLUSTERS_SHOWN]
    shown = []
    for a, b in largest:
        ids = np.array([kept[a], *removed[a : min(b, a + 3)]])
        texts = cols.texts(ids)
        shown.append(
            {
                "size": int(b - a + 1),
                "kept": {"location": cols.loc(int(ids[0])), "text": texts[0]},
                "removed": [
                    {"location": cols.loc(int(i)), "text": t} for i, t in zip(ids[1:], texts[1:])
                ],
            }
        )
    return {"clusters": len(bounds), "removed": len(removed), "largest": shown}


def decide(
    table: pa.Table,
    paths: list[str],
    cfg: PrepareConfig,
    workdir: Path,
    finder: DuplicateFinder | None = None,
) -> tuple[np.ndarray, np.ndarray, Outcome]:
    """Run the global stages over the concatenated survivors of all shards.

    Args:
        finder: where the exact and near duplicate searches run (default: this process).

    Returns:
        (status per record (0 = kept), split id per record, what happened).
    """
    cols = _Columns(table, paths)
    if finder is None:
        finder = LocalFinder(lambda j: cols.numpy(f"_b{j}"), cols.texts)
    n = table.num_rows
    out = Outcome()
    status = np.zeros(n, dtype=np.int8)
    h1, h2 = cols.numpy("_h1"), cols.numpy("_h2")
    coded = _label_codes(table) if cfg.label_column else None
    labels, names = coded if coded is not None else (None, [])
    dup_file = workdir / "duplicates.jsonl"
    dup_file.write_text("", encoding="utf-8")

    def remove(mask: np.ndarray, stage: str) -> None:
        mask = mask & (status == 0)
        status[mask] = _CODE[stage]
        out.counts[stage] = int(mask.sum())
        out.examples[stage] = [
            {"location": cols.loc(int(i)), "text": t}
            for i, t in zip(*_some(cols, mask, cfg.examples_per_stage))
        ]

    groups = finder.exact(h1, h2, status == 0, labels)
    if labels is not None:
        conflict = groups.conflict.copy()
        if cfg.labels.conflicts == "keep_first":
            conflict &= groups.duplicates()
        out.labels["conflict_groups"] = len(np.unique(groups.first[groups.conflict]))
        remove(conflict, "label_conflict")
    if cfg.dedup.mode != "none":
        dup = groups.duplicates() & (status == 0)
        out.clusters["exact"] = _cluster_report(
            cols, groups.first[dup], np.flatnonzero(dup), "exact", dup_file
        )
        remove(dup, "exact_duplicate")

    pairs = np.zeros((0, 2), dtype=np.int64)
    if cfg.dedup.mode == "near" or (
        cfg.split.leakage_check == "near" and len(cfg.split.fractions) > 1
    ):
        found, n_candidates = [], 0
        for shingling in build_representations(cfg.dedup):
            n_found, verified = finder.near(shingling, status == 0)
            n_candidates += n_found
            found.append(verified)
            log.info(
                "near-duplicates (%s texts): %d candidate pairs, %d verified",
                shingling.name,
                n_found,
                len(verified),
            )
        pairs = np.unique(np.concatenate(found), axis=0)  # a pair both representations found
        out.counts["near_candidate_pairs"] = n_candidates
        out.counts["near_verified_pairs"] = len(pairs)
    if cfg.dedup.mode == "near":
        members, rep = clusters(pairs)
        near = np.zeros(n, dtype=bool)
        near[members[rep != members]] = True
        out.clusters["near"] = _cluster_report(
            cols, rep[rep != members], members[rep != members], "near", dup_file
        )
        remove(near, "near_duplicate")

    split = assign_splits(h1, cfg.split.fractions, cfg.split.salt)
    if labels is not None:
        rare = (
            rare_classes(labels, status == 0, names, cfg.labels.min_per_class)
            if len(cfg.split.fractions) > 1
            else []
        )
        out.labels["rare_classes"] = rare
        rare_mask = np.isin(labels, [names.index(r) for r in rare])
        if cfg.labels.rare_classes == "drop":
            remove(rare_mask, "rare_class")
        else:
            split[rare_mask] = 0
            out.counts["rare_class"] = 0
            out.examples["rare_class"] = []
    if cfg.split.leakage_check != "off" and len(cfg.split.fractions) > 1:
        alive = status == 0
        exact_pairs = np.stack([groups.first, np.arange(n)], axis=1)[
            (groups.first >= 0) & (groups.first != np.arange(n))
        ]
        both = (
            np.concatenate([exact_pairs, pairs])
            if cfg.split.leakage_check == "near"
            else exact_pairs
        )
        both = both[alive[both[:, 0]] & alive[both[:, 1]]]
        leak = np.zeros(n, dtype=bool)
        leak[cross_split_pairs(both, split)] = True
        remove(leak, "leakage")
        out.counts["leakage_by_split"] = {
            SPLIT_NAMES[s]: int((leak & (split == s)).sum())
            for s in range(len(cfg.split.fractions))
        }  # type: ignore[assignment]

    words = cols.numpy("_words")
    for s, name in enumerate(SPLIT_NAMES[: len(cfg.split.fractions)]):
        mask = (status == 0) & (split == s)
        entry: dict[str, Any] = {"records": int(mask.sum())}
        if labels is not None:
            counts = np.bincount(labels[mask], minlength=len(names))
            entry["labels"] = {names[i]: int(c) for i, c in enumerate(counts) if c}
        out.splits[name] = entry
        out.words_hist[name] = np.histogram(words[mask], bins=LENGTH_BINS)[0].tolist()
    if labels is not None:
        before = np.bincount(labels, minlength=len(names))
        out.labels["before"] = {names[i]: int(c) for i, c in enumerate(before)}
        out.labels["names"] = names
    return status, split, out


def _some(cols: _Columns, mask: np.ndarray, k: int) -> tuple[list[int], list[str]]:
    idx = np.flatnonzero(mask)[:k]
    return [int(i) for i in idx], cols.texts(idx) if len(idx) else []


# textloop's own output columns, prefixed so that they never take a user column's name
ID_COLUMN, SOURCE_COLUMN = "_tl_id", "_tl_source"
OWN_COLUMNS = (ID_COLUMN, SOURCE_COLUMN)


@dataclass(frozen=True)
class ShardSpec:
    """What writing any output shard needs besides its rows: the schema and how to fill it."""

    schema: pa.Schema
    paths: list[str]  # input files, by the records' ``_file`` number
    label_column: str | None
    extras: Extras


# ``(relative path, global row numbers in order)`` of every shard -> each written under ``out``
ShardWriter = Callable[[list[tuple[str, np.ndarray]], ShardSpec, Path], None]
EXTRA_CHUNK = 10_000  # rows taken, converted and written at a time (bounds a writer's memory)


def shard_plan(
    status: np.ndarray, split: np.ndarray, n_splits: int, shard_rows: int
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each split's shards: its kept records in input order, ``shard_rows`` to a file."""
    plan: dict[str, list[tuple[str, np.ndarray]]] = {}
    for s, name in enumerate(SPLIT_NAMES[:n_splits]):
        rows = np.flatnonzero((status == 0) & (split == s))
        plan[name] = [
            (f"{name}/part-{k:05d}.parquet", rows[lo : lo + shard_rows])
            for k, lo in enumerate(range(0, len(rows), shard_rows))
        ]
    return plan


def write_shard(
    rows: Callable[[np.ndarray], pa.Table], idx: np.ndarray, spec: ShardSpec, path: Path
) -> None:
    """One Parquet shard of the records ``idx``, read ``EXTRA_CHUNK`` at a time by ``rows``;
    written under a temp name and renamed, so a retried writer never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, spec.schema, compression="zstd") as w:
        for lo in range(0, len(idx), EXTRA_CHUNK):
            taken = rows(idx[lo : lo + EXTRA_CHUNK]).combine_chunks()
            for batch in taken.to_batches():
                w.write_table(
                    _output_rows(batch, spec.paths, spec.schema, spec.label_column, spec.extras)
                )
    os.replace(tmp, path)


def write_splits(
    table: pa.Table,
    paths: list[str],
    status: np.ndarray,
    split: np.ndarray,
    n_splits: int,
    out_dir: Path,
    shard_rows: int,
    columns: tuple[str, str | None],
    writer: ShardWriter | None = None,
    extras: Extras | None = None,
) -> tuple[dict[str, list[str]], Extras]:
    """Write the kept records of each split as Parquet shards ``<split>/part-NNNNN.parquet``.

    Columns: the text and label (labelled corpora) under the input's column names (``columns``),
    every other input column with its name and type, then ``_tl_id`` (the 128-bit content
    digest, hex) and ``_tl_source`` (file:line). A shard holds the next ``shard_rows`` kept
    records of its split in input order, so any ``writer`` (the Ray engine writes shards from
    its workers) gives the same files as this process does.

    Raises:
        DataError: an input column is named like one of textloop's own columns.
    """
    text_column, label_column = columns
    if extras is None:
        extras = extra_columns(table, status, OWN_COLUMNS)
    fields = [pa.field(text_column, pa.string())]
    if label_column:
        fields.append(pa.field(label_column, pa.string()))
    fields += list(extras.schema)
    fields += [pa.field(ID_COLUMN, pa.string()), pa.field(SOURCE_COLUMN, pa.string())]
    spec = ShardSpec(pa.schema(fields), paths, label_column, extras)
    plan = shard_plan(status, split, n_splits, shard_rows)
    for name in plan:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    jobs = [job for shards in plan.values() for job in shards]
    if writer is not None:
        writer(jobs, spec, out_dir)
    else:
        for rel, idx in jobs:
            write_shard(lambda i: table.take(pa.array(i)), idx, spec, out_dir / rel)
    written = {name: [rel for rel, _ in shards] for name, shards in plan.items()}
    for name, files in written.items():
        if not files:  # an empty split still gets one (empty) file, so readers find it
            rel = f"{name}/part-00000.parquet"
            pq.write_table(spec.schema.empty_table(), out_dir / rel)
            files.append(rel)
    return written, extras


def _as_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _output_rows(
    batch: pa.RecordBatch,
    paths: list[str],
    schema: pa.Schema,
    label_column: str | None,
    extras: Extras,
) -> pa.Table:
    h1 = batch.column("_h1").to_numpy()
    h2 = batch.column("_h2").to_numpy()
    files = batch.column("_file").to_numpy()
    rows = batch.column("_row").to_numpy()
    ids = [f"{a:016x}{b:016x}" for a, b in zip(h1.tolist(), h2.tolist())]
    source = [f"{paths[f]}:{r}" for f, r in zip(files.tolist(), rows.tolist())]
    arrays = [batch.column("text")]
    if label_column:
        arrays.append(batch.column("label"))
    other = extra_rows(batch.column("_extra"))
    for f in extras.schema:
        values = [r.get(f.name) for r in other]
        if f.name in extras.as_text:
            values = [_as_text(v) for v in values]
        arrays.append(pa.array(values, type=f.type))
    arrays += [pa.array(ids), pa.array(source)]
    return pa.Table.from_arrays(arrays, schema=schema)
