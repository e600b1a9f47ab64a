"""Deterministic, stratified splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence


def stratified_split(
    strata: Sequence[Hashable], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into (keep, held_out) with ``fraction`` of each stratum held out.

    Each stratum with at least two members gives at least one example to each side, so
    every class seen in training is also validated. The same inputs and seed always give the
    same split.
    """
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    held: list[int] = []
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        n_held = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return sorted(keep), sorted(held)
