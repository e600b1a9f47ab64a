"""Global deduplication over fingerprint columns, by sorting: no per-document Python objects.

Exact duplicates share the 128-bit digest of the normalised text. Near-duplicates are found with
MinHash LSH, per representation (``fingerprint.Representation``: short texts by words and word
pairs, long ones by 5-word shingles): documents sharing any of its band keys are candidate
pairs, every candidate pair's shingle overlap is computed exactly and judged by the
representation's rule, and the verified pairs of both are grouped by ``clusters``: in input
order, a record is removed when it is near an earlier record that is kept (so every removed
record is near the one kept in its stead; no chaining through removed records).

Memory is a few arrays of 8 bytes per record (digests, one band column at a time, the sort order)
plus the candidate pairs, never the texts: 1 million documents take about 50 MB.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from textloop.data.prepare.clean import edit_units
from textloop.data.prepare.fingerprint import (
    Representation,
    dedup_tokens,
    edits_within,
    shingle_hash_sets,
)

_VERIFY_CHUNK = 20_000
_OVERLAP_ELEMENTS = 1_000_000  # shingles per overlap sort: 8 MB per array
_SHINGLE_WORDS = 200_000  # words shingled at once when verifying
_EDIT_COLUMNS = 160  # edit units per text held in arrays by _within_edit_budget


@dataclass
class ExactGroups:
    """Records with the same digest: ``first[i]`` is the first record of i's group (-1 if absent)."""

    first: np.ndarray  # (N,) int64
    conflict: np.ndarray  # (N,) bool: the group holds more than one label

    def duplicates(self) -> np.ndarray:
        """Records that are not the first of their group."""
        return (self.first >= 0) & (self.first != np.arange(len(self.first)))


def exact_groups(
    h1: np.ndarray, h2: np.ndarray, alive: np.ndarray, labels: np.ndarray | None = None
) -> ExactGroups:
    """Group the alive records by digest (h1, h2); flag groups whose labels differ.

    Args:
        h1: (N,) uint64 first digest half.  h2: (N,) uint64 second half.
        alive: (N,) bool, records still in the corpus.
        labels: (N,) int label codes, or None for unlabelled data.
    """
    n = len(h1)
    idx = np.flatnonzero(alive)
    order = np.lexsort((idx, h2[idx], h1[idx]))  # by digest, then input order
    s = idx[order]
    new = np.ones(len(s), dtype=bool)
    if len(s) > 1:
        new[1:] = (h1[s[1:]] != h1[s[:-1]]) | (h2[s[1:]] != h2[s[:-1]])
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    first = np.full(n, -1, dtype=np.int64)
    first[s] = s[starts][group]
    conflict = np.zeros(n, dtype=bool)
    if labels is not None and len(s):
        lab = labels[s]
        differs = np.minimum.reduceat(lab, starts) != np.maximum.reduceat(lab, starts)
        conflict[s] = differs[group]
    return ExactGroups(first=first, conflict=conflict)


def candidate_pairs(band_columns: Iterable[np.ndarray], alive: np.ndarray) -> np.ndarray:
    """(E, 2) int64 pairs (first, other), first < other, of alive records sharing a band key.

    Each band group links its members to its first record (a star, not all pairs), which keeps
    the number of pairs linear in the number of duplicates. The key 0 (a record the band's
    representation does not cover) never makes a pair.
    """
    found: list[np.ndarray] = []
    for keys in band_columns:
        idx = np.flatnonzero(alive & (keys != 0))
        k = keys[idx]
        order = np.argsort(k, kind="stable")  # stable: input order inside a key
        sk, si = k[order], idx[order]
        new = np.ones(len(sk), dtype=bool)
        new[1:] = sk[1:] != sk[:-1]
        group = np.cumsum(new) - 1
        head = si[np.flatnonzero(new)][group]
        linked = head != si
        if linked.any():
            found.append(np.stack([head[linked], si[linked]], axis=1))
        if len(found) > 8:
            found = [np.unique(np.concatenate(found), axis=0)]
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)


def shared_shingles(
    pairs: np.ndarray, shingles: list[np.ndarray], local: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (intersection, union, smaller set) sizes of the shingle sets of pairs, a few
    thousand pairs per sort (at most ``_OVERLAP_ELEMENTS`` shingles: memory stays bounded
    however long the documents).

    Args:
        pairs: (E, 2) record indices.
        shingles: sorted, unique 32-bit hashes per record of ``local``'s index space.
        local: (E, 2) positions of each pair's records in ``shingles``.
    """
    sizes = np.array([len(x) for x in shingles], dtype=np.int64)
    flat = np.concatenate(shingles) if shingles else np.zeros(0, dtype=np.uint64)
    starts = np.cumsum(sizes) - sizes
    a, b = sizes[local[:, 0]], sizes[local[:, 1]]
    inter = np.zeros(len(pairs), dtype=np.int64)
    cost = np.cumsum(a + b)
    total = int(cost[-1]) if len(cost) else 0
    cuts = np.searchsorted(cost, np.arange(_OVERLAP_ELEMENTS, total, _OVERLAP_ELEMENTS), "right")
    for lo, hi in itertools.pairwise([0, *cuts.tolist(), len(pairs)]):
        if hi > lo:
            inter[lo:hi] = _overlaps(local[lo:hi], sizes, starts, flat)
    return inter, a + b - inter, np.minimum(a, b)


def _overlaps(
    local: np.ndarray, sizes: np.ndarray, starts: np.ndarray, flat: np.ndarray
) -> np.ndarray:
    """Intersection sizes of the pairs ``local``: every element of every pair's two sets,
    tagged with the pair's number, sorted once; a repeated tag+element is in both sets."""
    tagged = []
    for side in (0, 1):
        lens = sizes[local[:, side]]
        at = np.repeat(starts[local[:, side]] - (np.cumsum(lens) - lens), lens)
        at += np.arange(lens.sum())
        pair = np.repeat(np.arange(len(local), dtype=np.uint64), lens)
        tagged.append((pair << np.uint64(32)) | flat[at])
    keys = np.concatenate(tagged)
    keys.sort()
    both = keys[1:][keys[1:] == keys[:-1]]  # sets are unique: a repeat is in both
    return np.bincount((both >> np.uint64(32)).astype(np.int64), minlength=len(local))


def _shingles_of(texts: list[str], sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Shingle sets of ``texts``, hashed ``_SHINGLE_WORDS`` words at a time (the batched fold
    holds a few 8-byte arrays per word, so a batch of long texts would be big)."""
    out: list[np.ndarray] = []
    batch: list[list[str]] = []
    words = 0
    for text in texts:
        batch.append(dedup_tokens(text))
        words += len(batch[-1])
        if words >= _SHINGLE_WORDS:
            out += shingle_hash_sets(batch, sizes)
            batch, words = [], 0
    return out + shingle_hash_sets(batch, sizes)


def verify_pairs(
    pairs: np.ndarray, texts_of: Callable[[np.ndarray], list[str]], rep: Representation
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the candidate pairs that are near-duplicates by ``rep``'s rule on exact shingle sets.

    Args:
        pairs: (E, 2) record indices.
        texts_of: fetches the cleaned texts of sorted record indices.
        rep: the representation whose band keys made the pairs.

    Returns:
        (verified pairs (V, 2), their Jaccard similarities (V,)).
    """
    keep: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    for start in range(0, len(pairs), _VERIFY_CHUNK):
        chunk = pairs[start : start + _VERIFY_CHUNK]
        ids, local = np.unique(chunk, return_inverse=True)
        texts = texts_of(ids)
        shingles = _shingles_of(texts, rep.sizes)
        local = local.reshape(chunk.shape)
        inter, union, smaller = shared_shingles(chunk, shingles, local)
        ok = rep.is_near(inter, union, smaller)
        if rep.max_edits >= 0:
            ok &= _within_edit_budget(local, ok, texts, rep)
        keep.append(chunk[ok])
        sims.append(inter[ok] / union[ok])
    if not keep:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    return np.concatenate(keep), np.concatenate(sims)


def _within_edit_budget(
    local: np.ndarray, ok: np.ndarray, texts: list[str], rep: Representation
) -> np.ndarray:
    """For the pairs ``ok`` marks, whether their word edit distance is within ``rep``'s budget
    (the others are left False: they are out already).

    Most pairs are decided in bulk: with the common head and tail of two unit sequences cut,
    middles of m and n units are at most max(m, n) edits apart and at least |m - n|. Only a pair
    between those bounds (or past ``_EDIT_COLUMNS`` units) runs the dynamic programme.
    """
    idx = np.flatnonzero(ok)
    needed, at = np.unique(local[idx], return_inverse=True)  # only texts of pairs still in
    i, j = at.reshape(-1, 2)[:, 0], at.reshape(-1, 2)[:, 1]
    units = [edit_units(texts[k]) for k in needed.tolist()]
    lengths = np.array([len(u) for u in units], dtype=np.int64)
    width = min(int(lengths.max(initial=0)), _EDIT_COLUMNS)
    # unit hashes, left- and right-aligned, padded with -1 (never a str hash in CPython); the
    # head and tail are clipped to the shorter text, so pad matching pad counts for nothing
    left = np.full((len(units), width), -1, dtype=np.int64)
    right = np.full((len(units), width), -1, dtype=np.int64)
    hashed = np.fromiter(map(hash, itertools.chain.from_iterable(units)), np.int64, lengths.sum())
    row = np.repeat(np.arange(len(units)), lengths)
    column = np.arange(len(hashed)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    fits = lengths[row] <= width
    left[row[fits], column[fits]] = hashed[fits]
    right[row[fits], (column + width - lengths[row])[fits]] = hashed[fits]
    la, lb = lengths[i], lengths[j]
    head = np.cumprod(left[i] == left[j], axis=1).sum(axis=1)
    tail = np.cumprod((right[i] == right[j])[:, ::-1], axis=1).sum(axis=1)
    shorter = np.minimum(la, lb)
    tail = np.minimum(tail, shorter - np.minimum(head, shorter))
    head = np.minimum(head, shorter)
    ma, mb = la - head - tail, lb - head - tail
    budget = rep.edit_budget(np.maximum(la, lb))
    within = np.zeros(len(local), dtype=bool)
    sure = np.maximum(ma, mb) <= budget
    # texts of one length are at most their Hamming distance apart (replacements only)
    same = ~sure & (la == lb)
    sure[same] = (left[i[same]] != left[j[same]]).sum(axis=1) <= budget[same]
    open_ = ~sure & (np.abs(ma - mb) <= budget)
    open_ |= np.maximum(la, lb) > width  # not in the arrays: the programme decides
    within[idx[sure & (np.maximum(la, lb) <= width)]] = True
    for n in np.flatnonzero(open_):
        a, b = units[int(i[n])], units[int(j[n])]
        within[idx[n]] = edits_within(a, b, int(budget[n]))
    return within


def clusters(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate groups of verified pairs, led by kept records (no chaining).

    Records are visited in input order; a record is removed when it is near an earlier record
    that is kept, and its representative is the first such record; otherwise it is kept. So
    every removed record is itself near the record that stands for it. Connected components
    would chain: in a cluster A~B, B~C, C is removed for A though C and A may differ in many
    words (short queries of one template: "weather in paris" ~ "weather in rome" ~ "rain in
    rome"); here C is kept when B is removed.

    Returns:
        (members, representative): every record in some pair and the kept record standing for
        it; a record is a near-duplicate when it is not its own representative.
    """
    if len(pairs) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    keep = lo != hi
    lo, hi = lo[keep], hi[keep]
    nodes = np.unique(np.concatenate([lo, hi]))
    order = np.lexsort((lo, hi))  # by the later record, then its earlier neighbours ascending
    lo, hi = lo[order], hi[order]
    local_lo = np.searchsorted(nodes, lo)
    starts = np.searchsorted(hi, nodes, side="left")
    ends = np.searchsorted(hi, nodes, side="right")
    rep = np.arange(len(nodes), dtype=np.int64)
    for v in range(len(nodes)):  # nodes in input order; earlier ones are decided
        for u in local_lo[starts[v] : ends[v]]:
            if rep[u] == u:  # the first kept earlier neighbour
                rep[v] = u
                break
    return nodes, nodes[rep]


class DuplicateFinder(Protocol):
    """Where the two dedup searches run: in this process (``LocalFinder``) or on a cluster
    (``ray_dedup.RayFinder``). Both return the same groups and pairs; everything the global
    stages decide from them is shared."""

    def exact(
        self, h1: np.ndarray, h2: np.ndarray, alive: np.ndarray, labels: np.ndarray | None
    ) -> ExactGroups:
        """Groups of alive records by digest (``exact_groups``)."""
        ...

    def near(self, rep: Representation, alive: np.ndarray) -> tuple[int, np.ndarray]:
        """(number of candidate pairs, verified pairs (V, 2)) of alive records by ``rep``."""
        ...


class LocalFinder:
    """Both searches over whole columns in this process."""

    def __init__(
        self, band_column: Callable[[int], np.ndarray], texts_of: Callable[[np.ndarray], list[str]]
    ) -> None:
        self.band_column = band_column
        self.texts_of = texts_of

    def exact(
        self, h1: np.ndarray, h2: np.ndarray, alive: np.ndarray, labels: np.ndarray | None
    ) -> ExactGroups:
        return exact_groups(h1, h2, alive, labels)

    def near(self, rep: Representation, alive: np.ndarray) -> tuple[int, np.ndarray]:
        first = rep.first_band
        columns = (self.band_column(j) for j in range(first, first + rep.bands))
        candidates = candidate_pairs(columns, alive)
        verified, _sims = verify_pairs(candidates, self.texts_of, rep)
        return len(candidates), verified
