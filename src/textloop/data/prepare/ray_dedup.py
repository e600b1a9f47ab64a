"""The exact and near duplicate searches as shuffles on Ray (``engine: ray``).

Each shuffle is the classic two-stage Ray one: a map task per written piece reads the columns it
needs and returns ``P`` partitions (``num_returns=P``), and reduce task ``j`` receives partition
``j`` of every map task. Ray stores the partitions in its object store and retries a task whose
worker died, recomputing lost partitions from lineage; every task is a pure function of its
inputs, so a retried job gives the same answer. (Ray Data's own group-by starts a hash-shuffle
actor pool per call, which costs more than the searches at the sizes one machine can test.)

Records are addressed by their global row number in input order (``_idx``): a piece's rows are
numbered from its offset, so every answer maps back to the driver's table without a lookup.

- Exact: records are hash-partitioned on their digest (a group-by on ``h1 mod P``), and each
  partition groups its records with ``dedup.exact_groups`` itself, ordered by ``_idx`` so that
  the first of a group is the first in input order, as on one machine. Only duplicates come
  back to the driver.
- Near, per representation: every alive record emits one row per band it is covered by,
  partitioned on the band key; each partition links the records sharing a key with
  ``dedup.candidate_pairs`` (the same star, headed by the first in input order). The candidate
  pairs (few: a linear number of duplicates) are made unique on the driver, cut into chunks, and
  the texts of each chunk's records are shuffled to the chunk's partition, which verifies it
  with ``dedup.verify_pairs``. The verified pairs are grouped on the driver
  (``dedup.clusters``, called by the shared global stages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from textloop.data.prepare.dedup import ExactGroups, candidate_pairs, exact_groups, verify_pairs
from textloop.data.prepare.fingerprint import Representation

log = logging.getLogger(__name__)

_VERIFY_CHUNK = 20_000  # the local engine's verification chunk: the most pairs one task checks


@dataclass
class Pieces:
    """The survivors as written by the workers: Arrow stream files in input order."""

    paths: list[str]
    offsets: list[int]  # global row number of each file's first row
    rows: int


def _read(path: str, offset: int, columns: list[str]) -> pa.Table:
    """The ``columns`` of a written piece, with the records' global row numbers."""
    with pa.memory_map(path) as source:
        table = pa.ipc.open_stream(source).read_all().select(columns)
    idx = np.arange(offset, offset + table.num_rows, dtype=np.int64)
    return table.append_column("_idx", pa.array(idx))


def _map_piece(
    path: str, offset: int, columns: list[str], fn: Callable[..., dict[str, np.ndarray]],
    parts: int, kwargs: dict[str, Any],
) -> tuple[dict[str, np.ndarray], ...]:  # fmt: skip
    """Map task: ``fn`` over one piece, its rows cut by their ``_part`` column."""
    rows = fn(_read(path, offset, columns), **kwargs)
    order = np.argsort(rows["_part"], kind="stable")
    bounds = np.searchsorted(rows["_part"][order], np.arange(parts + 1))
    out = tuple(
        {k: v[order[bounds[j] : bounds[j + 1]]] for k, v in rows.items()} for j in range(parts)
    )
    return out if parts > 1 else out[0]  # type: ignore[return-value]  # one return: no tuple


def _nbytes(column: np.ndarray) -> int:
    if column.dtype == object:  # texts: their UTF-8 size, not the pointers'
        return sum(len(t.encode()) for t in column.tolist())
    return int(column.nbytes)


def _reduce_part(
    fn: Callable[..., dict[str, np.ndarray]], kwargs: dict[str, Any], *pieces: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Reduce task: one partition of every map task, joined, through ``fn``; and the bytes
    that came through the shuffle."""
    group = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    shuffled = sum(_nbytes(v) for v in group.values())
    if len(group["_part"]) == 0:
        return {}, shuffled
    return fn(group, **kwargs), shuffled


def _exact_keys(batch: pa.Table, parts: int) -> dict[str, np.ndarray]:
    """Map: records keyed by their digest's partition."""
    h1 = batch.column("_h1").to_numpy()
    return {
        "_part": (h1 % np.uint64(parts)).astype(np.int64),
        "_h1": h1,
        "_h2": batch.column("_h2").to_numpy(),
        "_idx": batch.column("_idx").to_numpy(),
    }


def _exact_partition(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Duplicates of one digest partition: (record, first record of its group)."""
    order = np.argsort(group["_idx"], kind="stable")  # local order = input order
    idx = group["_idx"][order]
    found = exact_groups(group["_h1"][order], group["_h2"][order], np.ones(len(idx), dtype=bool))
    dup = found.duplicates()
    return {"_idx": idx[dup], "_first": idx[found.first[dup]]}


def _band_rows(
    batch: pa.Table, rep: Representation, removed: np.ndarray, parts: int
) -> dict[str, np.ndarray]:
    """One row per (alive record, band it is covered by): band number, key, record."""
    idx = batch.column("_idx").to_numpy()
    alive = ~np.isin(idx, removed)
    bands, keys, ids = [], [], []
    for j in range(rep.bands):
        key = batch.column(f"_b{rep.first_band + j}").to_numpy()
        take = alive & (key != 0)  # 0: not covered by this representation, never a candidate
        bands.append(np.full(int(take.sum()), j, dtype=np.int16))
        keys.append(key[take])
        ids.append(idx[take])
    key_all = np.concatenate(keys)
    return {
        "_part": (key_all % np.uint64(parts)).astype(np.int64),
        "_band": np.concatenate(bands),
        "_key": key_all,
        "_idx": np.concatenate(ids),
    }


def _candidate_partition(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candidate pairs of one band-key partition, band by band."""
    order = np.argsort(group["_idx"], kind="stable")
    band, key, idx = group["_band"][order], group["_key"][order], group["_idx"][order]
    found = []
    for j in np.unique(band):
        at = np.flatnonzero(band == j)
        local = candidate_pairs([key[at]], np.ones(len(at), dtype=bool))
        found.append(idx[at][local])
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    return {"a": pairs[:, 0], "b": pairs[:, 1]}


def _needed_texts(
    batch: pa.Table, need_idx: np.ndarray, need_chunk: np.ndarray
) -> dict[str, np.ndarray]:
    """The texts of the records some verification chunk needs, one row per (record, chunk)."""
    idx = batch.column("_idx").to_numpy()
    lo = np.searchsorted(need_idx, idx, "left")
    hi = np.searchsorted(need_idx, idx, "right")
    rows = np.repeat(np.arange(len(idx)), hi - lo)
    at = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(rows) else rows
    texts = (
        batch.column("text").take(pa.array(rows, type=pa.int64())).to_numpy(zero_copy_only=False)
    )
    return {"_part": need_chunk[at], "_idx": idx[rows], "text": texts}


def _verify_partition(
    group: dict[str, np.ndarray], pairs: np.ndarray, chunk: int, rep: Representation
) -> dict[str, np.ndarray]:
    """Verified pairs of one chunk of candidates, from its records' texts."""
    c = int(group["_part"][0])
    mine = pairs[c * chunk : (c + 1) * chunk]
    text_of = dict(zip(group["_idx"].tolist(), group["text"].tolist()))
    verified, _sims = verify_pairs(mine, lambda ids: [text_of[int(i)] for i in ids], rep)
    return {"a": verified[:, 0], "b": verified[:, 1]}


def _pairs(parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(E, 2) int64 pairs from the reduce outputs' columns a, b."""
    found = [np.stack([p["a"], p["b"]], axis=1) for p in parts if p and len(p["a"])]
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), dtype=np.int64)


class RayFinder:
    """``dedup.DuplicateFinder`` on Ray: the searches as shuffles over the written pieces."""

    def __init__(self, pieces: Pieces, cpus: int) -> None:
        self.pieces = pieces
        self.parts = max(2, 2 * cpus)  # partitions of each shuffle: two per CPU
        # per step: wall seconds, bytes through the shuffle, tasks (for bench/prepare_engines.py)
        self.stats: dict[str, dict[str, Any]] = {}

    def _shuffle(
        self,
        name: str,
        columns: list[str],
        map_fn: Callable[..., dict[str, np.ndarray]],
        map_kwargs: dict[str, Any],
        reduce_fn: Callable[..., dict[str, np.ndarray]],
        reduce_kwargs: dict[str, Any],
        parts: int | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Map every piece, shuffle on ``_part``, reduce each partition; the reduce outputs."""
        import ray

        started = time.perf_counter()
        parts = parts or self.parts
        # large arguments go to the object store once, not once per task
        map_args, reduce_args = ray.put(map_kwargs), ray.put(reduce_kwargs)
        mapper = ray.remote(num_returns=parts, max_retries=3)(_map_piece)
        reducer = ray.remote(max_retries=3)(_reduce_part)
        mapped: list[Any] = [
            mapper.remote(path, offset, columns, map_fn, parts, map_args)
            for path, offset in zip(self.pieces.paths, self.pieces.offsets)
        ]
        mapped = [m if isinstance(m, list) else [m] for m in mapped]  # num_returns=1: one ref
        reduced = [
            reducer.remote(reduce_fn, reduce_args, *[m[j] for m in mapped]) for j in range(parts)
        ]
        results = ray.get(reduced)
        step = self.stats.setdefault(name, {"wall_s": 0.0, "shuffle_bytes": 0, "tasks": 0})
        step["wall_s"] += time.perf_counter() - started
        step["shuffle_bytes"] += sum(b for _, b in results)
        step["tasks"] += len(mapped) + len(reduced)
        return [r for r, _ in results]

    def exact(
        self, h1: np.ndarray, h2: np.ndarray, alive: np.ndarray, labels: np.ndarray | None
    ) -> ExactGroups:
        found = self._shuffle(
            "exact", ["_h1", "_h2"], _exact_keys, {"parts": self.parts}, _exact_partition, {}
        )
        n = len(h1)
        first = np.where(alive, np.arange(n), -1).astype(np.int64)
        conflict = np.zeros(n, dtype=bool)
        dups = [p for p in found if p and len(p["_idx"])]
        if dups:
            idx = np.concatenate([p["_idx"] for p in dups])
            heads = np.concatenate([p["_first"] for p in dups])
            take = alive[idx] & alive[heads]
            idx, heads = idx[take], heads[take]
            first[idx] = heads
            if labels is not None:  # a group with two labels: every member of it conflicts
                bad = np.unique(heads[labels[idx] != labels[heads]])
                conflict[bad] = True
                conflict[idx[np.isin(heads, bad)]] = True
        log.info("ray: exact duplicates: %d", int((first != np.arange(n))[alive].sum()))
        return ExactGroups(first=first, conflict=conflict)

    def near(self, rep: Representation, alive: np.ndarray) -> tuple[int, np.ndarray]:
        bands = [f"_b{rep.first_band + j}" for j in range(rep.bands)]
        removed = np.flatnonzero(~alive)
        kwargs = {"rep": rep, "removed": removed, "parts": self.parts}
        found = self._shuffle(
            "near_candidates", bands, _band_rows, kwargs, _candidate_partition, {}
        )
        candidates = _pairs(found)
        candidates = np.unique(candidates, axis=0) if len(candidates) else candidates
        log.info("ray: %s texts: %d candidate pairs", rep.name, len(candidates))
        if not len(candidates):
            return 0, candidates
        chunk = min(_VERIFY_CHUNK, max(1_000, -(-len(candidates) // self.parts)))
        owner = np.arange(len(candidates)) // chunk
        need = np.unique(
            np.concatenate(
                [
                    np.stack([candidates[:, 0], owner], axis=1),
                    np.stack([candidates[:, 1], owner], axis=1),
                ]
            ),
            axis=0,
        )  # (record, chunk) sorted by record
        verified = self._shuffle(
            "near_verify",
            ["text"],
            _needed_texts,
            {"need_idx": need[:, 0].copy(), "need_chunk": need[:, 1].copy()},
            _verify_partition,
            {"pairs": candidates, "chunk": chunk, "rep": rep},
            parts=int(owner[-1]) + 1,
        )
        return len(candidates), _pairs(verified)
