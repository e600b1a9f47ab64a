"""Split assignment by content hash, rare classes, and the leakage check between splits.

A record's split depends only on its normalised text (and the salt): a uniform number is drawn
from the digest and compared with the cumulative fractions. Re-running on a grown corpus therefore
never moves an old record, and exact copies always land together. Within each label the shares
follow the fractions in expectation (each record is an independent draw); an exact per-label
quota would have to move old records when new ones arrive, so stability wins.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: every output bit depends on every input bit
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def assign_splits(h1: np.ndarray, fractions: list[float], salt: str = "") -> np.ndarray:
    """Split ids (0 train, 1 validation, 2 test) of records with digest half ``h1``.

    Args:
        h1: (N,) uint64 content digests.
        fractions: shares per split, summing to 1.
        salt: any string; another salt draws an independent split.
    """
    salt64 = np.uint64(
        int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little")
    )
    u = (_mix64(h1 ^ salt64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # [0, 1)
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def rare_classes(
    labels: np.ndarray, alive: np.ndarray, names: list[str], minimum: int
) -> list[str]:
    """Labels with fewer than ``minimum`` alive records (too rare to split)."""
    counts = np.bincount(labels[alive], minlength=len(names))
    return [names[i] for i in np.flatnonzero((counts > 0) & (counts < minimum))]


def cross_split_pairs(pairs: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Of duplicate pairs, the records to remove so no evaluation split repeats another split.

    The member in the later split (test after validation after train) goes.
    """
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    differ = split[a] != split[b]
    later = np.where(split[a] > split[b], a, b)
    return np.unique(later[differ])
